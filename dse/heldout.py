"""Held-out checks from the store: a front found on one calibration set, scored on another.

Both sets hold per-image counts and confidence histograms of the same model and exits, so the
exact evaluator scores a configuration on the other set without running the network: the mIoU,
the drop versus that set's own baseline and the exit rates are what the cascade would give on
those images (what `dse verify` measures there); the latency is the device's component costs
with the routes taken on those images (a prediction, not a timing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dse.constraints import Bounds, Constraints
from dse.data import AccuracyData
from dse.errors import DseError
from dse.evaluate import Evaluation, Evaluator

MOVED_PP = 5.0  # an exit rate that moved by more than this many points is flagged


def scores(e: Evaluation, baseline: Evaluation) -> dict[str, Any]:
    """The numbers a held-out check compares, from one evaluation and its set's baseline."""
    return {"miou": e.miou, "drop_pp": 100.0 * (baseline.miou - e.miou),
            "latency_ms": e.latency_ms, "latency_p95_ms": e.latency_p95_ms, "gflops": e.gflops,
            "exit_rates": dict(e.exit_rates)}


@dataclass(frozen=True, kw_only=True)
class HeldOutCheck:
    """One candidate, predicted (selection set) vs observed (check set).

    moved: exit id -> observed minus predicted share, in points, where |moved| > 5 points.
    broken: the constraints the candidate met on the selection set and breaks on the check set.
    """

    candidate: int
    predicted: dict[str, Any]
    observed: dict[str, Any]
    moved: dict[str, float] = field(default_factory=dict)
    broken: list[str] = field(default_factory=list)


def broken_constraints(observed: dict[str, Any], constraints: Constraints,
                       bounds: Bounds) -> list[str]:
    """Constraints an observed score breaks (drop and mIoU as given, latency/GFLOPs resolved)."""
    out = []
    if constraints.max_drop_pp is not None and observed["drop_pp"] > constraints.max_drop_pp + 1e-9:
        out.append(f"drop {observed['drop_pp']:.2f} pp > {constraints.max_drop_pp:g} pp")
    if constraints.min_miou is not None and observed["miou"] < constraints.min_miou - 1e-12:
        out.append(f"mIoU {100 * observed['miou']:.2f}% < {100 * constraints.min_miou:.2f}%")
    if bounds.max_latency_ms is not None and observed["latency_ms"] > bounds.max_latency_ms + 1e-9:
        out.append(f"latency {observed['latency_ms']:.3f} ms > {bounds.max_latency_ms:.3f} ms")
    if bounds.max_gflops is not None and observed["gflops"] > bounds.max_gflops + 1e-9:
        out.append(f"GFLOPs {observed['gflops']:.3f} > {bounds.max_gflops:.3f}")
    return out


def check_compatible(selection: AccuracyData, check: AccuracyData, *, what: str) -> None:
    """Refuse a check set whose profile cannot be compared with the selection set's.

    The same input size is read from the pixels per image at every early exit (each exit's
    histogram counts its native-resolution pixels, fixed by the input size), so a profile at
    another input size is refused even though the store keeps the size only in the hash.

    Raises:
        DseError: other exits, classes, histogram edges or input size.
    """
    if check.exit_ids != selection.exit_ids or check.num_classes != selection.num_classes:
        raise DseError(f"{what} was profiled with other exits or classes than the selection "
                       "set; profile both with the same checkpoint")
    if not np.array_equal(check.edges, selection.edges):
        raise DseError(f"{what} uses other confidence-histogram edges; re-profile it")
    if selection.exit_ids:
        ours = selection.hist[:, 0].sum(axis=1)
        theirs = check.hist[:, 0].sum(axis=1)
        if not np.array_equal(ours, theirs):
            e = int(np.flatnonzero(ours != theirs)[0])
            raise DseError(
                f"{what} was profiled at another input size ({int(theirs[e])} pixels per image "
                f"at exit {selection.exit_ids[e]!r} against {int(ours[e])}); profile it at the "
                "search's input size (dse profile --input-size HxW --split ...)")


def check_on(selection: Evaluator, check: Evaluator, candidates: Sequence[tuple[int, Evaluation]],
             constraints: Constraints, bounds: Bounds) -> tuple[Evaluation, list[HeldOutCheck]]:
    """Score each (index, predicted evaluation) on the check set; returns its baseline too."""
    base_sel, base_chk = selection.baseline(), check.baseline()
    out = []
    for index, predicted in candidates:
        observed_eval = check.evaluate(predicted.config)
        before, after = scores(predicted, base_sel), scores(observed_eval, base_chk)
        moved = {e: 100.0 * (after["exit_rates"][e] - before["exit_rates"][e])
                 for e in before["exit_rates"]}
        moved = {e: v for e, v in moved.items() if abs(v) > MOVED_PP}
        broken = [b for b in broken_constraints(after, constraints, bounds)
                  if b.split(" ")[0] not in {x.split(" ")[0] for x in
                                             broken_constraints(before, constraints, bounds)}]
        out.append(HeldOutCheck(candidate=index, predicted=before, observed=after, moved=moved,
                                broken=broken))
    return base_chk, out
