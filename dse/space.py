"""The configuration space: which early exits, which thresholds, which deployment mode.

A `Configuration` is one point (early exits ordered by position, one th_pix per exit, one th_img,
a mode); a `SearchSpace` is the set the engines explore, restricted by the user's options.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dse.data import FINAL_EXIT, AccuracyData
from dse.errors import DseError

MODES = ("cascade", "budgeted", "anytime")
DEFAULT_TH_PIX = (0.5, 0.7, 0.8, 0.9)
DEFAULT_TH_IMG = (0.5, 0.6, 0.7, 0.8, 0.9)


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)


def _check_unit(values: Sequence[float], name: str) -> None:
    if any(not math.isfinite(v) or v < 0.0 or v > 1.0 for v in values):
        raise ValueError(f"{name} must lie in [0, 1], got {list(values)}")


@dataclass(frozen=True, kw_only=True)
class Configuration:
    """One deployable configuration.

    cascade: images leave at the first early exit whose c_img >= th_img, else at the final exit.
    budgeted: exactly one exit (an early one, or "final"), no decision, no thresholds.
    anytime: every kept exit answers in turn; thresholds unused.
    """

    exits: tuple[str, ...]
    th_pix: tuple[float, ...] = ()
    th_img: float = 0.0
    mode: str = "cascade"

    def __post_init__(self) -> None:
        _set(self, "exits", tuple(self.exits))
        _set(self, "th_pix", tuple(float(t) for t in self.th_pix))
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if len(set(self.exits)) != len(self.exits):
            raise ValueError(f"exits must be distinct, got {self.exits}")
        _check_unit(self.th_pix, "th_pix")
        _check_unit((self.th_img,), "th_img")
        if self.mode == "budgeted":
            if len(self.exits) != 1:
                raise ValueError("exits: a budgeted configuration has exactly one exit")
            if self.th_pix:
                raise ValueError("th_pix: a budgeted configuration has no thresholds")
        elif FINAL_EXIT in self.exits:
            raise ValueError("exits: list early exits only; the final exit is implicit")
        elif self.mode == "cascade" and len(self.th_pix) != len(self.exits):
            raise ValueError(f"th_pix needs one value per early exit ({len(self.exits)})")

    @property
    def all_exits(self) -> tuple[str, ...]:
        """Exit ids as stored: early exits then "final" (budgeted: its single exit)."""
        return self.exits if self.mode == "budgeted" else (*self.exits, FINAL_EXIT)


@dataclass(frozen=True, kw_only=True)
class SearchSpace:
    """What the engines may choose from.

    Attributes:
        exit_ids: allowed early exits, ordered by position (a subset of the profile's).
        max_exits: most early exits per configuration (0 = final exit only).
        th_pix: allowed pixel thresholds; each is a histogram edge below 1.0.
        th_img: allowed image thresholds (grid for exhaustive search).
        mode: cascade | budgeted | anytime.
        per_exit_thresholds: one th_pix per exit (Optuna) instead of one shared value.
    """

    exit_ids: tuple[str, ...]
    max_exits: int
    th_pix: tuple[float, ...]
    th_img: tuple[float, ...]
    mode: str = "cascade"
    per_exit_thresholds: bool = False

    def __post_init__(self) -> None:
        for name in ("exit_ids", "th_pix", "th_img"):
            _set(self, name, tuple(getattr(self, name)))
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.max_exits < 0:
            raise ValueError(f"max_exits must be >= 0, got {self.max_exits}")
        if not self.th_pix or not self.th_img:
            raise ValueError("th_pix and th_img need at least one value each")
        _check_unit(self.th_pix, "th_pix")
        _check_unit(self.th_img, "th_img")

    def to_dict(self) -> dict[str, object]:
        """JSON form stored with a search run."""
        return {
            "exit_ids": list(self.exit_ids), "max_exits": self.max_exits,
            "th_pix": list(self.th_pix), "th_img": list(self.th_img), "mode": self.mode,
            "per_exit_thresholds": self.per_exit_thresholds,
        }


def build_space(
    data: AccuracyData,
    *,
    max_exits: int = 3,
    positions: Sequence[str] | None = None,
    heads: Sequence[str] | None = None,
    th_pix: Sequence[float] | None = None,
    th_img: Sequence[float] | None = None,
    mode: str = "cascade",
    per_exit_thresholds: bool = False,
) -> SearchSpace:
    """Restrict the profile's exits and thresholds to what the user asked for.

    Args:
        positions / heads: keep exits whose position name (the part before "/") or head id (the
            part after) is listed; None keeps all.
        th_pix: pixel thresholds; each must be a histogram edge below 1.0.

    Raises:
        DseError: unknown positions/heads, thresholds off the edges, max_exits above the number
            of positions left.
    """
    if mode not in MODES:
        raise DseError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    keep = list(data.exit_ids)
    for wanted, part, what in ((positions, 0, "position"), (heads, 1, "head")):
        if wanted is None:
            continue
        known = {e.split("/", 1)[part] for e in data.exit_ids}
        unknown = [w for w in wanted if w not in known]
        if unknown:
            raise DseError(f"unknown {what} {unknown[0]!r}; the profile has: "
                           f"{', '.join(sorted(known)[:12])}")
        keep = [e for e in keep if e.split("/", 1)[part] in set(wanted)]
    if max_exits < 0:
        raise DseError(f"--max-exits must be >= 0, got {max_exits}")
    n_positions = len({data.position_index[data.exit_ids.index(e)] for e in keep})
    if mode != "budgeted" and max_exits > n_positions:
        raise DseError(f"--max-exits {max_exits} is above the {n_positions} candidate positions "
                       "(at most one exit per position); lower it or allow more positions")
    pix = tuple(DEFAULT_TH_PIX if th_pix is None else th_pix)
    img = tuple(DEFAULT_TH_IMG if th_img is None else th_img)
    try:
        _check_unit(pix, "--th-pix")
        _check_unit(img, "--th-img")
    except ValueError as exc:
        raise DseError(str(exc)) from exc
    pix = tuple(float(data.edges[data.edge_index(t)]) for t in pix)
    return SearchSpace(exit_ids=tuple(keep), max_exits=max_exits, th_pix=tuple(sorted(set(pix))),
                       th_img=tuple(sorted(set(img))), mode=mode,
                       per_exit_thresholds=per_exit_thresholds)


def count_exit_sets(data: AccuracyData, space: SearchSpace) -> int:
    """Number of early-exit sets (ordered by position, one exit per position) up to max_exits."""
    per_position: dict[int, int] = {}
    for e in space.exit_ids:
        p = data.position_index[data.exit_ids.index(e)]
        per_position[p] = per_position.get(p, 0) + 1
    # elementary symmetric polynomials of the per-position head counts
    poly = np.zeros(space.max_exits + 1, dtype=object)
    poly[0] = 1
    for h in per_position.values():
        poly[1:] = poly[1:] + poly[:-1] * h
    return int(sum(poly))


def count_configurations(data: AccuracyData, space: SearchSpace) -> int:
    """Configurations the exhaustive engine evaluates (the final-only baseline counted once)."""
    if space.mode == "budgeted":
        return len(space.exit_ids) + 1
    sets = count_exit_sets(data, space)
    if space.mode == "anytime":
        return sets
    return 1 + (sets - 1) * len(space.th_pix) * len(space.th_img)
