"""--time-budget is a budget: planned from measured step times, checked between steps, split
between the stages so stage 2 gets its share, and said up front (with a warning below 1 epoch).

The clock is simulated (every training step costs exactly one second), so these tests check the
planning logic, not this machine's speed."""

from pathlib import Path

import pytest
import torch

from training import _stages
from training import train as train_module
from training.adapters import build_network
from training.budget import (
    StageEstimate,
    _probe_heads,
    describe_plan,
    estimate_stage,
    split_budget,
)
from training.checkpoint import read_checkpoint
from training.data import build_dataset
from training.runner import TrainRequest, run_training
from training.train import TrainConfig, train_network

META = {"input_size": [32, 32], "dataset": "synthetic"}


def _tiny(heads=("nocrm-b0-fcn", "crm16-b1-fcn")):
    torch.manual_seed(0)
    return build_network(
        "fcn_resnet18", num_classes=6, head_space=list(heads), positions=["layer1.1", "layer2.1"]
    )


def _data(n: int):
    return build_dataset("synthetic", split="train", input_size=(32, 32), size=n, augment=True)


@pytest.fixture
def one_second_steps(monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    """Simulated time: the budget clock only moves by one second per training step."""
    now = {"t": 0.0}
    monkeypatch.setattr(train_module, "budget_clock", lambda: now["t"])
    for name in ("batch_loss", "head_loss"):
        real = getattr(_stages, name)

        def step(*args, _real=real, **kwargs):  # type: ignore[no-untyped-def]
            now["t"] += 1.0
            return _real(*args, **kwargs)

        monkeypatch.setattr(train_module, name, step)
    return now


def test_the_schedule_is_planned_from_measured_steps_and_ends_at_the_budget(
    tmp_path: Path, one_second_steps: dict[str, float]
) -> None:
    config = TrainConfig(mode="stage1", epochs=100, batch_size=4, lr=0.01, time_budget_s=10.5)
    history = train_network(_tiny(), _data(16), None, config, out=str(tmp_path / "c.pt"), meta=META)
    state = read_checkpoint(tmp_path / "c.pt")["meta"]  # checkpoint meta holds the history
    train_state = read_checkpoint(tmp_path / "c.pt")["train_state"]
    assert one_second_steps["t"] <= 10.5  # never past the budget
    assert train_state["iteration"] == 10 and train_state["finished"]
    # the poly schedule was fitted to the 10 steps that fit (its lr reaches 0 at the last one),
    # not to the 100 epochs asked for
    assert train_state["total_iters"] == 10
    assert [r.epoch for r in history] == [1, 2, 3] and len(state["history"]) == 3


def test_the_budget_is_checked_inside_an_epoch(
    tmp_path: Path, one_second_steps: dict[str, float]
) -> None:
    config = TrainConfig(mode="final-only", epochs=5, batch_size=2, lr=0.01, time_budget_s=4.5)
    history = train_network(_tiny(), _data(16), None, config, out=str(tmp_path / "c.pt"), meta=META)
    train_state = read_checkpoint(tmp_path / "c.pt")["train_state"]
    assert len(history) == 1 and train_state["iteration"] == 4  # of the epoch's 8 steps
    assert train_state["finished"] and one_second_steps["t"] <= 4.5


def test_stage1_stops_in_time_for_stage2_and_the_plan_is_said_up_front(
    tmp_path: Path, one_second_steps: dict[str, float]
) -> None:
    notes: list[str] = []

    class Progress:
        def epoch_started(self, mode: str, epoch: int, epochs: int, batches: int) -> None: ...
        def batch_done(self, loss: float) -> None: ...
        def epoch_done(self, record) -> None: ...  # type: ignore[no-untyped-def]
        def note(self, text: str) -> None:
            notes.append(text)

    request = TrainRequest(
        arch="fcn_resnet18", data="synthetic", out=str(tmp_path / "c.pt"), input_size=(32, 32),
        base=TrainConfig(mode="stage1", epochs=50, batch_size=4, lr=0.01),
        time_budget_s=20.0, stage1_share=0.5, train_size=16, val_size=4,
        head_space=("nocrm-b0-fcn",), positions=("layer1.1", "layer2.1"),
    )  # fmt: skip
    outcome = run_training(request, progress=Progress())
    assert set(outcome.history) == {"stage1", "stage2"}
    stage1 = sum(r.seconds for r in outcome.history["stage1"])
    assert 8.0 <= stage1 <= 10.0  # its half of the budget, not its 50 epochs
    assert outcome.history["stage2"] and one_second_steps["t"] <= 20.0
    assert notes[0].startswith("time budget 0.3 min")
    assert any(n.strip().startswith("stage1:") for n in notes)
    assert any(n.strip().startswith("stage2:") for n in notes)


def test_the_split_follows_the_measured_cost_of_the_asked_epochs() -> None:
    stage1 = StageEstimate(mode="stage1", step_s=0.2, batches=46, eval_s=0.8)  # 10 s/epoch
    stage2 = StageEstimate(mode="stage2", step_s=0.1, batches=46, eval_s=0.4, setup_s=20.0)
    plans = split_budget(240.0, [stage1, stage2], [18, 8], None)  # costs 180 : 60
    assert plans[0].budget_s == pytest.approx(180.0) and plans[1].budget_s == pytest.approx(60.0)
    assert plans[0].epochs == pytest.approx(18.0) and plans[1].epochs == pytest.approx(8.0)
    fixed = split_budget(240.0, [stage1, stage2], [18, 8], 0.5)
    assert fixed[0].budget_s == pytest.approx(120.0)


def test_less_than_one_epoch_is_warned_about() -> None:
    costly = StageEstimate(mode="stage2", step_s=150.0, batches=46, eval_s=0.0, setup_s=60.0)
    lines = describe_plan(split_budget(600.0, [costly], [8], None), 600.0, 320)
    assert "320 exits" in lines[0]
    assert lines[-1].startswith("warning: stage2 gets less than one epoch (0.08)")
    enough = StageEstimate(mode="stage1", step_s=1.0, batches=10, eval_s=0.0)
    assert not any("warning" in x for x in describe_plan(split_budget(60.0, [enough], [5], None), 60.0, 2))


def test_many_heads_are_timed_on_a_few_and_scaled_by_flops() -> None:
    net = _tiny(("nocrm-b0-fcn", "crm16-b1-fcn", "crm16-b0-deeplabv3", "nocrm-b1-fcn"))
    probe, scale = _probe_heads(net, list(net.exit_ids), (32, 32))
    assert len(probe) < len(net.exit_ids) and scale > 1.0
    data = _data(8)
    cached = estimate_stage(net, data, _data(4), TrainConfig(mode="stage2", batch_size=4))
    plain = estimate_stage(
        net, data, None, TrainConfig(mode="stage2", batch_size=4, feature_cache=False)
    )
    assert cached.setup_s > 0 and plain.setup_s == 0 and cached.eval_s > 0
    assert plain.step_s > 0 and cached.step_s > 0 and cached.batches == 2
