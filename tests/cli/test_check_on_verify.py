"""`dse pareto --check-on` (store only) against `dse verify` (the network) on the same images."""

from __future__ import annotations

import json

import pytest
import torch

from dse.cli import main

SELECT, CHECK = "val[0:16][::2]", "val[0:16][1::2]"
THRESHOLDS = ["--th-pix", "0.2,0.25", "--th-img", "0.2,0.5,0.95"]


def _run(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow
def test_check_on_equals_what_verify_measures_on_that_split(tmp_path, capsys) -> None:
    from training.adapters import build_network, describe_positions
    from training.checkpoint import save_checkpoint

    torch.manual_seed(0)
    names = [p.name for p in describe_positions("fcn_resnet18")]
    network = build_network("fcn_resnet18", num_classes=6, head_space=["nocrm-b0-fcn"],
                            positions=names[1:4])
    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(ckpt, network, meta={"input_size": [32, 32], "dataset": "synthetic"})
    db = f"sqlite:///{tmp_path / 'store.db'}"
    common = ["--checkpoint", str(ckpt), "--device", "box", "--data", "synthetic", "--db", db,
              "--repeat", "2", "--warmup", "0", "--threads", "1", "--keep-noisy", "--json"]
    assert _run(capsys, "profile", *common, "--split", SELECT)[0] == 0
    assert _run(capsys, "profile", *common, "--split", CHECK, "--no-latency")[0] == 0
    code, out, err = _run(capsys, "pareto", "--device", "box", "--db", db, "--calibration",
                          SELECT, "--check-on", CHECK, "--max-exits", "2", *THRESHOLDS, "--json")
    assert code == 0, err
    checked = [line for line in map(json.loads, out.splitlines()) if "check" in line]
    # the checks whose images leave at the most different exits on the check set
    checked.sort(key=lambda c: -sum(r > 0 for r in c["check"]["observed"]["exit_rates"].values()))
    assert sum(r > 0 for r in checked[0]["check"]["observed"]["exit_rates"].values()) >= 2
    for line in checked[:2]:
        code, out, err = _run(capsys, "verify", "--run", str(line["run"]), "--candidate",
                              str(line["candidate"]), "--checkpoint", str(ckpt), "--split", CHECK,
                              "--repeat", "1", "--db", db, "--json")
        assert code == 0, err
        measured = json.loads(out)
        observed = line["check"]["observed"]
        assert measured["split"] == CHECK and measured["n_images"] == 8
        assert measured["same_images"] is False
        # the network on those images gives what the stored profile of those images says (the
        # same tolerance as verify on the calibration images: float noise at a threshold)
        assert measured["measured_miou"] == pytest.approx(observed["miou"], abs=1e-4)
        for exit_id, share in observed["exit_rates"].items():
            assert abs(measured["measured_exit_counts"].get(exit_id, 0) - round(8 * share)) <= 1
