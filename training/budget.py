"""What a time budget buys, measured on this machine before training starts.

`dse train --time-budget` splits its minutes between the stages and says up front how many
epochs each stage gets. The numbers come from timing real training steps of each mode on a copy
of the network (a few seconds): a stage-1 step, the frozen backbone's forward (which the stage-2
feature cache pays once per view) and the heads' step. With many heads a single stage-2 step can
take minutes, so the heads are timed on a subset and scaled by FLOPs to the whole head space.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from training._stages import (
    FROZEN_BACKBONE_MODES,
    batch_loss,
    head_loss,
    position_of,
    set_train_mode,
)
from training.data import SegmentationDataset
from training.flops import network_components
from training.network import MessNetwork
from training.train import TrainConfig, exit_ids_of, time_validation

# Heads timed for the stage-2 estimate: at most this many, the cheapest first (then scaled).
_PROBE_HEADS = 6


@dataclass(frozen=True, kw_only=True)
class StageEstimate:
    """Measured cost of one mode on this machine.

    Attributes:
        step_s: one training step (a batch).
        batches: steps per epoch.
        eval_s: the validation pass after each epoch.
        setup_s: one-off work before the first epoch (stage 2: the feature cache).
    """

    mode: str
    step_s: float
    batches: int
    eval_s: float
    setup_s: float = 0.0

    @property
    def epoch_s(self) -> float:
        return self.step_s * self.batches + self.eval_s

    def epochs_in(self, seconds: float) -> float:
        return max(0.0, seconds - self.setup_s) / self.epoch_s


@dataclass(frozen=True, kw_only=True)
class StagePlan:
    estimate: StageEstimate
    budget_s: float

    @property
    def epochs(self) -> float:
        return self.estimate.epochs_in(self.budget_s)


def _timed(run, repeats: int = 2) -> float:  # type: ignore[no-untyped-def]
    """Seconds per call after one warm-up call."""
    run()
    started = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - started) / repeats


def estimate_stage(
    network: MessNetwork,
    train_set: SegmentationDataset,
    val_set: SegmentationDataset | None,
    config: TrainConfig,
) -> StageEstimate:
    """Time ``config.mode`` on a copy of ``network`` (its weights and statistics stay as they are)."""
    net = copy.deepcopy(network).to(config.device).to(memory_format=torch.channels_last)
    exit_ids = exit_ids_of(net, config)
    loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=False)
    images, labels = next(iter(loader))
    images = images.to(config.device, memory_format=torch.channels_last)
    labels = labels.to(config.device)
    batches = max(1, len(train_set) // config.batch_size)
    set_train_mode(net, config.mode)
    if config.mode not in FROZEN_BACKBONE_MODES:

        def step() -> None:
            loss = batch_loss(
                net, config.mode, images, labels, iteration=0, exit_ids=exit_ids, weight=None,
                early_weight=config.early_weight, alpha=config.alpha,
                temperature=config.temperature,
            )  # fmt: skip
            loss.backward()
            net.zero_grad(set_to_none=True)

        eval_s = 0.0 if val_set is None else time_validation(net, val_set, exit_ids, config)
        return StageEstimate(
            mode=config.mode, step_s=_timed(step), batches=batches, eval_s=eval_s
        )  # fmt: skip
    with torch.no_grad():
        forward_s = _timed(lambda: net.backbone_features(images), repeats=1)
        features, final_native = net.backbone_features(images)
    probe, scale = _probe_heads(net, exit_ids, train_set.input_size)
    eval_s = 0.0

    def heads() -> None:
        head_loss(
            net, config.mode, features, final_native, labels, exit_ids=probe, weight=None,
            alpha=config.alpha, temperature=config.temperature,
        ).backward()
        net.zero_grad(set_to_none=True)

    heads_s = _timed(heads, repeats=1) * scale
    if val_set is not None:  # validation runs every head forward: scale the probed ones too
        backbone_eval = time_validation(net, val_set, [], config)
        probed_eval = time_validation(net, val_set, probe, config)
        eval_s = backbone_eval + max(0.0, probed_eval - backbone_eval) * scale
    cached = config.feature_cache and config.stage2_views is not None
    views = config.stage2_views or 1
    setup_s = forward_s * views * math.ceil(len(train_set) / config.batch_size) if cached else 0.0
    return StageEstimate(
        mode=config.mode, step_s=heads_s + (0.0 if cached else forward_s), batches=batches,
        eval_s=eval_s, setup_s=setup_s,
    )  # fmt: skip


def _probe_heads(
    network: MessNetwork, exit_ids: Sequence[str], input_size: tuple[int, int]
) -> tuple[list[str], float]:
    """A few cheap heads to time and the FLOPs factor from them to all of ``exit_ids``."""
    if len(exit_ids) <= _PROBE_HEADS:
        return list(exit_ids), 1.0
    flops = {
        c.name: c.gflops for c in network_components(network, input_size) if c.kind == "head"
    }  # fmt: skip
    ordered = sorted(exit_ids, key=lambda e: flops.get(e, 0.0))
    # The cheapest and the dearest of each position: a spread of sizes, few seconds in all.
    chosen: list[str] = []
    for position in dict.fromkeys(position_of(e) for e in ordered):
        here = [e for e in ordered if position_of(e) == position]
        for e in (here[0], here[-1]):
            if e not in chosen and len(chosen) < _PROBE_HEADS:
                chosen.append(e)
    total = sum(flops.get(e, 0.0) for e in exit_ids)
    probed = sum(flops.get(e, 0.0) for e in chosen)
    return chosen, (total / probed if probed > 0 else len(exit_ids) / len(chosen))


def split_budget(
    budget_s: float,
    estimates: Sequence[StageEstimate],
    epochs: Sequence[int],
    share: float | None,
) -> list[StagePlan]:
    """Each stage's seconds: by ``share`` (first stage) or in proportion to the measured cost
    of the epochs each stage asks for, so stage 1 stops in time for stage 2."""
    if len(estimates) == 1:
        return [StagePlan(estimate=estimates[0], budget_s=budget_s)]
    if share is None:
        costs = [e.setup_s + n * e.epoch_s for e, n in zip(estimates, epochs, strict=True)]
        share = costs[0] / sum(costs)
    first = budget_s * share
    return [
        StagePlan(estimate=estimates[0], budget_s=first),
        StagePlan(estimate=estimates[1], budget_s=budget_s - first),
    ]


def describe_plan(plans: Sequence[StagePlan], budget_s: float, exits: int) -> list[str]:
    """Lines for the user: what each stage gets, and a warning for any below one epoch."""
    lines = [f"time budget {budget_s / 60:.1f} min, measured on this machine ({exits} exits):"]
    for plan in plans:
        e = plan.estimate
        setup = f"feature cache {e.setup_s / 60:.1f} min + " if e.setup_s else ""
        lines.append(
            f"  {e.mode}: {plan.budget_s / 60:.1f} min = {setup}about {plan.epochs:.1f} epochs "
            f"({e.step_s:.2f} s/step x {e.batches} steps + {e.eval_s:.0f} s validation "
            f"= {e.epoch_s / 60:.1f} min/epoch)"
        )
    for plan in plans:
        if plan.epochs < 1.0:
            lines.append(
                f"warning: {plan.estimate.mode} gets less than one epoch "
                f"({plan.epochs:.2f}); raise --time-budget, train fewer exits (--head-space, "
                "--positions) or use a smaller --input-size"
            )
    return lines


__all__ = ["StageEstimate", "StagePlan", "describe_plan", "estimate_stage", "split_budget"]
