"""Whether a latency profile may be stored: its stability and its closed-loop gaps, in one line.

A profile is refused when, after the protocol's bounded re-measurement, any component is still
unstable (spread beyond the threshold, or timed while other processes needed this process's
cores), or when the real cascade differs from the sum of component estimates by more than 10% on
any checked path (the additive model the search relies on does not hold). The user may keep a
refused profile with an explicit flag; its rows are then stored marked noisy, and the search and
reports say so.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from db.records import CLOSED_LOOP_TOLERANCE
from profiling.errors import ProfilingError
from profiling.protocol import ProtocolResult


class UnstableProfileError(ProfilingError):
    """The measurement could not be trusted and nothing was stored (exit code 3, not 2: the
    command was right, the machine was not quiet enough)."""

    exit_code = 3


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """The decision on one profile run and the figures it rests on (stored with the profile)."""

    ok: bool
    problems: tuple[str, ...]
    quality: dict[str, Any] = field(repr=False)

    def line(self, *, what: str = "latency profile") -> str:
        """One line: what failed, with figures."""
        if self.ok:
            return f"{what} stable: {self.quality['unstable']}/{self.quality['components']} " \
                   f"components unstable, max spread {self.quality['max_rel_spread']:.0%}"
        return f"{what} not trustworthy: " + "; ".join(self.problems)


def judge(result: ProtocolResult[Any] | None, gaps: Mapping[str, float] | None = None, *,
          paths: ProtocolResult[Any] | None = None,
          tolerance: float = CLOSED_LOOP_TOLERANCE) -> Verdict:
    """Judge a profile run.

    Args:
        result: the components' protocol result (None when every component was already stored).
        gaps: closed-loop deviation per path name, (measured - predicted) / measured.
        paths: the protocol result of the closed-loop paths themselves (their stability counts).
        tolerance: the largest allowed |gap|.
    """
    gaps = dict(gaps or {})
    problems: list[str] = []
    quality: dict[str, Any] = (result.summary() if result is not None else
                               {"components": 0, "unstable": 0, "max_rel_spread": 0.0,
                                "median_rel_spread": 0.0, "passes": []})
    for label, res in (("component", result), ("closed-loop path", paths)):
        if res is None or res.stable:
            continue
        bad = res.unstable
        worst = max(bad, key=lambda k: res.quality[k].rel_spread)
        text = (f"{len(bad)} of {len(res.quality)} {label}s unstable after "
                f"{len(res.passes) - 1} re-measurement(s) (worst {_name(worst)}: "
                f"{res.quality[worst].reason})")
        if res.passes and res.passes[-1].contended:
            text += f"; {res.passes[-1].describe()}"
        problems.append(text)
    failing = {p: g for p, g in gaps.items() if abs(g) > tolerance}
    if failing:
        figures = ", ".join(f"{p} {g:+.0%}" for p, g in failing.items())
        problems.append(f"closed-loop gap beyond {tolerance:.0%} (measured vs summed "
                        f"components): {figures}")
    quality["closed_loop"] = [{"path": p, "deviation": g} for p, g in gaps.items()]
    if paths is not None:
        quality["closed_loop_spread"] = paths.summary()["max_rel_spread"]
    return Verdict(ok=not problems, problems=tuple(problems), quality=quality)


def _name(key: Hashable) -> str:
    if isinstance(key, tuple) and len(key) == 2:
        return f"{key[0]}:{key[1]}"
    return str(key)


def row_quality(result: ProtocolResult[Any], key: Hashable) -> dict[str, Any]:
    """The figures stored with one component's row."""
    q = result.quality[key]
    return {"rel_spread": q.rel_spread, "iqr_ms": q.iqr_ms, "cv": q.cv, "outliers": q.outliers,
            "floor_ms": q.floor_ms, "stable": q.stable}
