"""`dse profile` end to end on a tiny checkpoint, and its refusals of bad input."""

from __future__ import annotations

import json

import pytest
import torch

from dse.cli import main

# --keep-noisy: the machine running the tests is rarely quiet; the verdict is checked elsewhere
# (tests/profiling/test_latency.py, with an injected clock and load)
FAST = ["--limit", "4", "--repeat", "2", "--warmup", "0", "--threads", "1", "--keep-noisy"]


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_profile_then_rerun_measures_nothing(checkpoint, tmp_path, capsys) -> None:
    db = str(tmp_path / "m.db")
    args = ["profile", "--checkpoint", str(checkpoint), "--device", "laptop-cpu", "--db", db,
            *FAST, "--json"]
    assert main(args) == 0
    lines = _json_lines(capsys.readouterr().out)
    run, rows = lines[0], [x for x in lines if "exit" in x]
    loops = [x["closed_loop"] for x in lines if "closed_loop" in x]
    # 3 segments (2 + tail), final head, 2 heads, 2 decisions, 3 upsamplings (2 exits + final)
    assert run["accuracy_measured_images"] == 4 and run["latency_measured"] == 11
    assert [r["exit"] for r in rows] == ["layer1.1/nocrm-b0-fcn", "layer3.1/nocrm-b0-fcn", "final"]
    assert all(0.0 <= r["miou"] <= 1.0 and r["gflops"] > 0 and r["p50_ms"] > 0 for r in rows)
    assert rows[0]["gflops"] < rows[1]["gflops"] < rows[2]["gflops"]
    assert [c["taken"] for c in loops] == ["layer1.1/nocrm-b0-fcn", "layer3.1/nocrm-b0-fcn", "final"]

    quality = run["latency_quality"]
    assert quality["components"] == 11 and "max_rel_spread" in quality and quality["passes"]
    assert [g["path"] for g in quality["closed_loop"]] == [c["path"] for c in loops]
    assert main(args) == 0
    again = _json_lines(capsys.readouterr().out)
    # a clean first run is reused; rows kept noisy are measured again
    assert again[0]["accuracy_measured_images"] == 0
    assert again[0]["latency_measured"] == (0 if quality["ok"] else 11)
    assert [r["miou"] for r in again if "exit" in r] == [r["miou"] for r in rows]

    # another device, latency only: the stored accuracy still fills the table
    assert main(["profile", "--checkpoint", str(checkpoint), "--device", "other", "--db", db,
                 "--no-accuracy", *FAST, "--json"]) == 0
    other = _json_lines(capsys.readouterr().out)
    assert other[0]["accuracy_measured_images"] is None and other[0]["latency_measured"] == 11
    assert [r["miou"] for r in other if "exit" in r] == [r["miou"] for r in rows]


def _refused(args: list[str], tmp_path, capsys, match: str) -> None:
    db = tmp_path / "never.db"
    assert main(["profile", "--device", "x", "--db", str(db), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and match in err and "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    assert not db.exists()


def test_class_mismatch_is_refused_before_writing(tmp_path, capsys) -> None:
    from training.adapters import build_network
    from training.checkpoint import save_checkpoint

    path = tmp_path / "four.pt"
    net = build_network("fcn_resnet18", num_classes=4, head_space=["nocrm-b0-fcn"],
                        positions=["layer3.1"])
    save_checkpoint(path, net, meta={"input_size": [32, 32], "dataset": "synthetic"})
    _refused(["--checkpoint", str(path), *FAST], tmp_path, capsys,
             "predicts 4 classes but the data has 6")


def test_bad_sizes_and_options_are_refused(checkpoint, tmp_path, capsys) -> None:
    ck = ["--checkpoint", str(checkpoint), *FAST]
    _refused([*ck, "--input-size", "4x4"], tmp_path, capsys, "cannot take input size 4x4")
    _refused([*ck, "--input-size", "big"], tmp_path, capsys, "HxW")
    _refused([*ck, "--no-accuracy", "--no-latency"], tmp_path, capsys, "nothing to do")
    _refused([*ck, "--dtype", "float16"], tmp_path, capsys, "float16 needs a CUDA")
    _refused(["--checkpoint", str(tmp_path / "missing.pt")], tmp_path, capsys, "does not exist")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA refusal")
def test_cuda_where_there_is_none(checkpoint, tmp_path, capsys) -> None:
    _refused(["--checkpoint", str(checkpoint), "--compute", "cuda"], tmp_path, capsys,
             "no CUDA device")


@pytest.mark.parametrize(("option", "value", "match"), [
    ("--repeat", "0", "--repeat: must be >= 1 (got 0)"),
    ("--min-time", "-1", "--min-time: must be a finite number >= 0"),
    ("--stability-threshold", "1.5", "--stability-threshold: the stability threshold must be in (0, 1)"),
    ("--stability-threshold", "0", "--stability-threshold"),
    ("--remeasure", "-2", "--remeasure: must be >= 0"),
    ("--warmup", "-1", "--warmup: must be >= 0"),
])
def test_bad_timing_options_are_one_line_exit_2_nothing_stored(
        checkpoint, tmp_path, capsys, option, value, match) -> None:
    _refused(["--checkpoint", str(checkpoint), "--limit", "4", option, value], tmp_path, capsys,
             match)


def test_profile_warns_when_stage_two_never_ran(tmp_path, capsys) -> None:
    from training.adapters import build_network
    from training.checkpoint import save_checkpoint

    path = tmp_path / "stage1-only.pt"
    net = build_network("fcn_resnet18", num_classes=6, head_space=["nocrm-b0-fcn"],
                        positions=["layer1.1"])
    save_checkpoint(path, net, meta={"input_size": [32, 32], "dataset": "synthetic",
                                     "completed_modes": ["stage1"]})
    assert main(["profile", "--checkpoint", str(path), "--device", "cpu", "--no-latency",
                 "--db", str(tmp_path / "m.db"), *FAST, "--json"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines()
                if line.startswith("warning: ")]
    assert len(warnings) == 1
    assert "exit heads of" in warnings[0] and "never trained" in warnings[0]
    assert f"dse train --stage 2 --out {path}" in warnings[0]
