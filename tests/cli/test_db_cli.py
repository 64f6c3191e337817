"""`dse models|devices|db info|db upgrade|db merge`, and their one-line refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "db"))
from store_helpers import SHA_A, SHA_B, fill  # noqa: E402

from db import open_store  # noqa: E402
from db.session import head_revision  # noqa: E402
from dse.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path) -> str:
    path = str(tmp_path / "mess.db")
    engine = open_store(path, create=True)
    fill(engine)
    fill(engine, sha=SHA_B, device="jetson", seed=1)
    engine.dispose()
    return path


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _refused(code: int, err: str, pattern: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert pattern in lines[0], lines[0]
    assert "Traceback" not in err


def test_models_and_devices(store: str, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich tables shorten cells on narrow terminals
    code, out, _ = _run(capsys, "models", "--db", store, "--json")
    rows = _json_lines(out)
    assert code == 0 and [r["weights_sha256"] for r in rows] == [SHA_A, SHA_B]
    assert rows[0]["exits"] == 2 and rows[0]["complete_profiles"] == 1
    code, out, _ = _run(capsys, "models", "bbbbbbbb", "--db", store, "--json")
    assert [r["weights_sha256"] for r in _json_lines(out)] == [SHA_B]
    code, out, _ = _run(capsys, "models", "--db", store)
    assert code == 0 and "tiny-aaaa" in out and "tiny-bbbb" in out
    code, out, _ = _run(capsys, "devices", "--db", store, "--json")
    assert [r["name"] for r in _json_lines(out)] == ["cpu-box", "jetson"]
    assert _json_lines(out)[0]["fingerprint"] == {"cpu": "test", "threads": 1}
    code, out, _ = _run(capsys, "devices", "jetson", "--db", f"sqlite:///{store}")
    assert code == 0 and "jetson" in out and "cpu-box" not in out


def test_db_env_variable_is_honoured(store: str, capsys, monkeypatch) -> None:
    monkeypatch.setenv("DSE_DB", store)
    code, out, _ = _run(capsys, "devices", "--json")
    assert code == 0 and len(_json_lines(out)) == 2


def test_db_info(store: str, capsys) -> None:
    code, out, _ = _run(capsys, "db", "info", "--db", store, "--json")
    (info,) = _json_lines(out)
    assert code == 0 and info["revision"] == info["head_revision"]
    assert info["rows"]["dse_model"] == 2 and info["rows"]["dse_latency"] == 6
    assert info["models"] == ["1:tiny-aaaa", "2:tiny-bbbb"] and info["devices"] == ["1:cpu-box", "2:jetson"]
    code, out, _ = _run(capsys, "db", "info", "--db", store)
    assert code == 0 and "dse_accuracy_chunk" in out


def test_db_info_shows_the_stored_closed_loop_checks(store: str, capsys) -> None:
    from db import repository as repo
    from db import session_scope

    code, out, _ = _run(capsys, "db", "info", "--db", store, "--json")
    assert code == 0 and _json_lines(out)[0]["closed_loop"] == []
    engine = open_store(store)
    with session_scope(engine) as s:
        repo.upsert_latency(s, model_id=1, device_id=1, kind="path", name="final",
                            input_shape=(1, 3, 32, 32), batch=1, dtype="float32",
                            samples_ms=[2.0, 2.0], gflops=0.1, params=1, predicted_ms=1.5)
    engine.dispose()
    code, out, _ = _run(capsys, "db", "info", "--db", store, "--json")
    (check,) = _json_lines(out)[0]["closed_loop"]
    assert code == 0 and check["path"] == "final" and check["input_shape"] == "1x3x32x32"
    assert check["measured_ms"] == 2.0 and check["predicted_ms"] == 1.5
    assert check["deviation"] == 0.25
    code, out, _ = _run(capsys, "db", "info", "--db", store)
    assert code == 0 and "closed loop" in out and "+25.0%" in out


def test_db_upgrade_creates_then_reports_current(tmp_path, capsys) -> None:
    path = str(tmp_path / "new.db")
    code, out, _ = _run(capsys, "db", "upgrade", "--db", path)
    assert code == 0 and f"empty -> {head_revision()}" in out
    code, out, _ = _run(capsys, "db", "upgrade", "--db", path)
    assert code == 0 and f"already at schema {head_revision()}" in out


def test_db_merge(store: str, tmp_path, capsys) -> None:
    target = str(tmp_path / "target.db")
    engine = open_store(target, create=True)
    fill(engine)
    engine.dispose()
    code, out, _ = _run(capsys, "db", "merge", store, "--db", target, "--json")
    summary = _json_lines(out)[0]
    assert code == 0 and summary["copied"]["dse_model"] == 1 and summary["conflicts"] == {}
    code, out, _ = _run(capsys, "db", "merge", store, "--db", target)
    assert code == 0 and "merged 0 rows" in out
    code, _, err = _run(capsys, "db", "merge", store, "--db", store)
    _refused(code, err, "into itself")


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["models", "--db", "{missing}"], "no store at"),
        (["devices", "--db", "{text}"], "not a mess-dse store"),
        (["db", "info", "--db", "postgresql://u@h:port/x"], "malformed store URL"),
        (["models", "--db", "nosuchdb://x/y"], "unsupported database"),
        (["models", "nope", "--db", "{store}"], "unknown model 'nope'"),
        (["devices", "jetsom", "--db", "{store}"], "unknown device 'jetsom' (close: jetson)"),
        (["db", "merge", "{missing}", "--db", "{store}"], "merge source: no store at"),
    ],
)
def test_bad_input_is_one_line_and_leaves_the_store_alone(
    store: str, tmp_path, capsys, args: list[str], pattern: str
) -> None:
    missing, text = tmp_path / "missing.db", tmp_path / "notes.db"
    text.write_text("not a database")
    before = Path(store).read_bytes()
    filled = [a.format(missing=missing, text=text, store=store) for a in args]
    code, _, err = _run(capsys, *filled)
    _refused(code, err, pattern)
    assert not missing.exists()
    assert text.read_text() == "not a database"
    assert Path(store).read_bytes() == before


def test_console_script_prints_no_traceback(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dse", "models", "--db", str(tmp_path / "missing.db")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: no store at") and "Traceback" not in proc.stderr


def test_help_lists_store_commands(capsys) -> None:
    code, out, _ = _run(capsys, "--help")
    assert code == 0
    for name in ("models", "devices", "db"):
        assert name in out
    code, out, _ = _run(capsys, "db", "--help")
    for name in ("info", "upgrade", "merge"):
        assert name in out
