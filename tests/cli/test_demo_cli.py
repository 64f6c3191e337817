"""`dse demo`: the whole pipeline on a tiny plan, its reuse of the store, and its refusals."""

import sqlite3
from pathlib import Path

import pytest
import torch

from dse.cli._app import main
from dse.cli._demo import DemoPlan, run_demo

TINY = DemoPlan(
    input_size=(32, 32), heads=("crm64-b0-fcn", "nocrm-b0-fcn"), positions=("layer3.*",),
    train_size=16, val_size=8, calib_size=8, epochs=1, stage2_epochs=1, batch_size=4, max_exits=2,
    repeat=2,  # the test machine is rarely quiet: noisy devices are kept, and the report says so
)  # fmt: skip


def _rows(db: Path, table: str) -> int:
    with sqlite3.connect(db) as con:
        return con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]  # noqa: S608 - test only


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_demo_runs_end_to_end_then_reuses_the_store(tmp_path: Path, two_threads, capsys) -> None:
    out, db = tmp_path / "out", tmp_path / "mess.db"
    report = run_demo(TINY, out=out, db=str(db))
    text = report.read_text()
    assert report == out / "report.html"
    assert "this-cpu-2threads" in text and "this-cpu-1thread" in text  # two fronts, two devices
    assert text.count("Latency measurement quality on") == 2  # next to each front
    assert _rows(db, "dse_search_run") == 2
    latency_rows = _rows(db, "dse_latency")
    profiles = _rows(db, "dse_accuracy_profile")
    checkpoint = out / "demo.pt"
    mtime = checkpoint.stat().st_mtime_ns
    capsys.readouterr()

    run_demo(TINY, out=out, db=str(db))
    second = capsys.readouterr().out
    assert checkpoint.stat().st_mtime_ns == mtime  # nothing retrained
    assert "nothing to do" in second
    assert _rows(db, "dse_latency") == latency_rows  # nothing re-measured
    assert _rows(db, "dse_accuracy_profile") == profiles
    assert _rows(db, "dse_search_run") == 4


def test_unwritable_output_folder_is_one_line(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    db = tmp_path / "mess.db"
    code = main(["demo", "--out", str(blocker / "out"), "--db", str(db)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: cannot write in output folder") and err.count("\n") == 1
    assert not db.exists()


def test_store_of_another_schema_is_refused_and_kept(tmp_path: Path, capsys) -> None:
    db = tmp_path / "newer.db"
    assert main(["db", "upgrade", "--db", str(db)]) == 0
    with sqlite3.connect(db) as con:  # as if a newer mess-dse had written it
        con.execute("UPDATE dse_alembic_version SET version_num = '9999_future'")
    before = db.read_bytes()
    capsys.readouterr()
    code = main(["demo", "--out", str(tmp_path / "out"), "--db", str(db)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert db.read_bytes() == before
    assert not (tmp_path / "out" / "demo.pt").exists()


@pytest.mark.slow
def test_noisy_timings_are_kept_marked_unless_strict(tmp_path: Path, two_threads, monkeypatch,
                                                     capsys) -> None:
    """A busy machine must not stop the demo: its devices are kept, marked noisy, and said so;
    --strict-timing applies `dse profile`'s refusal instead (exit 3 when no device is left)."""
    import dataclasses

    import profiling.latency as latency
    from profiling.verdict import UnstableProfileError

    real = latency.judge

    def busy(*args, **kwargs):  # the real verdict, failed as on a machine under load
        return dataclasses.replace(real(*args, **kwargs), ok=False, problems=("forced by a test",))

    monkeypatch.setattr(latency, "judge", busy)
    out, db = tmp_path / "out", tmp_path / "mess.db"
    report = run_demo(TINY, out=out, db=str(db))
    err = capsys.readouterr().err
    assert err.count("timings are noisy") == 2 and "forced by a test" in err
    assert "stored although noisy" in report.read_text()
    assert _rows(db, "dse_search_run") == 2

    strict_db = tmp_path / "strict.db"
    with pytest.raises(UnstableProfileError, match="too busy"):
        run_demo(dataclasses.replace(TINY, strict_timing=True), out=out, db=str(strict_db))
    assert _rows(strict_db, "dse_latency") == 0
