"""Frozen records that the repository hands out; ORM objects never leave `db/`.

Inputs (`*Input`) are what callers build to write; records (`*Record`) are what reads return.
Records that carry numpy arrays compare by identity (`eq=False`): compare their arrays explicitly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

# The final exit's id in the store (exit rows, candidates, path checks); training.heads.FINAL_EXIT
# is the same name on the network's side (training imports nothing of ours; a test ties them).
FINAL_EXIT = "final"
# Components the search adds up (training.flops.COMPONENT_KINDS on the network's side), plus "path": a closed-loop check, the real cascade timed end to
# end on one forced path (name: the exit every image took, or "final"), stored with the sum of
# component means it was compared with (`predicted_ms`).
COMPONENT_KINDS = ("segment", "head", "decision", "final", "upsample")
LATENCY_KINDS = (*COMPONENT_KINDS, "path")
# A latency row is measured on the device, or predicted (few-shot, profiling.fewshot) from
# other devices' profiles; predicted rows are only read by callers that ask for them.
LATENCY_SOURCES = ("measured", "predicted")


NAME_MAX = 100
NAME_RULE = (
    f"1-{NAME_MAX} characters: letters, digits, spaces and . _ - + : @ ( ) #, starting with a "
    "letter or digit, not ending in a space, not digits only"
)
_NAME_PATTERN = re.compile(rf"\w[\w .+:@()#-]{{0,{NAME_MAX - 1}}}")


def check_name(value: object, *, field: str) -> str:
    """A name a user gives (device, model, study): plain text that prints and queries safely.

    Names end up in terminal tables, HTML, file names and `--model`/`--device` lookups: markup
    characters, control characters or an all-digit name (read as an id) would break one of them.

    Raises:
        ValueError: naming `field` and the rule.
    """
    if not isinstance(value, str) or not _NAME_PATTERN.fullmatch(value) or value.endswith(" ") \
            or value.isdigit():
        raise ValueError(f"{field} must be {NAME_RULE}; got {value!r}")
    return value


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)


def _check_name(value: object, name: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")


def _check_shape(value: Sequence[int], name: str) -> tuple[int, ...]:
    shape = tuple(int(v) for v in value)
    if not shape or any(v <= 0 for v in shape):
        raise ValueError(f"{name} must be a non-empty sequence of positive ints, got {value!r}")
    return shape


def _check_finite(value: float, name: str, *, low: float | None = None,
                  high: float | None = None) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value!r}")


# ----------------------------------------------------------------------------- models, exits


@dataclass(frozen=True, kw_only=True)
class ModelRecord:
    """A trained multi-exit network, identified by the sha256 of its weights."""

    id: int
    name: str
    arch: str
    architecture: dict[str, Any]
    weights_sha256: str
    num_classes: int
    created: datetime


@dataclass(frozen=True, kw_only=True)
class ExitInput:
    """One candidate exit (or "final") of a model, with its cost at `input_shape`."""

    exit_id: str
    position: str
    position_index: int
    head: dict[str, Any]
    params: int
    gflops: float
    input_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_name(self.exit_id, "exit_id")
        _check_name(self.position, "position")
        if self.position_index < 0:
            raise ValueError(f"position_index must be >= 0, got {self.position_index}")
        if self.params < 0:
            raise ValueError(f"params must be >= 0, got {self.params}")
        _check_finite(self.gflops, "gflops", low=0.0)
        _set(self, "input_shape", _check_shape(self.input_shape, "input_shape"))


@dataclass(frozen=True, kw_only=True)
class ExitRecord:
    """A stored exit of a model."""

    id: int
    model_id: int
    exit_id: str
    position: str
    position_index: int
    head: dict[str, Any]
    params: int
    gflops: float
    input_shape: tuple[int, ...]


# ----------------------------------------------------------------------------- calibration


@dataclass(frozen=True, kw_only=True)
class CalibrationSetRecord:
    """The images an accuracy profile was measured on, in order."""

    id: int
    dataset: str
    split: str
    content_hash: str
    sample_ids: tuple[str, ...]

    @property
    def num_samples(self) -> int:
        return len(self.sample_ids)


# ----------------------------------------------------------------------------- accuracy


@dataclass(frozen=True, kw_only=True, eq=False)
class ExitArrays:
    """Per-image counts of one exit over a chunk of n images.

    tp/fp/fn: int64 [n, C] per-class true positives, false positives, false negatives;
    hist: int64 [n, B] pixel counts per confidence bin.
    """

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    hist: np.ndarray

    def __post_init__(self) -> None:
        n = None
        for name in ("tp", "fp", "fn", "hist"):
            arr = np.asarray(getattr(self, name))
            if arr.ndim != 2:
                raise ValueError(f"{name} must be 2-D [n, *], got shape {arr.shape}")
            if not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"{name} must hold integers, got {arr.dtype}")
            if (arr < 0).any():
                raise ValueError(f"{name} must be non-negative")
            if n is not None and arr.shape[0] != n:
                raise ValueError(f"{name} has {arr.shape[0]} rows, expected {n}")
            n = arr.shape[0]
            _set(self, name, arr.astype(np.int64, copy=False))
        if not (self.tp.shape == self.fp.shape == self.fn.shape):
            raise ValueError(
                f"tp, fp, fn must share a shape, got {self.tp.shape}, {self.fp.shape}, {self.fn.shape}"
            )

    @property
    def num_samples(self) -> int:
        return int(self.tp.shape[0])


@dataclass(frozen=True, kw_only=True)
class ExitSummary:
    """Summary columns of one exit over the whole calibration set, for plain SQL queries."""

    miou: float
    pixel_accuracy: float
    mean_confidence: float

    def __post_init__(self) -> None:
        for name in ("miou", "pixel_accuracy", "mean_confidence"):
            _check_finite(getattr(self, name), name, low=0.0, high=1.0)


@dataclass(frozen=True, kw_only=True, eq=False)
class AccuracyProfileRecord:
    """One accuracy profile: a model measured on a calibration set with given settings."""

    id: int
    model_id: int
    calibration_set_id: int
    settings: dict[str, Any]
    edges: np.ndarray
    exit_ids: tuple[str, ...]
    num_classes: int
    num_samples: int
    complete: bool
    created: datetime
    summaries: dict[str, ExitSummary] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True, eq=False)
class AccuracyArrays:
    """A whole accuracy profile, stacked: tp/fp/fn [E, S, C], hist [E, S, B], edges [B + 1]."""

    profile_id: int
    exit_ids: tuple[str, ...]
    sample_ids: tuple[str, ...]
    edges: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    hist: np.ndarray
    num_classes: int
    settings: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- devices, latency


@dataclass(frozen=True, kw_only=True)
class DeviceRecord:
    """A device, identified by name and the sha256 of its canonical fingerprint JSON."""

    id: int
    name: str
    fingerprint: dict[str, Any]
    fingerprint_sha256: str
    created: datetime


@dataclass(frozen=True, kw_only=True, eq=False)
class LatencyRecord:
    """Timing of one component of a model on one device, with the raw samples."""

    id: int
    model_id: int
    device_id: int
    kind: str
    name: str
    input_shape: tuple[int, ...]
    batch: int
    dtype: str
    n: int
    mean_ms: float
    std_ms: float
    min_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    samples_ms: np.ndarray
    gflops: float
    params: int
    created: datetime
    predicted_ms: float | None = None  # kind "path" only: the summed component estimates
    noisy: bool = False  # stored although its profile failed the stability checks
    quality: dict[str, Any] | None = None  # spread figures (profiling.quality); None: older rows
    source: str = "measured"  # or "predicted": `quality` then holds the model and its CV error
    provenance: dict[str, Any] | None = None  # where imported samples came from (probe)

    @property
    def predicted(self) -> bool:
        return self.source == "predicted"

    @property
    def estimate_ms(self) -> float:
        """The number the search adds up: the median of the samples (robust to the one-sided
        noise of a shared machine; see profiling.quality)."""
        return self.p50_ms

    @property
    def deviation(self) -> float | None:
        """Kind "path": (measured - predicted) / measured, on the estimates (medians);
        positive when the sum is low."""
        if self.predicted_ms is None or self.estimate_ms <= 0:
            return None
        return (self.estimate_ms - self.predicted_ms) / self.estimate_ms


# A closed-loop gap beyond this share means the additive latency model is off on the device.
CLOSED_LOOP_TOLERANCE = 0.10


@dataclass(frozen=True, kw_only=True)
class ProfileQualityRecord:
    """How the latest latency-profile run of a (model, device, shape, batch, dtype) went.

    `quality` holds the protocol's settings and figures (`profiling.protocol.ProtocolResult.
    summary()`: spread, unstable count, load of each pass) and the closed-loop gaps
    (`closed_loop`: list of {path, deviation}); `noisy` is True when it was stored anyway.
    """

    id: int
    model_id: int
    device_id: int
    input_shape: tuple[int, ...]
    batch: int
    dtype: str
    noisy: bool
    quality: dict[str, Any]
    created: datetime

    @property
    def worst_gap(self) -> float | None:
        gaps = [abs(float(g["deviation"])) for g in self.quality.get("closed_loop", [])]
        return max(gaps) if gaps else None

    def describe(self) -> str:
        """One line of figures: spread, load, closed-loop gap."""
        q = self.quality
        parts = [f"max spread {q.get('max_rel_spread', 0.0):.0%}",
                 f"{q.get('unstable', 0)}/{q.get('components', 0)} unstable"]
        passes = q.get("passes") or []
        if passes:
            last = passes[-1]
            parts.append(f"other processes {last.get('other_cores', 0.0):.2f} cores")
            if last.get("load_1m") is not None:
                parts.append(f"load {last['load_1m']:.2f}")
        gap = self.worst_gap
        if gap is not None:
            parts.append(f"worst closed-loop gap {gap:.0%}")
        return ", ".join(parts)


# ----------------------------------------------------------------------------- search


@dataclass(frozen=True, kw_only=True)
class SearchRunRecord:
    """One `dse pareto` run: what was searched, for which model, device and profile."""

    id: int
    model_id: int
    model_name: str
    device_id: int
    device_name: str
    device_fingerprint: dict[str, Any]
    accuracy_profile_id: int
    method: str
    mode: str
    space: dict[str, Any]
    constraints: dict[str, Any]
    objectives: list[str]
    baseline: dict[str, Any]
    input_shape: list[int]
    duration_s: float
    n_evaluated: int
    created: datetime


@dataclass(frozen=True, kw_only=True)
class CandidateInput:
    """One evaluated configuration of a search run, as the search writes it."""

    index: int
    front: int
    exits: list[str]
    th_pix: list[float]
    th_img: float
    miou: float
    latency_ms: float
    latency_p95_ms: float
    gflops: float
    exit_rates: dict[str, float]
    feasible: bool
    anytime_ms: list[float] | None = None
    intervals: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.index < 0:
            raise ValueError(f"index must be >= 0, got {self.index}")
        if self.front < 1:
            raise ValueError(f"front must be >= 1, got {self.front}")
        if not self.exits or not all(isinstance(e, str) and e for e in self.exits):
            raise ValueError(f"exits must be a non-empty list of exit ids, got {self.exits!r}")
        _set(self, "exits", list(self.exits))
        _set(self, "th_pix", [float(t) for t in self.th_pix])
        for t in self.th_pix:
            _check_finite(t, "th_pix", low=0.0, high=1.0)
        _check_finite(self.th_img, "th_img", low=0.0, high=1.0)
        _check_finite(self.miou, "miou", low=0.0, high=1.0)
        for name in ("latency_ms", "latency_p95_ms", "gflops"):
            _check_finite(getattr(self, name), name, low=0.0)
        if not isinstance(self.exit_rates, Mapping):
            raise ValueError(f"exit_rates must be a mapping, got {type(self.exit_rates).__name__}")
        _set(self, "exit_rates", {str(k): float(v) for k, v in self.exit_rates.items()})
        if self.anytime_ms is not None:
            _set(self, "anytime_ms", [float(v) for v in self.anytime_ms])
        if self.intervals is not None and not isinstance(self.intervals, Mapping):
            raise ValueError(f"intervals must be a mapping, got {type(self.intervals).__name__}")


@dataclass(frozen=True, kw_only=True)
class CandidateRecord(CandidateInput):
    """A stored candidate; `index` is "candidate N" on the command line."""

    run_id: int


@dataclass(frozen=True, kw_only=True)
class VerificationRecord:
    """Measured versus predicted objectives of a candidate (`dse verify`)."""

    id: int
    run_id: int
    candidate_index: int
    device_id: int
    device_name: str
    dataset: str
    split: str
    predicted: dict[str, Any]
    measured: dict[str, Any]
    created: datetime


# ----------------------------------------------------------------------------- store overview


@dataclass(frozen=True, kw_only=True)
class StoreInfo:
    """What `dse db info` shows."""

    url: str
    revision: str | None
    head_revision: str
    row_counts: dict[str, int]
