"""How far one component's timing samples can be trusted: its estimate, spread and outliers.

The number the search adds up is the **median** of a component's samples. Why the median:
noise on a shared machine is one-sided (a preempted or cache-evicted run is slower, never
faster), so the mean is pulled up by every burst while the median moves only when more than half
of the runs are disturbed; the minimum is robust too but optimistic (it is the luckiest run, not
the typical one a deployment sees). `torch.utils.benchmark` reports the median and IQR for the
same reason. Both sides of every comparison (closed loop, `dse verify`) use the median too.

Spread is the interquartile range relative to the estimate (robust, like the median). A component
much cheaper than the network is judged against a floor instead of its own median: a 20 us
decision whose runs differ by 30% cannot move a 5 ms path by more than 0.1%, while the timer's own
jitter makes its relative spread large on any machine. pyperf's coefficient of variation (std /
mean, warned above 10%) and the share of Tukey far-out samples (> Q3 + 3 IQR) are kept as figures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# Tukey's "far out" fence: samples beyond Q3 + 3 IQR are outliers.
OUTLIER_FENCE_IQR = 3.0


@dataclass(frozen=True, kw_only=True)
class ComponentQuality:
    """Estimate and spread of one component's samples, and whether they pass the threshold.

    `rel_spread` = IQR / max(median, floor_ms), the figure the verdict uses; `cv` = std / mean
    and `outliers` = share of samples beyond Q3 + 3 IQR are reported alongside.
    """

    n: int
    median_ms: float
    iqr_ms: float
    rel_spread: float
    cv: float
    outliers: float
    floor_ms: float
    stable: bool
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def assess_samples(samples_ms: Sequence[float] | np.ndarray, *, threshold: float,
                   floor_ms: float = 0.0, contended: bool = False) -> ComponentQuality:
    """Spread figures of one component and its verdict.

    Args:
        samples_ms: the timed runs, in milliseconds.
        threshold: largest allowed IQR / max(median, floor_ms), in (0, 1).
        floor_ms: the smallest cost the spread is judged against (see the module docstring).
        contended: the samples were taken while other processes needed this process's cores;
            such samples are unstable whatever their spread (the slowdown can be uniform).

    Raises:
        ValueError: on no samples, non-finite samples or a threshold outside (0, 1).
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold: must be in (0, 1), got {threshold}")
    x = np.asarray(samples_ms, dtype=np.float64).reshape(-1)
    if x.size == 0 or not np.all(np.isfinite(x)):
        raise ValueError("samples_ms: need at least one finite sample")
    q1, median, q3 = (float(v) for v in np.percentile(x, [25, 50, 75]))
    iqr = q3 - q1
    mean = float(x.mean())
    cv = float(x.std(ddof=1) / mean) if x.size > 1 and mean > 0 else 0.0
    outliers = float(np.mean(x > q3 + OUTLIER_FENCE_IQR * iqr)) if iqr > 0 else 0.0
    scale = max(median, floor_ms)
    rel = iqr / scale if scale > 0 else (0.0 if iqr == 0 else math.inf)
    reason = None
    if contended:
        reason = "other processes needed this process's cores while it was timed"
    elif rel > threshold:
        reason = f"spread (IQR) {rel:.0%} of its {median:.3g} ms median"
    return ComponentQuality(n=int(x.size), median_ms=median, iqr_ms=iqr, rel_spread=rel, cv=cv,
                            outliers=outliers, floor_ms=float(floor_ms), stable=reason is None,
                            reason=reason)
