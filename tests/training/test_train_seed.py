"""`dse train --seed`: same seed, same data, same machine -> bit-identical weights."""

from __future__ import annotations

from pathlib import Path

import torch

from training.checkpoint import read_checkpoint
from training.runner import TrainRequest, run_training
from training.train import TrainConfig


def _train(out: Path, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(1234 + len(str(out)))  # the caller's RNG state must not matter
    request = TrainRequest(
        arch="fcn_resnet18", data="synthetic", out=str(out), stage="both", input_size=(32, 32),
        base=TrainConfig(mode="stage1", epochs=1, batch_size=4, seed=seed, threads=1),
        head_space=("nocrm-b0-fcn", "crm16-b1-fcn"), positions=("layer1.1",),
        train_size=4, val_size=2,
    )
    run_training(request)
    return read_checkpoint(out)["state_dict"]


def test_one_seed_gives_bit_identical_weights_and_another_seed_does_not(tmp_path: Path) -> None:
    a = _train(tmp_path / "a.pt", seed=7)
    b = _train(tmp_path / "bb.pt", seed=7)
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert differing == []
    c = _train(tmp_path / "c.pt", seed=8)
    assert any(not torch.equal(a[k], c[k]) for k in a if k.startswith("heads."))
