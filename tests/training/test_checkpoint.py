"""Checkpoints: round trip, architecture description, refusal of foreign pickles, atomic writes."""

import os
from pathlib import Path

import pytest
import torch

from training.adapters import build_network
from training.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint, weights_sha256
from training.errors import TrainingError

META = {"input_size": [32, 32], "dataset": "synthetic", "note": "kept"}


def _tiny(seed: int = 0):
    torch.manual_seed(seed)
    return build_network(
        "fcn_resnet18", num_classes=6, head_space=["nocrm-b0-fcn", "crm16-b1-fcn"],
        positions=["layer1.1", "layer2.1"],
    )  # fmt: skip


def test_round_trip_keeps_weights_and_description(tmp_path: Path) -> None:
    net = _tiny()
    path = tmp_path / "a.pt"
    save_checkpoint(path, net, meta=META)
    loaded, meta = load_checkpoint(path, expect_arch="fcn_resnet18")
    assert weights_sha256(loaded) == weights_sha256(net)
    assert [e.id for e in loaded.exits] == [e.id for e in net.exits]
    assert meta["arch"] == "fcn_resnet18" and meta["num_classes"] == 6
    assert meta["positions"] == ["layer1.1", "layer2.1"]
    assert meta["head_space"] == ["nocrm-b0-fcn", "crm16-b1-fcn"]
    assert meta["input_size"] == [32, 32] and meta["dataset"] == "synthetic"
    assert meta["note"] == "kept" and meta["train_state"] is None
    assert not loaded.training


def test_weights_sha_follows_the_weights_only(tmp_path: Path) -> None:
    a, b = _tiny(0), _tiny(1)
    assert weights_sha256(a) != weights_sha256(b)
    save_checkpoint(tmp_path / "x.pt", a, meta=META)
    save_checkpoint(tmp_path / "y.pt", a, meta={**META, "note": "other"})
    assert weights_sha256(load_checkpoint(tmp_path / "x.pt")[0]) == weights_sha256(
        load_checkpoint(tmp_path / "y.pt")[0]
    )


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # runs on unpickling: creates the marker file


def test_a_malicious_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "mess-dse-checkpoint", "version": 1, "x": _Evil(str(marker))}, path)
    with pytest.raises(TrainingError, match="refusing to unpickle"):
        load_checkpoint(path)
    assert not marker.exists()


def test_other_architecture_and_bad_files_are_named(tmp_path: Path) -> None:
    path = tmp_path / "a.pt"
    save_checkpoint(path, _tiny(), meta=META)
    with pytest.raises(TrainingError, match="'fcn_resnet18' network, not 'fcn_resnet34'"):
        load_checkpoint(path, expect_arch="fcn_resnet34")
    with pytest.raises(TrainingError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match="not a readable torch file"):
        read_checkpoint(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(TrainingError, match="not a mess-dse checkpoint"):
        read_checkpoint(foreign)


class _Unsaveable:
    def __reduce__(self):
        raise RuntimeError("this object cannot be saved")


def test_a_failed_save_leaves_the_previous_file_whole(tmp_path: Path) -> None:
    net = _tiny()
    path = tmp_path / "a.pt"
    save_checkpoint(path, net, meta=META)
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="cannot be saved"):  # fails midway through the write
        save_checkpoint(path, net, meta={**META, "bad": _Unsaveable()})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["a.pt"]
    with pytest.raises(ValueError, match="input_size"):
        save_checkpoint(tmp_path / "b.pt", net, meta={"dataset": "synthetic"})


@pytest.mark.parametrize(("completed", "state", "warned"), [
    (["stage1"], None, ["never trained", "completed stages: stage1",
                        "dse train --stage 2 --out ck.pt"]),
    ([], None, ["never trained", "completed stages: none"]),
    (["final-only"], None, ["never trained", "completed stages: final-only"]),
    (["stage1"], {"mode": "stage2", "epoch": 1, "planned_epochs": 4, "finished": False},
     ["did not finish: stage2 stopped after epoch 1 of 4", "--out ck.pt --resume"]),
    (["stage1"], {"mode": "stage1", "epoch": 2, "planned_epochs": 5, "finished": False},
     ["did not finish: stage1 stopped after epoch 2 of 5", "never trained"]),
    (["stage1", "stage2"], None, []),
    (["stage1", "end-to-end"], None, []),
    (["stage1", "ic-only"], {"mode": "ic-only", "epoch": 3, "planned_epochs": 3,
                             "finished": True}, []),
])
def test_training_warnings_name_untrained_heads_and_unfinished_runs(completed, state,
                                                                   warned) -> None:
    from training.checkpoint import training_warnings

    warnings = training_warnings({"completed_modes": completed, "train_state": state}, "ck.pt")
    text = " | ".join(warnings)
    assert all(w in text for w in warned), text
    assert bool(warnings) == bool(warned)
