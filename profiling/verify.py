"""Run a searched configuration for real and compare it with what the search predicted.

The search never runs the network: it reads mIoU and exit rates from the stored per-image counts
and histograms, and latency from per-component timings. `dse verify` closes that loop: it runs the
pruned early-exit network (training.cascade.build_cascade_module) image by image (batch 1, like
the latency profile), times each image end to end, accumulates per-class TP/FP/FN exactly as the
accuracy profile does, and counts where each image left.

On the calibration split the prediction and the measurement see the same images, so mIoU and exit
counts must agree up to floating-point ties (a pixel confidence within one float32 ulp of th_pix,
or a c_img within one ulp of th_img, may fall on the other side between batched profiling and
single-image execution); latency agrees within the noise of the machine. On another split the
comparison shows how well the configuration generalises; no agreement is expected there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np
import torch

from db.counts import miou_from_counts
from profiling.counts import class_counts
from profiling.errors import ProfilingError
from profiling.load import LoadProbe
from profiling.timing import LatencyStats, TimingSettings, measure_torch

# One image per exit, 0.01 pp of mIoU: the floating-point slack the issue allows.
MIOU_TOLERANCE_PP = 0.01
EXIT_COUNT_TOLERANCE = 1
# nn-Meter's bar: a latency prediction within +/-10% is a good one.
LATENCY_TOLERANCE = 0.10


@dataclass(frozen=True, kw_only=True)
class Prediction:
    """What the search predicted for one candidate (read from its CandidateRecord)."""

    miou: float
    latency_ms: float
    latency_p95_ms: float
    gflops: float
    exit_rates: Mapping[str, float]

    def __post_init__(self) -> None:
        if not 0.0 <= self.miou <= 1.0:
            raise ValueError(f"miou: must be in [0, 1], got {self.miou}")
        for name in ("latency_ms", "latency_p95_ms", "gflops"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}: must be a finite number >= 0, got {value}")
        if any(r < 0 or r > 1 for r in self.exit_rates.values()):
            raise ValueError("exit_rates: every share must be in [0, 1]")

    @classmethod
    def from_candidate(cls, candidate: Any) -> Prediction:
        """Build from a db CandidateRecord (duck-typed, so this module needs no db import)."""
        return cls(
            miou=float(candidate.miou),
            latency_ms=float(candidate.latency_ms),
            latency_p95_ms=float(candidate.latency_p95_ms),
            gflops=float(candidate.gflops),
            exit_rates={str(k): float(v) for k, v in candidate.exit_rates.items()},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "miou": self.miou,
            "latency_ms": self.latency_ms,
            "latency_p95_ms": self.latency_p95_ms,
            "gflops": self.gflops,
            "exit_rates": dict(self.exit_rates),
        }


@dataclass(frozen=True, kw_only=True)
class Measurement:
    """What the real cascade did on this machine over one split."""

    n_images: int
    miou: float
    latency_ms: float
    latency_p95_ms: float
    latency_std_ms: float
    exit_counts: Mapping[str, int]
    dataset: str
    split: str
    device: str
    latency_samples_ms: tuple[float, ...] = field(default=(), repr=False)
    # The protocol's figures (profiling.quality): median and largest spread (IQR / median) of
    # the images' runs, images still unstable after re-measurement, the last pass's load.
    latency_spread: float = 0.0
    latency_max_spread: float = 0.0
    latency_unstable: int = 0
    load: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n_images <= 0:
            raise ValueError(f"n_images: must be > 0, got {self.n_images}")
        if not 0.0 <= self.miou <= 1.0:
            raise ValueError(f"miou: must be in [0, 1], got {self.miou}")
        if sum(self.exit_counts.values()) != self.n_images:
            raise ValueError("exit_counts: must sum to n_images")
        if self.latency_samples_ms and len(self.latency_samples_ms) != self.n_images:
            raise ValueError("latency_samples_ms: need one sample per image")

    @property
    def exit_rates(self) -> dict[str, float]:
        return {k: v / self.n_images for k, v in self.exit_counts.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_images": self.n_images,
            "miou": self.miou,
            "latency_ms": self.latency_ms,
            "latency_p95_ms": self.latency_p95_ms,
            "latency_std_ms": self.latency_std_ms,
            "exit_counts": dict(self.exit_counts),
            "exit_rates": self.exit_rates,
            "dataset": self.dataset,
            "split": self.split,
            "device": self.device,
            "latency_samples_ms": list(self.latency_samples_ms),
            "latency_spread": self.latency_spread,
            "latency_max_spread": self.latency_max_spread,
            "latency_unstable": self.latency_unstable,
            "load": dict(self.load),
        }


@dataclass(frozen=True, kw_only=True)
class Comparison:
    """Predicted vs measured, with the verdict of each check.

    ``same_images`` is True when the measurement ran over the calibration images the prediction
    was computed from; only then are ``miou_ok`` and ``exits_ok`` meaningful (else they are None).
    """

    predicted: Prediction
    measured: Measurement
    same_images: bool
    miou_diff_pp: float
    predicted_exit_counts: Mapping[str, int]
    exit_count_diff: Mapping[str, int]
    latency_error: float
    miou_ok: bool | None
    exits_ok: bool | None
    latency_ok: bool

    @property
    def ok(self) -> bool:
        return all(v is not False for v in (self.miou_ok, self.exits_ok, self.latency_ok))

    def to_dict(self) -> dict[str, Any]:
        """The flat summary `dse verify --json` prints (one line)."""
        return {
            "predicted_miou": self.predicted.miou,
            "measured_miou": self.measured.miou,
            "miou_diff_pp": self.miou_diff_pp,
            "predicted_latency_ms": self.predicted.latency_ms,
            "measured_latency_ms": self.measured.latency_ms,
            "latency_error": self.latency_error,
            "predicted_latency_p95_ms": self.predicted.latency_p95_ms,
            "measured_latency_p95_ms": self.measured.latency_p95_ms,
            "predicted_exit_rates": dict(self.predicted.exit_rates),
            "measured_exit_rates": self.measured.exit_rates,
            "predicted_exit_counts": dict(self.predicted_exit_counts),
            "measured_exit_counts": dict(self.measured.exit_counts),
            "n_images": self.measured.n_images,
            "dataset": self.measured.dataset,
            "split": self.measured.split,
            "same_images": self.same_images,
            "miou_ok": self.miou_ok,
            "exits_ok": self.exits_ok,
            "latency_ok": self.latency_ok,
            "ok": self.ok,
        }


def predicted_counts(exit_rates: Mapping[str, float], n_images: int) -> dict[str, int]:
    """Exit counts behind stored shares (the search stores count / n, so rounding is exact)."""
    return {k: int(round(rate * n_images)) for k, rate in exit_rates.items()}


def compare(
    predicted: Prediction,
    measured: Measurement,
    *,
    same_images: bool,
    miou_tolerance_pp: float = MIOU_TOLERANCE_PP,
    exit_count_tolerance: int = EXIT_COUNT_TOLERANCE,
    latency_tolerance: float = LATENCY_TOLERANCE,
) -> Comparison:
    """Compare a prediction with a measurement.

    Args:
        predicted: the candidate's predicted objectives.
        measured: the real run.
        same_images: True on the calibration split the prediction came from.
        miou_tolerance_pp: allowed |measured - predicted| mIoU, in percentage points.
        exit_count_tolerance: allowed difference in images per exit.
        latency_tolerance: allowed relative error of the mean latency.

    Returns:
        The comparison; mIoU and exit checks are None when ``same_images`` is False.
    """
    miou_diff_pp = (measured.miou - predicted.miou) * 100.0
    expected = predicted_counts(predicted.exit_rates, measured.n_images)
    exit_ids = list(dict.fromkeys([*expected, *measured.exit_counts]))
    diff = {k: measured.exit_counts.get(k, 0) - expected.get(k, 0) for k in exit_ids}
    if predicted.latency_ms > 0:
        latency_error = (measured.latency_ms - predicted.latency_ms) / predicted.latency_ms
    else:
        latency_error = math.inf if measured.latency_ms > 0 else 0.0
    # A tiny slack so that a difference of exactly the tolerance, printed rounded, passes.
    miou_ok = abs(miou_diff_pp) <= miou_tolerance_pp + 1e-9 if same_images else None
    exits_ok = (
        all(abs(d) <= exit_count_tolerance for d in diff.values()) if same_images else None
    )
    return Comparison(
        predicted=predicted,
        measured=measured,
        same_images=same_images,
        miou_diff_pp=miou_diff_pp,
        predicted_exit_counts=expected,
        exit_count_diff=diff,
        latency_error=latency_error,
        miou_ok=miou_ok,
        exits_ok=exits_ok,
        latency_ok=abs(latency_error) <= latency_tolerance,
    )


# Per image: one untimed run (its output is scored), then the latency profile's protocol
# (`profiling.timing.measure_torch`): REPEAT interleaved rounds over the images (every image once
# per round, in dataset order, so a burst of load hits all images alike), the image's latency the
# median of its runs (the estimate the search sums), bounded re-measurement of unstable images.
# The device row's threads and dtype (set by the caller), warm-up runs first, and the same
# deployed module as the profiler's closed loop (training.cascade's module).
DEFAULT_TIMING = TimingSettings(warmup=0, repeat=5)
DEFAULT_WARMUP = 3


def measure_cascade(
    module: torch.nn.Module,
    dataset: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    exit_ids: Sequence[str],
    num_classes: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    dataset_name: str,
    split: str,
    device_name: str,
    timing: TimingSettings = DEFAULT_TIMING,
    warmup: int = DEFAULT_WARMUP,
    ignore_index: int = 255,
    progress: Callable[[int, int], None] | None = None,
    load: LoadProbe | None = None,
) -> Measurement:
    """Run a pruned cascade image by image and measure mIoU, exit counts and latency.

    Args:
        module: returns ``(logits [1, C, H, W], exit_index [1])`` for one image, where
            ``exit_ids[exit_index]`` is the exit the image left at (training.cascade's
            CascadeModule); already on ``device`` and in ``dtype``, in eval mode.
        dataset: ``(image [3, H, W], label [H, W])`` samples, in order.
        exit_ids: the module's exits, early ones in order then the last one.
        num_classes: C, for the per-class counts.
        device, dtype: where and how the images run (the latency profile's settings).
        dataset_name, split, device_name: provenance kept in the measurement.
        timing: timed rounds over the images, threshold and re-measurement bound (its
            ``warmup`` is ignored: see ``warmup``).
        warmup: untimed runs on the first image before anything is timed.
        ignore_index: label of pixels left out of the counts.
        progress: called with (done, total) after each image is scored.
        load: the load probe (default: this machine, `profiling.load.SystemLoadProbe`).

    Returns:
        The measurement; its latency samples hold one median per image, in dataset order, and
        the protocol's spread and load figures.

    Raises:
        ProfilingError: on an empty dataset, or when labels exceed the network's classes.
    """
    total = len(dataset)
    if total == 0:
        raise ProfilingError(f"split {split!r} of {dataset_name!r} has no images")
    tp = np.zeros(num_classes, dtype=np.int64)
    fp = np.zeros(num_classes, dtype=np.int64)
    fn = np.zeros(num_classes, dtype=np.int64)
    counts = dict.fromkeys(exit_ids, 0)
    inputs: list[torch.Tensor] = []
    module.eval()
    with torch.inference_mode():
        for index in range(total):
            image, label = dataset[index]
            x = image.unsqueeze(0).to(device=device, dtype=dtype)
            if index == 0:
                for _ in range(warmup):
                    module(x)
            logits, exit_index = module(x)
            pred = logits.argmax(dim=1)
            img_tp, img_fp, img_fn = class_counts(
                pred, label.unsqueeze(0), num_classes=num_classes, ignore_index=ignore_index
            )
            tp += img_tp.sum(dim=0).numpy()
            fp += img_fp.sum(dim=0).numpy()
            fn += img_fn.sum(dim=0).numpy()
            counts[exit_ids[int(exit_index[0])]] += 1
            inputs.append(x)
            if progress is not None:
                progress(index + 1, total)
    # burst=1: each image runs once per round, as a stream runs each frame once (the kernels
    # are warm from the image before); the profile's burst is for components, not images.
    result = measure_torch([(i, partial(module, x)) for i, x in enumerate(inputs)],
                           device=device, settings=replace(timing, warmup=0, burst=1), load=load)
    latencies = [result.estimate_ms(i) for i in range(total)]
    spreads = sorted(q.rel_spread for q in result.quality.values())
    last = result.passes[-1]
    summary = LatencyStats.from_samples(latencies)
    return Measurement(
        n_images=total,
        miou=miou_from_counts(tp, fp, fn),
        latency_ms=summary.mean_ms,
        latency_p95_ms=float(np.percentile(np.asarray(latencies), 95)),
        latency_std_ms=summary.std_ms,
        exit_counts=counts,
        dataset=dataset_name,
        split=split,
        device=device_name,
        latency_samples_ms=tuple(latencies),
        latency_spread=spreads[len(spreads) // 2],
        latency_max_spread=spreads[-1],
        latency_unstable=len(result.unstable),
        load=last.as_dict(),
    )
