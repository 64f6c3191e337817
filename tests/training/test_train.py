"""Training loop on tiny real networks and the procedural dataset."""

from pathlib import Path

import pytest
import torch

from training.adapters import build_network
from training.checkpoint import load_checkpoint
from training.data import build_dataset
from training.errors import TrainingError
from training.train import EpochRecord, TrainConfig, evaluate_exits, train_network

META = {"input_size": [32, 32], "dataset": "synthetic"}


def _tiny(seed: int = 0):
    torch.manual_seed(seed)
    return build_network(
        "fcn_resnet18", num_classes=6, head_space=["nocrm-b0-fcn", "crm16-b1-fcn"],
        positions=["layer1.1", "layer2.1"],
    )  # fmt: skip


def _data(n: int = 16, *, augment: bool = True):
    return build_dataset("synthetic", split="train", input_size=(32, 32), size=n, augment=augment)


def _backbone_state(net) -> dict[str, torch.Tensor]:
    return {
        k: v.clone()
        for k, v in net.state_dict().items()
        if k.startswith(("segments.", "final_head."))
    }


def _head_state(net) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items() if k.startswith("heads.")}


def test_loss_decreases(tmp_path: Path) -> None:
    net = _tiny()
    config = TrainConfig(mode="stage1", epochs=4, batch_size=8, lr=0.05)
    history = train_network(
        net, _data(augment=False), None, config, out=str(tmp_path / "c.pt"), meta=META
    )
    assert [r.epoch for r in history] == [1, 2, 3, 4]
    assert history[-1].train_loss < history[0].train_loss


def test_stage2_leaves_backbone_and_final_head_bit_identical(tmp_path: Path) -> None:
    net = _tiny()
    before, heads_before = _backbone_state(net), _head_state(net)
    config = TrainConfig(mode="stage2", epochs=1, batch_size=8, lr=0.05)
    history = train_network(
        net, _data(), _data(8, augment=False), config, out=str(tmp_path / "c.pt"), meta=META
    )
    after = _backbone_state(net)
    assert before.keys() == after.keys() and any("running_mean" in k for k in before)
    for key in before:
        assert torch.equal(before[key], after[key]), key
    heads_after = _head_state(net)
    for exit_id in net.exit_ids:  # every candidate head was trained in the one pass
        prefix = "heads." + exit_id.replace(".", "_").replace("/", "__") + "."
        assert any(
            not torch.equal(heads_before[k], heads_after[k])
            for k in heads_before
            if k.startswith(prefix)
        ), exit_id
    assert set(history[0].val_miou) == {*net.exit_ids, "final"}


def test_ic_only_also_freezes_and_end_to_end_moves_the_backbone(tmp_path: Path) -> None:
    net = _tiny()
    before = _backbone_state(net)
    ic = TrainConfig(mode="ic-only", epochs=1, batch_size=8, lr=0.05)
    train_network(net, _data(8), None, ic, out=str(tmp_path / "a.pt"), meta=META)
    assert all(torch.equal(before[k], v) for k, v in _backbone_state(net).items())
    e2e = TrainConfig(mode="end-to-end", epochs=1, batch_size=8, lr=0.05)
    train_network(net, _data(8), None, e2e, out=str(tmp_path / "b.pt"), meta=META)
    assert any(not torch.equal(before[k], v) for k, v in _backbone_state(net).items())


class _StopAfterFirstEpoch:
    def epoch_started(self, mode: str, epoch: int, epochs: int, batches: int) -> None:
        pass

    def batch_done(self, loss: float) -> None:
        pass

    def epoch_done(self, record: EpochRecord) -> None:
        raise KeyboardInterrupt


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path: Path) -> None:
    config = TrainConfig(mode="stage1", epochs=2, batch_size=8, lr=0.05, seed=3)
    straight = _tiny()
    train_network(straight, _data(12), None, config, out=str(tmp_path / "straight.pt"), meta=META)

    cut = str(tmp_path / "cut.pt")
    with pytest.raises(KeyboardInterrupt):
        train_network(
            _tiny(), _data(12), None, config, out=cut, meta=META, progress=_StopAfterFirstEpoch()
        )
    resumed, meta = load_checkpoint(cut)
    state = meta["train_state"]
    assert state["epoch"] == 1 and not state["finished"]
    history = train_network(
        resumed, _data(12), None, config, out=cut, meta=META, resume_state=state
    )
    assert [r.epoch for r in history] == [1, 2]
    expected = straight.state_dict()
    for key, value in resumed.state_dict().items():
        assert torch.equal(value, expected[key]), key

    changed = TrainConfig(mode="stage1", epochs=2, batch_size=4, lr=0.05, seed=3)
    with pytest.raises(TrainingError, match="batch_size"):
        train_network(_tiny(), _data(12), None, changed, out=cut, meta=META, resume_state=state)

    # a checkpoint written before a setting existed resumes when the setting keeps its default
    older = {**state, "config": {k: v for k, v in state["config"].items() if k != "distill_class_weights"}}
    train_network(_tiny(), _data(12), None, config, out=cut, meta=META, resume_state=older)
    with pytest.raises(TrainingError, match="distill_class_weights"):
        weighted = TrainConfig(
            mode="stage1", epochs=2, batch_size=8, lr=0.05, seed=3, distill_class_weights=True
        )
        train_network(_tiny(), _data(12), None, weighted, out=cut, meta=META, resume_state=older)


def test_time_budget_stops_at_an_epoch_boundary(tmp_path: Path) -> None:
    config = TrainConfig(mode="final-only", epochs=50, batch_size=8, lr=0.01, time_budget_s=0.01)
    history = train_network(_tiny(), _data(8), None, config, out=str(tmp_path / "c.pt"), meta=META)
    assert len(history) == 1
    assert load_checkpoint(tmp_path / "c.pt")[1]["train_state"]["finished"]


def test_unknown_exit_and_class_mismatch_are_user_errors(tmp_path: Path) -> None:
    config = TrainConfig(mode="stage2", epochs=1, exits=("layer9.9/nocrm-b0-fcn",))
    with pytest.raises(TrainingError, match="layer9.9"):
        train_network(_tiny(), _data(8), None, config, out=str(tmp_path / "c.pt"), meta=META)
    other = build_network(
        "fcn_resnet18", num_classes=3, head_space=["nocrm-b0-fcn"], positions=["layer1.1"]
    )
    with pytest.raises(TrainingError, match="6 classes but the network 3"):
        train_network(
            other, _data(8), None, TrainConfig(mode="stage1"), out=str(tmp_path / "d.pt"), meta=META
        )
    assert not (tmp_path / "c.pt").exists() and not (tmp_path / "d.pt").exists()


def test_evaluate_exits_scores_every_exit_in_range() -> None:
    net = _tiny()
    scores = evaluate_exits(net, _data(4, augment=False), batch_size=4)
    assert set(scores) == {*net.exit_ids, "final"}
    assert all(0.0 <= v <= 1.0 for v in scores.values())
