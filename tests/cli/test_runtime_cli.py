"""`--runtime onnxruntime` for `dse profile` and `dse verify`, and its refusals."""

from __future__ import annotations

import json

import pytest

from dse.cli import main

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

# --keep-noisy: the machine running the tests is rarely quiet; the verdict is checked elsewhere
FAST = ["--repeat", "2", "--warmup", "0", "--threads", "1", "--keep-noisy"]


def _noisy_components(db: str) -> int:
    from db import repository
    from db.session import open_store, session_scope

    engine = open_store(db)
    try:
        with session_scope(engine, readonly=True) as s:
            device = repository.get_device(s, "cpu-ort")
            rows = repository.load_latency(s, model_id=1, device_id=device.id)
    finally:
        engine.dispose()
    return sum(r.noisy for r in rows if r.kind != "path")


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_onnxruntime_profile_search_and_verify(checkpoint, tmp_path, capsys) -> None:
    db = str(tmp_path / "m.db")
    args = ["profile", "--checkpoint", str(checkpoint), "--device", "cpu-ort", "--db", db,
            "--runtime", "onnxruntime", "--limit", "6", *FAST, "--json"]
    assert main(args) == 0
    lines = _json_lines(capsys.readouterr().out)
    assert lines[0]["latency_measured"] == 11  # the same 11 components torch times
    loops = [x["closed_loop"] for x in lines if "closed_loop" in x]
    assert [c["taken"] for c in loops] == ["layer1.1/nocrm-b0-fcn", "layer3.1/nocrm-b0-fcn",
                                           "final"]
    assert all(c["measured_ms"] > 0 and c["predicted_ms"] > 0 for c in loops)
    noisy = _noisy_components(db)  # a busy machine stores them marked noisy (--keep-noisy)
    assert main(args) == 0  # a re-run measures only what is missing or noisy
    assert _json_lines(capsys.readouterr().out)[0]["latency_measured"] == noisy
    assert main(["devices", "cpu-ort", "--json", "--db", db]) == 0
    fingerprint = json.loads(capsys.readouterr().out.splitlines()[0])["fingerprint"]
    assert fingerprint["runtime"] == "onnxruntime" and fingerprint["threads"] == 1
    assert fingerprint["graph_optimization"] == "all" and "torch" not in fingerprint

    assert main(["pareto", "--device", "cpu-ort", "--db", db, "--max-exits", "2",
                 "--json"]) == 0
    rows = _json_lines(capsys.readouterr().out)
    run = rows[0]["run"]
    verify = ["verify", "--run", str(run), "--candidate", "0", "--checkpoint", str(checkpoint),
              "--db", db, "--repeat", "1", "--json"]
    assert main(verify) == 0
    result = _json_lines(capsys.readouterr().out)[0]
    # Same images, so the ONNX cascade must route and score them as the profile predicted.
    assert result["miou_ok"] and result["exits_ok"] and result["n_images"] == 6
    assert main([*verify, "--runtime", "torch"]) == 2
    err = capsys.readouterr().err
    assert "profiled with onnxruntime; verify it with --runtime onnxruntime" in err


def test_runtime_refusals_write_nothing(checkpoint, tmp_path, capsys) -> None:
    db = tmp_path / "m.db"
    base = ["profile", "--checkpoint", str(checkpoint), "--device", "d", "--db", str(db),
            "--no-accuracy"]
    cases = [
        (["--runtime", "tflite"], "unknown --runtime 'tflite'"),
        (["--runtime", "onnxruntime", "--optimization", "max"], "optimisation level 'max'"),
        (["--runtime", "onnxruntime", "--provider", "NoSuchProvider"], "not available here"),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, err
        assert not db.exists()
