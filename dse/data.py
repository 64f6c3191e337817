"""What the search reads from the store, as plain numpy: accuracy counts and component costs.

The search never runs the network. `AccuracyData` holds, per candidate exit and calibration image,
the per-class TP/FP/FN counts and the confidence histogram (device-independent); `CostData` holds
the mean latency and GFLOPs of every component on one device. Both are built from store records
by `accuracy_from_records` / `cost_from_records`, or directly in tests.

Latency follows what the deployed cascade pays per image: the backbone segments up to the exit it
leaves at, the head and decision of every kept exit it reaches, and the bilinear upsampling of the
answering exit's logits to the input size (one upsampling per image, never one per exit reached).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from db.records import FINAL_EXIT
from dse.errors import DseError

TAIL_SEGMENT = "tail"


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)


@dataclass(frozen=True, kw_only=True, eq=False)
class AccuracyData:
    """Accuracy profile of every candidate exit over the calibration images.

    Early exits are ordered by (position index, exit id); the final exit is stored apart.

    Attributes:
        exit_ids: early candidate exit ids, E of them, ordered by position.
        position_index: backbone position index of each early exit (0-based).
        num_positions: P, the number of candidate positions; the final exit sits after them.
        edges: float64 [B + 1] confidence-bin edges, 0.0 first and 1.0 last.
        tp, fp, fn: int64 [E + 1, S, C]; index E is the final exit.
        hist: int64 [E, S, B] confidence histograms of the early exits.
    """

    exit_ids: tuple[str, ...]
    position_index: tuple[int, ...]
    num_positions: int
    edges: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    hist: np.ndarray

    def __post_init__(self) -> None:
        ids = tuple(self.exit_ids)
        pos = tuple(int(p) for p in self.position_index)
        _set(self, "exit_ids", ids)
        _set(self, "position_index", pos)
        if len(set(ids)) != len(ids) or FINAL_EXIT in ids:
            raise ValueError("exit_ids must be unique early exit ids (without 'final')")
        if len(pos) != len(ids):
            raise ValueError(f"position_index has {len(pos)} entries, expected {len(ids)}")
        if any(p < 0 or p >= self.num_positions for p in pos):
            raise ValueError(f"position_index must lie in [0, num_positions={self.num_positions})")
        if list(pos) != sorted(pos):
            raise ValueError("position_index must be non-decreasing (exits ordered by position)")
        edges = np.asarray(self.edges, dtype=np.float64)
        if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
            raise ValueError("edges must be a strictly increasing 1-D array of >= 2 values")
        _set(self, "edges", edges)
        e, b = len(ids), edges.size - 1
        for name in ("tp", "fp", "fn", "hist"):
            arr = np.asarray(getattr(self, name))
            if arr.ndim != 3 or not np.issubdtype(arr.dtype, np.integer) or (arr < 0).any():
                raise ValueError(f"{name} must be a 3-D array of non-negative integers")
            _set(self, name, arr.astype(np.int64, copy=False))
        if self.tp.shape != self.fp.shape or self.tp.shape != self.fn.shape:
            raise ValueError("tp, fp and fn must share a shape [E + 1, S, C]")
        if self.tp.shape[0] != e + 1:
            raise ValueError(f"tp has {self.tp.shape[0]} exits, expected {e + 1} (final last)")
        if self.hist.shape != (e, self.tp.shape[1], b):
            raise ValueError(f"hist must have shape {(e, self.tp.shape[1], b)}")
        if e and (self.hist.sum(axis=2) <= 0).any():
            raise ValueError("hist: every image must have pixels at every exit")

    @property
    def num_samples(self) -> int:
        return int(self.tp.shape[1])

    @property
    def num_classes(self) -> int:
        return int(self.tp.shape[2])

    def edge_index(self, th_pix: float) -> int:
        """Index of the bin edge equal to th_pix; only edges below 1.0 give an exact c_img."""
        matches = np.flatnonzero(np.isclose(self.edges[:-1], th_pix, rtol=0.0, atol=1e-9))
        if matches.size != 1:
            near = self.edges[:-1][np.argsort(np.abs(self.edges[:-1] - th_pix))[:3]]
            raise DseError(
                f"th_pix {th_pix:g} is not a confidence-histogram edge below 1.0; "
                f"nearest edges: {', '.join(f'{v:g}' for v in sorted(near))}"
            )
        return int(matches[0])

    def image_confidence(self, exit_index: int, edge_index: int) -> np.ndarray:
        """c_img[s]: share of pixels of each image at an early exit with confidence >= edge."""
        hist = self.hist[exit_index]
        return hist[:, edge_index:].sum(axis=1) / hist.sum(axis=1)


@dataclass(frozen=True, kw_only=True)
class CostData:
    """Mean latency (ms, on one device) and GFLOPs of every network component.

    Attributes:
        segment_ms / segment_gflops: P + 1 values; segment i < P ends at position i, P is "tail".
        head_ms / head_gflops / decision_ms / decision_gflops: per early exit id.
        upsample_ms / upsample_gflops: per early exit id, its logits to the input size (paid only
            by the images that leave there).
        final_ms / final_gflops: the final head.
        final_upsample_ms / final_upsample_gflops: the final head's logits to the input size.
    """

    segment_ms: tuple[float, ...]
    segment_gflops: tuple[float, ...]
    head_ms: Mapping[str, float]
    head_gflops: Mapping[str, float]
    decision_ms: Mapping[str, float]
    decision_gflops: Mapping[str, float]
    final_ms: float
    final_gflops: float
    upsample_ms: Mapping[str, float]
    upsample_gflops: Mapping[str, float]
    final_upsample_ms: float
    final_upsample_gflops: float

    def __post_init__(self) -> None:
        for name in ("segment_ms", "segment_gflops"):
            values = tuple(float(v) for v in getattr(self, name))
            _check_costs(values, name)
            _set(self, name, values)
        if len(self.segment_ms) != len(self.segment_gflops) or not self.segment_ms:
            raise ValueError("segment_ms and segment_gflops must have the same, non-zero length")
        for name in ("head_ms", "head_gflops", "decision_ms", "decision_gflops", "upsample_ms",
                     "upsample_gflops"):
            mapping = {str(k): float(v) for k, v in getattr(self, name).items()}
            _check_costs(tuple(mapping.values()), name)
            _set(self, name, MappingProxyType(mapping))
        _check_costs((self.final_ms, self.final_gflops), "final_ms/final_gflops")
        _check_costs((self.final_upsample_ms, self.final_upsample_gflops),
                     "final_upsample_ms/final_upsample_gflops")

    @property
    def num_positions(self) -> int:
        return len(self.segment_ms) - 1

    def missing(self, exit_ids: Sequence[str]) -> list[str]:
        """Exit ids without a head, decision or upsampling timing."""
        maps = (self.head_ms, self.decision_ms, self.upsample_ms)
        return [e for e in exit_ids if any(e not in m for m in maps)]


def _check_costs(values: Sequence[float], name: str) -> None:
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError(f"{name} must be finite and >= 0")


def accuracy_from_records(arrays, exits, position_names: Sequence[str]) -> AccuracyData:  # type: ignore[no-untyped-def]
    """Build `AccuracyData` from `db` records: `AccuracyArrays`, the model's `ExitRecord`s and
    the backbone's position names in order (the model's architecture "positions").

    Raises:
        DseError: when the profile lacks the final exit or an exit has no stored position.
    """
    ids = list(arrays.exit_ids)
    if FINAL_EXIT not in ids:
        raise DseError(f"accuracy profile {arrays.profile_id} has no '{FINAL_EXIT}' exit; "
                       "re-run `dse profile --accuracy`")
    position_of = {r.exit_id: int(r.position_index) for r in exits if r.exit_id != FINAL_EXIT}
    early = [e for e in ids if e != FINAL_EXIT]
    unknown = [e for e in early if e not in position_of]
    if unknown:
        raise DseError(f"exits {unknown[:3]} of the accuracy profile are not stored for the model")
    order = sorted(early, key=lambda e: (position_of[e], e))
    rows = [ids.index(e) for e in order] + [ids.index(FINAL_EXIT)]
    return AccuracyData(
        exit_ids=tuple(order),
        position_index=tuple(position_of[e] for e in order),
        num_positions=len(position_names),
        edges=np.asarray(arrays.edges, dtype=np.float64),
        tp=np.asarray(arrays.tp)[rows],
        fp=np.asarray(arrays.fp)[rows],
        fn=np.asarray(arrays.fn)[rows],
        hist=np.asarray(arrays.hist)[rows[:-1]],
    )


def cost_from_records(latency, position_names: Sequence[str]) -> CostData:  # type: ignore[no-untyped-def]
    """Build `CostData` from the `LatencyRecord`s of one (model, device, input shape), each
    component at its `estimate_ms` (the median of its samples).

    Raises:
        DseError: naming what is missing, and the `dse profile` run that measures it.
    """
    names = [*position_names, TAIL_SEGMENT]
    seg: dict[str, tuple[float, float]] = {}
    head_ms: dict[str, float] = {}
    head_gf: dict[str, float] = {}
    dec_ms: dict[str, float] = {}
    dec_gf: dict[str, float] = {}
    up_ms: dict[str, float] = {}
    up_gf: dict[str, float] = {}
    final: tuple[float, float] | None = None
    final_up: tuple[float, float] | None = None
    for row in latency:
        if row.kind == "segment":
            seg[row.name] = (float(row.estimate_ms), float(row.gflops))
        elif row.kind == "head":
            head_ms[row.name], head_gf[row.name] = float(row.estimate_ms), float(row.gflops)
        elif row.kind == "decision":
            dec_ms[row.name], dec_gf[row.name] = float(row.estimate_ms), float(row.gflops)
        elif row.kind == "final":
            final = (float(row.estimate_ms), float(row.gflops))
        elif row.kind == "upsample" and row.name == FINAL_EXIT:
            final_up = (float(row.estimate_ms), float(row.gflops))
        elif row.kind == "upsample":
            up_ms[row.name], up_gf[row.name] = float(row.estimate_ms), float(row.gflops)
        # kind "path" rows are closed-loop checks, not components
    missing = [n for n in names if n not in seg] + ([] if final is not None else ["final head"])
    missing += [] if final_up is not None else ["the final upsampling"]
    if missing:
        raise DseError(f"latency profile incomplete (no timing of {', '.join(missing[:3])}); "
                       "re-run `dse profile --latency` for this device")
    assert final is not None and final_up is not None
    return CostData(
        segment_ms=tuple(seg[n][0] for n in names),
        segment_gflops=tuple(seg[n][1] for n in names),
        head_ms=head_ms, head_gflops=head_gf, decision_ms=dec_ms, decision_gflops=dec_gf,
        final_ms=final[0], final_gflops=final[1], upsample_ms=up_ms, upsample_gflops=up_gf,
        final_upsample_ms=final_up[0], final_upsample_gflops=final_up[1],
    )
