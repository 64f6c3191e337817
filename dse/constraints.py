"""User constraints, the paper's targets as presets, and explaining an empty feasible set.

The baseline is the final exit alone. `--target accuracy` keeps configurations that cost no more
than the baseline and picks the most accurate; `--target speed` keeps those within
`--max-drop-pp` (0.1 by default) of the baseline's mIoU and picks the fastest.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dse.errors import DseError
from dse.evaluate import Evaluation

TARGETS = ("accuracy", "speed")
SPEED_DEFAULT_DROP_PP = 0.1


@dataclass(frozen=True, kw_only=True)
class Bounds:
    """Resolved constraints on the objectives (None: unconstrained)."""

    min_miou: float | None = None
    max_latency_ms: float | None = None
    max_gflops: float | None = None

    def names(self) -> list[str]:
        return [n for n in ("min_miou", "max_latency_ms", "max_gflops") if getattr(self, n) is not None]


class NoFeasibleError(DseError):
    """Every configuration of the space violates the constraints."""


@dataclass(frozen=True, kw_only=True)
class Constraints:
    """What the user asked for; `resolve` turns it into bounds once the baseline is known."""

    max_latency_ms: float | None = None
    max_drop_pp: float | None = None
    min_miou: float | None = None
    max_gflops: float | None = None
    target: str | None = None

    def __post_init__(self) -> None:
        for name in ("max_latency_ms", "max_gflops"):
            v = getattr(self, name)
            if v is not None and (not math.isfinite(v) or v <= 0):
                raise ValueError(f"{name} must be a positive number, got {v}")
        if self.max_drop_pp is not None and (not math.isfinite(self.max_drop_pp)
                                             or not 0 <= self.max_drop_pp <= 100):
            raise ValueError(f"max_drop_pp must lie in [0, 100] percentage points, "
                             f"got {self.max_drop_pp}")
        if self.min_miou is not None and (not math.isfinite(self.min_miou)
                                          or not 0 <= self.min_miou <= 1):
            raise ValueError(f"min_miou must lie in [0, 1] (mIoU is a fraction), got {self.min_miou}")
        if self.target is not None and self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.target == "speed" and self.max_drop_pp is None:
            object.__setattr__(self, "max_drop_pp", SPEED_DEFAULT_DROP_PP)

    def resolve(self, baseline: Evaluation) -> Bounds:
        """Bounds on mIoU, mean latency and GFLOPs for this baseline."""
        floors = [v for v in (self.min_miou,) if v is not None]
        if self.max_drop_pp is not None:
            floors.append(baseline.miou - self.max_drop_pp / 100.0)
        max_ms = self.max_latency_ms
        if self.target == "accuracy":  # cost <= baseline cost
            max_ms = baseline.latency_ms if max_ms is None else min(max_ms, baseline.latency_ms)
        return Bounds(min_miou=max(floors) if floors else None, max_latency_ms=max_ms,
                      max_gflops=self.max_gflops)

    def to_dict(self) -> dict[str, float | str | None]:
        return {"max_latency_ms": self.max_latency_ms, "max_drop_pp": self.max_drop_pp,
                "min_miou": self.min_miou, "max_gflops": self.max_gflops, "target": self.target}


_GIVEN = {"max_latency_ms": "latency <= {:g} ms", "max_drop_pp": "mIoU drop <= {:g} pp",
          "min_miou": "mIoU >= {:.2%}", "max_gflops": "GFLOPs <= {:g}"}


def describe(stored: Mapping[str, Any], *, resolved: bool = False) -> str:
    """A stored run's constraints as a user writes them, without internal keys.

    `mIoU drop <= 1 pp, target speed` (`none` when nothing was asked); with `resolved`, the
    bounds the search used follow: `(bounds used: mIoU >= 73.51%)`.
    """
    parts = [phrase.format(stored[key]) for key, phrase in _GIVEN.items()
             if isinstance(stored.get(key), (int, float)) and not isinstance(stored[key], bool)]
    if isinstance(stored.get("target"), str):
        parts.append(f"target {stored['target']}")
    text = ", ".join(parts) or "none"
    bounds = stored.get("resolved")
    if resolved and isinstance(bounds, Mapping) and bounds:
        used = [_LABELS[k].format(v) for k, v in bounds.items() if k in _LABELS and v is not None]
        if used:
            text += f" (bounds used: {', '.join(used)})"
    return text


def parse_miou(text: str, *, option: str = "--min-miou") -> float:
    """A user's mIoU bound as a fraction: `70`, `70%` and `70.5 %` are percent, `0.7` a fraction.

    Users read mIoU in percent (tables, reports, the paper), the library works in [0, 1]. A
    number above 1 can only be a percentage and one below 1 only a fraction (nobody asks for
    0.7 % mIoU); a bare `1` could be either and is refused with both spellings.
    """
    raw = text.strip()
    percent = raw.endswith("%")
    try:
        value = float(raw.rstrip("%").strip())
    except ValueError as exc:
        raise DseError(f"{option} takes a mIoU such as 70% (or the fraction 0.7), "
                       f"got {text!r}") from exc
    if not math.isfinite(value) or not 0 <= value <= 100:
        raise DseError(f"{option} must lie in [0, 100] %, got {text!r}")
    if percent or value > 1:
        return value / 100.0
    if value == 1:
        raise DseError(f"{option} 1 is ambiguous: write 1% or 100%")
    return value


def pick(target: str | None, evaluations: list[Evaluation], fronts: list[int]) -> int | None:
    """Index of the candidate a target recommends (None without a target)."""
    if target is None or not evaluations:
        return None
    best = [i for i, f in enumerate(fronts) if f == 1]
    if target == "accuracy":
        return max(best, key=lambda i: (evaluations[i].miou, -evaluations[i].latency_ms))
    return min(best, key=lambda i: (evaluations[i].latency_ms, -evaluations[i].miou))


_LABELS = {"min_miou": "mIoU >= {:.2%}", "max_latency_ms": "latency <= {:.3f} ms",
           "max_gflops": "GFLOPs <= {:.3f}"}


def explain_empty(bounds: Bounds, n_evaluated: int, n_satisfying: dict[str, int],
                  closest: Evaluation | None) -> NoFeasibleError:
    """An error that names the constraint that excluded everything and the closest candidate."""
    alone = [n for n in bounds.names() if n_satisfying.get(n, 0) == 0]
    if alone:
        name = alone[0]
        why = f"no configuration meets {_LABELS[name].format(getattr(bounds, name))}"
    else:
        parts = " and ".join(_LABELS[n].format(getattr(bounds, n)) for n in bounds.names())
        why = f"no configuration meets {parts} together"
    near = ""
    if closest is not None:
        near = (f"; closest: {'+'.join(closest.config.exits) or 'final only'} with mIoU "
                f"{closest.miou:.2%}, {closest.latency_ms:.3f} ms, {closest.gflops:.3f} GFLOPs")
    return NoFeasibleError(f"{why} (of {n_evaluated} evaluated){near}; relax that constraint")
