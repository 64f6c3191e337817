"""What each training mode asks of its losses, checked at the call (not only by the outcome)."""

from __future__ import annotations

import pytest
import torch

import training._stages as stages
from training.adapters import build_network, describe_positions


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    names = [p.name for p in describe_positions("fcn_resnet18")]
    return build_network("fcn_resnet18", num_classes=3, positions=names[1:4],
                         head_space=["nocrm-b0-fcn", "crm8-b0-fcn"])


def _batch():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 32, 32, generator=gen), torch.randint(0, 3, (2, 32, 32), generator=gen)


def _loss(network, mode: str, *, iteration: int = 0, alpha: float = 0.7) -> torch.Tensor:
    images, labels = _batch()
    return stages.batch_loss(network, mode, images, labels, iteration=iteration,
                             exit_ids=list(network.exit_ids), weight=None, early_weight=1.0,
                             alpha=alpha, temperature=2.0)


@pytest.mark.parametrize(("mode", "expected"), [("stage2", 0.7), ("ic-only", 0.0)])
def test_stage_two_distills_with_alpha_and_ic_only_with_none(network, monkeypatch, mode,
                                                             expected) -> None:
    seen: list[tuple[float, float]] = []
    real = stages.pfd_loss

    def spy(*args, **kwargs):
        seen.append((kwargs["alpha"], kwargs["temperature"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(stages, "pfd_loss", spy)
    stages.set_train_mode(network, mode)
    _loss(network, mode)
    assert len(seen) == len(network.exit_ids)  # one term per trained head
    assert all(alpha == expected and t == 2.0 for alpha, t in seen)


def test_stage_one_rotates_its_early_exit_every_iteration(network, monkeypatch) -> None:
    heads: list[str] = []
    real = network.run_head

    def spy(exit_id, feature):
        heads.append(exit_id)
        return real(exit_id, feature)

    monkeypatch.setattr(network, "run_head", spy)
    stages.set_train_mode(network, "stage1")
    trained = stages.reference_exits(network)
    for iteration in range(2 * len(trained) + 1):
        images, labels = _batch()
        stages.batch_loss(network, "stage1", images, labels, iteration=iteration,
                          exit_ids=trained, weight=None, early_weight=1.0, alpha=1.0,
                          temperature=1.0)
    assert heads == [trained[i % len(trained)] for i in range(2 * len(trained) + 1)]
    assert len(set(trained)) == len(network.positions)  # one light head per position
