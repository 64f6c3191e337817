"""Bootstrap intervals for stored front points, exact on every resample of the calibration images.

A prediction of the search is a sum over calibration images (counts, latencies, exits taken), so
how much it would move on another draw of images of the same kind is measured by resampling the
images with replacement (the bootstrap). Each resample re-scores a configuration exactly: its
routes are the same per image (`Evaluator.routes`), and a resample's counts are the per-image
counts weighted by how often each image was drawn, so one resample is one row of a matrix product
``weights [R, S] @ per-image values [S, K]``. The baseline (the final exit alone) is re-scored on
the same resample, so the drop versus the baseline is paired.

The intervals cover sampling noise of the images only: component latencies are taken as measured
(their spread is stored with the latency profile), and a set of images of another kind (another
drive, another season) moves the numbers by more than the intervals say. `dse pareto --check-on`
measures that on another stored calibration set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from db.counts import miou_from_union
from dse.errors import DseError
from dse.evaluate import Evaluator
from dse.space import Configuration

DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.9
_BLOCK = 64  # configurations whose per-image columns share one matrix product


@dataclass(frozen=True, kw_only=True)
class BootstrapSettings:
    """How the intervals are drawn.

    Attributes:
        resamples: number of bootstrap resamples (each draws S images with replacement).
        seed: seed of the resampling (numpy's default generator); same seed, same intervals.
        level: central probability of the two-sided intervals (0.9: 5th to 95th percentile).
    """

    resamples: int = DEFAULT_RESAMPLES
    seed: int = 0
    level: float = DEFAULT_LEVEL

    def __post_init__(self) -> None:
        if self.resamples < 2:
            raise ValueError(f"resamples must be >= 2, got {self.resamples}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        check_probability(self.level, "level")

    def to_dict(self) -> dict[str, float | int]:
        return {"resamples": self.resamples, "seed": self.seed, "level": self.level}


def check_probability(value: float, name: str) -> float:
    """A confidence or interval level must lie strictly between 0 and 1."""
    if not math.isfinite(value) or not 0.0 < value < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1 (e.g. 0.9), got {value:g}")
    return value


def resample_indices(num_samples: int, settings: BootstrapSettings) -> np.ndarray:
    """Image indices of every resample, int64 [R, S] (row r: the images resample r draws)."""
    rng = np.random.default_rng(settings.seed)
    return rng.integers(0, num_samples, size=(settings.resamples, num_samples), dtype=np.int64)


def resample_weights(num_samples: int, settings: BootstrapSettings) -> np.ndarray:
    """How often each image is drawn in each resample, int64 [R, S] (rows sum to S)."""
    idx = resample_indices(num_samples, settings)
    offsets = np.arange(settings.resamples, dtype=np.int64)[:, None] * num_samples
    counts = np.bincount((idx + offsets).ravel(), minlength=settings.resamples * num_samples)
    return counts.reshape(settings.resamples, num_samples)


@dataclass(frozen=True, kw_only=True, eq=False)
class Replicates:
    """The objectives of one configuration on every resample (float64, R values each).

    Attributes:
        miou: mIoU in [0, 1]; drop_pp: baseline mIoU minus this, in points, same resample.
        latency_ms: mean latency; gflops: mean GFLOPs; exit_rates: exit id -> share of the
        resample's images.
    """

    miou: np.ndarray
    drop_pp: np.ndarray
    latency_ms: np.ndarray
    gflops: np.ndarray
    exit_rates: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Intervals:
    """Two-sided bootstrap intervals of one configuration and one-sided bounds at `confidence`.

    `(low, high)` pairs; `bounds` (None without a confidence) holds the pessimistic one-sided
    bound of each constrained quantity: ``miou_low`` (the (1 - P) quantile), ``drop_pp_high``,
    ``latency_ms_high`` and ``gflops_high`` (the P quantile).
    """

    level: float
    miou: tuple[float, float]
    drop_pp: tuple[float, float]
    latency_ms: tuple[float, float]
    exit_rates: dict[str, tuple[float, float]]
    confidence: float | None = None
    bounds: dict[str, float] | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "level": self.level, "miou": list(self.miou), "drop_pp": list(self.drop_pp),
            "latency_ms": list(self.latency_ms),
            "exit_rates": {e: list(v) for e, v in self.exit_rates.items()},
            "confidence": self.confidence, "bounds": self.bounds,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Intervals:  # type: ignore[type-arg]
        def pair(v: Sequence[float]) -> tuple[float, float]:
            return float(v[0]), float(v[1])

        return cls(level=float(d["level"]), miou=pair(d["miou"]), drop_pp=pair(d["drop_pp"]),
                   latency_ms=pair(d["latency_ms"]),
                   exit_rates={e: pair(v) for e, v in d["exit_rates"].items()},
                   confidence=d.get("confidence"), bounds=d.get("bounds"))


class Bootstrap:
    """Resamples of one calibration set, scoring configurations of one evaluator on them."""

    def __init__(self, ev: Evaluator, settings: BootstrapSettings) -> None:
        self.ev = ev
        self.settings = settings
        s = ev.data.num_samples
        weights = resample_weights(s, settings)
        # float32 only where every weighted sum stays an exact integer (rows of the weights sum
        # to S, so no total exceeds S x the largest per-image count), as in the search kernel
        largest = int(ev.union.max(initial=0))
        self.dtype = np.dtype(np.float32 if s * max(largest, 1) < 2**24 else np.float64)
        self.weights = weights.astype(self.dtype)
        self.weights64 = weights.astype(np.float64)
        final = len(ev.data.exit_ids)
        base = self._weighted(np.concatenate([ev.data.tp[final], ev.union[final]], axis=1))
        c = ev.data.num_classes
        self.baseline_miou = miou_from_union(base[:, :c], base[:, c:])

    def _weighted(self, per_image: np.ndarray) -> np.ndarray:
        return (self.weights @ per_image.astype(self.dtype)).astype(np.float64)

    def replicates(self, config: Configuration) -> Replicates:
        """Objectives of `config` on every resample, each exactly what `Evaluator.evaluate`
        gives on a profile holding that resample's images."""
        return self.replicates_batch([config])[0]

    def replicates_batch(self, configs: Sequence[Configuration]) -> list[Replicates]:
        """`replicates` of several configurations, with one matrix product per block of them
        (the per-image columns of a block side by side), which is what makes front-wide
        intervals cheap next to the search."""
        out: list[Replicates] = []
        for start in range(0, len(configs), _BLOCK):
            out += self._block(configs[start: start + _BLOCK])
        return out

    def _block(self, configs: Sequence[Configuration]) -> list[Replicates]:
        ev, s, c = self.ev, self.ev.data.num_samples, self.ev.data.num_classes
        images = np.arange(s)
        final = len(ev.data.exit_ids)
        counts, costs, slots = [], [], []
        for config in configs:
            if config.mode == "anytime":
                # every image pays every output and the final exit answers: only mIoU varies
                point = ev.evaluate(config)
                rows = np.full(s, final)
                ms, gf = np.full(s, point.latency_ms), np.full(s, point.gflops)
                onehot = np.ones((s, len(config.all_exits)))
            else:
                r = ev.routes(config)
                rows, ms, gf = r.exit_row, r.ms, r.gflops
                onehot = np.zeros((s, r.num_slots))
                onehot[images, r.slot] = 1.0
            counts.append(np.concatenate([ev.data.tp[rows, images], ev.union[rows, images],
                                          onehot], axis=1))
            costs.append(np.stack([ms, gf], axis=1))
            slots.append(onehot.shape[1])
        totals = self._weighted(np.concatenate(counts, axis=1))
        # latencies and GFLOPs are not integers: their weighted sums are done in float64
        spent = (self.weights64 @ np.concatenate(costs, axis=1)) / s
        out, col = [], 0
        for k, config in enumerate(configs):
            block = totals[:, col: col + 2 * c + slots[k]]
            col += 2 * c + slots[k]
            miou = miou_from_union(block[:, :c], block[:, c: 2 * c])
            rates = block[:, 2 * c:] / s
            out.append(Replicates(
                miou=miou, drop_pp=100.0 * (self.baseline_miou - miou),
                latency_ms=spent[:, 2 * k], gflops=spent[:, 2 * k + 1],
                exit_rates={e: rates[:, i] for i, e in enumerate(config.all_exits)}))
        return out

    def intervals(self, config: Configuration, *, confidence: float | None = None) -> Intervals:
        """Percentile intervals at the settings' level, and one-sided bounds at `confidence`."""
        return self.intervals_batch([config], confidence=confidence)[0]

    def intervals_batch(self, configs: Sequence[Configuration], *,
                        confidence: float | None = None) -> list[Intervals]:
        """`intervals` of several configurations (one quantile pass over all of them)."""
        if not configs:
            return []
        reps = self.replicates_batch(configs)
        series = [[rep.miou, rep.drop_pp, rep.latency_ms, rep.gflops, *rep.exit_rates.values()]
                  for rep in reps]
        lo, hi = (1.0 - self.settings.level) / 2.0, (1.0 + self.settings.level) / 2.0
        levels = [lo, hi] + ([] if confidence is None else [1.0 - confidence, confidence])
        q = np.quantile(np.stack([v for row in series for v in row], axis=1), levels, axis=0)
        out, col = [], 0
        for rep in reps:
            m, d, lat, gf = (q[:, col + i] for i in range(4))
            rates = {e: (float(q[0, col + 4 + i]), float(q[1, col + 4 + i]))
                     for i, e in enumerate(rep.exit_rates)}
            col += 4 + len(rep.exit_rates)
            bounds = None
            if confidence is not None:
                bounds = {"miou_low": float(m[2]), "drop_pp_high": float(d[3]),
                          "latency_ms_high": float(lat[3]), "gflops_high": float(gf[3])}
            out.append(Intervals(level=self.settings.level, miou=(float(m[0]), float(m[1])),
                                 drop_pp=(float(d[0]), float(d[1])),
                                 latency_ms=(float(lat[0]), float(lat[1])), exit_rates=rates,
                                 confidence=confidence, bounds=bounds))
        return out


def bootstrap_intervals(ev: Evaluator, configs: Sequence[Configuration],
                        settings: BootstrapSettings, *,
                        confidence: float | None = None) -> list[Intervals]:
    """Intervals of each configuration on the same resamples (seeded, reproducible)."""
    if not configs:
        return []
    if ev.data.num_samples < 2:
        raise DseError("the calibration set has one image: nothing to resample; profile more "
                       "images (dse profile --split) or pass --bootstrap 0")
    return Bootstrap(ev, settings).intervals_batch(configs, confidence=confidence)
