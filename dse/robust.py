"""Robust selection: a constraint counts as met only where it holds at the bootstrap bound.

`--confidence P` asks that the drop versus the baseline, the latency budget and the minimum mIoU
hold with probability P over draws of calibration images like these: the P quantile of the
bootstrap drop (paired with the baseline) and of the mean latency, and the 1 - P quantile of the
mIoU, must meet them. `--target` then picks among the candidates that pass, in its own order
(speed: fastest first; accuracy: most accurate first), bootstrapping candidates lazily in that
order, so only the ones it has to look at cost anything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dse.constraints import Bounds, Constraints
from dse.evaluate import Evaluation
from dse.uncertainty import Intervals

_SLACK = 1e-9  # a bound equal to the limit meets it (floating-point noise aside)
_BATCH = 16  # candidates bootstrapped at a time while looking for the robust pick


def robust_failures(iv: Intervals, constraints: Constraints, bounds: Bounds) -> list[str]:
    """Constraints this candidate's one-sided bounds break ([] = robustly feasible).

    `bounds` are the resolved point bounds; its latency limit also carries `--target
    accuracy`'s "no slower than the baseline". The drop is checked against `max_drop_pp` on the
    paired bootstrap drop, the minimum mIoU against `min_miou` as the user gave it.
    """
    assert iv.bounds is not None, "intervals need a confidence for robust checks"
    b, failures = iv.bounds, []
    if constraints.max_drop_pp is not None and b["drop_pp_high"] > constraints.max_drop_pp + _SLACK:
        failures.append(f"drop {b['drop_pp_high']:.2f} pp > {constraints.max_drop_pp:g} pp")
    if constraints.min_miou is not None and b["miou_low"] < constraints.min_miou - _SLACK:
        failures.append(f"mIoU {100 * b['miou_low']:.2f}% < {100 * constraints.min_miou:.2f}%")
    if bounds.max_latency_ms is not None and b["latency_ms_high"] > bounds.max_latency_ms + _SLACK:
        failures.append(f"latency {b['latency_ms_high']:.3f} ms > {bounds.max_latency_ms:.3f} ms")
    if bounds.max_gflops is not None and b["gflops_high"] > bounds.max_gflops + _SLACK:
        failures.append(f"GFLOPs {b['gflops_high']:.3f} > {bounds.max_gflops:.3f}")
    return failures


def preference_order(target: str, evaluations: Sequence[Evaluation]) -> list[int]:
    """Candidate indices in the order `--target` prefers them (the plain pick comes first)."""
    if target == "accuracy":
        return sorted(range(len(evaluations)),
                      key=lambda i: (-evaluations[i].miou, evaluations[i].latency_ms, i))
    return sorted(range(len(evaluations)),
                  key=lambda i: (evaluations[i].latency_ms, -evaluations[i].miou, i))


@dataclass(frozen=True, kw_only=True)
class RobustPick:
    """The robust choice of a target: the first candidate in its order whose bounds pass.

    chosen: index, or None when no stored candidate passes; examined: how many it bootstrapped;
    failures: why the candidates it passed over failed (index -> constraints broken).
    """

    chosen: int | None
    examined: int
    failures: dict[int, list[str]]


def robust_pick(target: str, evaluations: Sequence[Evaluation], constraints: Constraints,
                bounds: Bounds, intervals: dict[int, Intervals],
                compute: Callable[[list[int]], dict[int, Intervals]]) -> RobustPick:
    """Walk the target's order, bootstrapping (`compute`) candidates not in `intervals` yet.

    `intervals` is filled in place with everything computed, so the caller can store it.
    """
    order = preference_order(target, evaluations)
    failures: dict[int, list[str]] = {}
    for start in range(0, len(order), _BATCH):
        batch = order[start: start + _BATCH]
        missing = [i for i in batch if i not in intervals]
        if missing:
            intervals.update(compute(missing))
        for i in batch:
            broken = robust_failures(intervals[i], constraints, bounds)
            if not broken:
                return RobustPick(chosen=i, examined=start + batch.index(i) + 1,
                                  failures=failures)
            failures[i] = broken
    return RobustPick(chosen=None, examined=len(order), failures=failures)
