"""Calibration selections: which images of a dataset a profile or a check runs on.

A selection is a split name with optional selectors, and unions of those::

    val                      the whole split
    val[0:50]  val[50:]      a contiguous slice by image position
    val[::2]   val[1::2]     strided: every other image (samples across the whole split)
    val[random=50,seed=3]    50 images drawn at random (seeded, stable)
    train[0001TP_*]          images whose sample id matches a glob (a folder, a drive, a city)
    train[0006R0_*][::4]     selectors chain left to right
    val[::2]+train[::10]     a union of parts, in that order

Why more than slices: CamVid's val split is one drive in frame order, so ``val[0:50]`` and
``val[50:]`` are different stretches of road; a search selected on one half meets other scenes on
the other. A strided or random selection samples the whole split, so its two halves are close to
i.i.d. and what is predicted on one holds (up to sampling noise) on the other.

Every image keeps the sample id it has in its split, and the selection text is part of the
content hash, so each selection is its own calibration set. A selection that selects nothing or
names an image twice is refused. This module is pure Python (no torch), so it can parse and
validate before anything heavy is loaded.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from training.errors import TrainingError

MAX_SELECTION_CHARS = 100  # the store's calibration-set and verification split columns
_PART = re.compile(r"^(?P<base>[^\[\]+]+)(?P<ops>(\[[^\[\]]*\])*)$")
_OP = re.compile(r"\[([^\[\]]*)\]")
_SLICE = re.compile(r"^(?P<start>\d*):(?P<stop>\d*)(:(?P<step>\d*))?$")
_RANDOM = re.compile(r"^random=(?P<n>\d+)(,seed=(?P<seed>\d+))?$")

_HELP = (
    "use NAME, NAME[START:STOP:STEP], NAME[random=N,seed=S], NAME[GLOB] or PART+PART "
    "(e.g. val[::2], val[random=50,seed=0], train[0001TP_*]+val)"
)


@dataclass(frozen=True)
class Slice:
    """Python slice by position (non-negative bounds, positive step)."""

    start: int | None = None
    stop: int | None = None
    step: int | None = None

    def __post_init__(self) -> None:
        if self.step is not None and self.step < 1:
            raise ValueError("step must be positive")

    def apply(self, ids: Sequence[str], text: str) -> list[int]:
        n = len(ids)
        first = self.start or 0
        if first >= n or (self.stop is not None and self.stop > n):
            asked = f"images {first}..{self.stop - 1}" if self.stop else f"images from {first}"
            raise TrainingError(
                f"split {text!r} asks for {asked} but the split has {n}; "
                f"use bounds within 0:{n}"
            )
        return list(range(n))[self.start : self.stop : self.step]


@dataclass(frozen=True)
class RandomSubset:
    """``n`` images chosen by a seeded hash of their sample ids, kept in data order.

    Ranking by sha256(seed, sample id) makes the draw independent of Python's and numpy's RNG
    versions and of the order of the images: the same ids and seed always give the same subset.
    """

    n: int
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError("random subset size must be positive")

    def apply(self, ids: Sequence[str], text: str) -> list[int]:
        if self.n > len(ids):
            raise TrainingError(
                f"split {text!r} asks for {self.n} random images of {len(ids)}; use at most "
                f"random={len(ids)}"
            )

        def rank(index: int) -> bytes:
            return hashlib.sha256(f"{self.seed}\0{ids[index]}".encode()).digest()

        return sorted(sorted(range(len(ids)), key=rank)[: self.n])


@dataclass(frozen=True)
class IdGlob:
    """Images whose sample id matches a glob of ``*`` and ``?`` (``0001TP_*``, ``frankfurt/*``)."""

    pattern: str

    def apply(self, ids: Sequence[str], text: str) -> list[int]:
        return [i for i, sample_id in enumerate(ids) if fnmatch.fnmatchcase(sample_id, self.pattern)]


Selector = Slice | RandomSubset | IdGlob


@dataclass(frozen=True)
class SelectionPart:
    """One split and the selectors applied to it, left to right."""

    split: str
    selectors: tuple[Selector, ...] = ()


@dataclass(frozen=True)
class Selection:
    """A parsed selection: the text (the calibration set's split name) and its parts."""

    text: str
    parts: tuple[SelectionPart, ...]

    @property
    def is_plain(self) -> bool:
        """True for a bare split name (no selector, no union)."""
        return len(self.parts) == 1 and not self.parts[0].selectors

    def synthetic_size(self, split: str) -> int:
        """How many images the built-in dataset generates for a split of this selection.

        The built-in data has no fixed length: a split is generated up to the largest stop of the
        slices that open its parts (``val[4:6]`` -> 6), or 64 images when a part has none.
        """
        sizes = []
        for part in self.parts:
            if part.split == split:
                first = part.selectors[0] if part.selectors else None
                stop = first.stop if isinstance(first, Slice) else None
                sizes.append(64 if stop is None else stop)
        return max(sizes, default=64)

    def resolve(self, ids_of: Callable[[str], Sequence[str]]) -> list[tuple[str, int]]:
        """(split, index in that split) of every selected image, in selection order.

        Args:
            ids_of: sample ids of a whole split, by split name.

        Raises:
            TrainingError: a part selects nothing, a bound lies outside its split, or an image is
                selected twice (by id: the same image in two splits, or overlapping parts).
        """
        chosen: list[tuple[str, int]] = []
        seen: dict[str, str] = {}
        for part in self.parts:
            ids = list(ids_of(part.split))
            index = list(range(len(ids)))
            for selector in part.selectors:
                index = [index[i] for i in selector.apply([ids[i] for i in index], self.text)]
            if not index:
                raise TrainingError(
                    f"split {self.text!r}: part {_part_text(part)!r} selects no images of the "
                    f"{len(ids)} in '{part.split}'; check the bounds or the pattern"
                )
            for i in index:
                if ids[i] in seen:
                    raise TrainingError(
                        f"split {self.text!r} selects image {ids[i]!r} twice (in "
                        f"{seen[ids[i]]!r} and {_part_text(part)!r}); make the parts disjoint"
                    )
                seen[ids[i]] = _part_text(part)
                chosen.append((part.split, i))
        return chosen


def _part_text(part: SelectionPart) -> str:
    return part.split + "".join(f"[{_selector_text(s)}]" for s in part.selectors)


def _selector_text(selector: Selector) -> str:
    if isinstance(selector, Slice):
        bounds = ["" if v is None else str(v) for v in (selector.start, selector.stop)]
        step = "" if selector.step is None else f":{selector.step}"
        return ":".join(bounds) + step
    if isinstance(selector, RandomSubset):
        return f"random={selector.n},seed={selector.seed}"
    return selector.pattern


def _parse_selector(body: str, text: str) -> Selector:
    body = body.strip()
    sliced = _SLICE.match(body)
    if sliced is not None:
        start, stop, step = (int(v) if v else None for v in sliced.group("start", "stop", "step"))
        if start is not None and stop is not None and stop <= start:
            raise TrainingError(f"split {text!r} selects no images: stop must be above start")
        if step == 0:
            raise TrainingError(f"split {text!r} has step 0; use a positive step such as ::2")
        return Slice(start, stop, step)
    drawn = _RANDOM.match(body.replace(" ", ""))
    if drawn is not None:
        n = int(drawn["n"])
        if n == 0:
            raise TrainingError(f"split {text!r} selects no images: use random=N with N >= 1")
        return RandomSubset(n, int(drawn["seed"] or 0))
    if not body or ":" in body or "=" in body or body.startswith("-"):
        raise TrainingError(f"split {text!r} has selector [{body}] I cannot read; {_HELP}")
    return IdGlob(body)


def parse_selection(text: str) -> Selection:
    """Parse a selection such as ``val[::2]`` or ``train[0001TP_*]+val[random=20,seed=1]``.

    Raises:
        TrainingError: text that is not a selection (names the accepted forms).
    """
    cleaned = text.strip()
    if not cleaned:
        raise TrainingError(f"split is empty; {_HELP}")
    if len(cleaned) > MAX_SELECTION_CHARS:
        raise TrainingError(
            f"split {cleaned[:40]!r}... is {len(cleaned)} characters; the store keeps at most "
            f"{MAX_SELECTION_CHARS}: use fewer parts (a glob or a stride instead of many slices)"
        )
    parts = []
    for chunk in cleaned.split("+"):
        match = _PART.match(chunk.strip())
        if match is None or not match["base"].strip():
            raise TrainingError(f"split {text!r} is not a selection; {_HELP}")
        selectors = tuple(_parse_selector(b, cleaned) for b in _OP.findall(match["ops"]))
        parts.append(SelectionPart(match["base"].strip(), selectors))
    return Selection(cleaned, tuple(parts))
