"""A device's latency profile from K measured components and the full profiles of other devices.

The store holds complete, provenance-keyed profiles of the same network on other devices. A new
device runs the same kernels, so its component latencies are, to a good approximation, a smooth
function of a reference device's: in log space, `log y = a + b log r` (a *power-law transfer*:
b = 1 is a uniform speed-up, b != 1 a device that gains more on large kernels than on small ones,
as a GPU does). With several references, `log y = a + sum_d b_d log r_d` can weigh them.
The models are linear least squares in log space (`scipy.linalg.lstsq`); which one is used is
chosen by leave-one-out cross-validation on the K measured components, and that same
cross-validated error is the estimate stored with the predicted rows. HELP (NeurIPS'21) and
nn-Meter predict from FLOPs and kernels; a transfer from a measured device needs neither a kernel
study nor a meta-trained predictor, and it reduces to the exact answer when the new device is a
scaled copy of a reference.

Which K components to measure: spread over kinds (segments, heads, decisions, final, upsample:
different kernels scale differently) and over sizes (the transfer is a line in log-log space, so
its ends matter most). `choose_components` takes kinds in turn (the ones with the largest share of
the network's time first), starting from the most expensive component and taking, within a
kind, the component farthest in log-latency from the ones already chosen.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from scipy import linalg

K = TypeVar("K", bound=Hashable)


def choose_components(reference_ms: Mapping[K, float], kinds: Mapping[K, str],
                      k: int) -> list[K]:
    """The K components to measure on the new device (all of them when K >= their number).

    Args:
        reference_ms: each component's latency on a reference device (or the references'
            geometric mean): the sizes the choice spreads over.
        kinds: each component's kind.
        k: how many to choose, >= 1.
    """
    if k < 1:
        raise ValueError(f"k: must be >= 1, got {k}")
    keys = list(reference_ms)
    if k >= len(keys):
        return keys
    logs = {key: math.log(max(reference_ms[key], 1e-9)) for key in keys}
    by_kind: dict[str, list[K]] = {}
    for key in keys:
        by_kind.setdefault(kinds[key], []).append(key)
    order = sorted(by_kind, key=lambda kd: -sum(reference_ms[c] for c in by_kind[kd]))
    chosen: list[K] = [max(keys, key=lambda c: logs[c])]  # the most expensive anchors the line
    first_cycle = True
    while len(chosen) < k:
        for kind in order:
            left = [c for c in by_kind[kind] if c not in chosen]
            if not left or len(chosen) == k:
                continue
            if first_cycle and any(kinds[c] == kind for c in chosen):
                continue
            chosen.append(max(left, key=lambda c: (min(abs(logs[c] - logs[o]) for o in chosen),
                                                   logs[c])))
        first_cycle = False
    return chosen


@dataclass(frozen=True, kw_only=True)
class TransferModel:
    """A fitted transfer: `log y = coef[0] + sum_i coef[i + 1] * log r[references[i]]`.

    `scale` models fix the slope at 1 (only `coef[0]` is fitted). `cv_error` and `cv_p90` are
    the median and 90th percentile of |predicted / measured - 1| in leave-one-out
    cross-validation over the measured components (None with fewer than 2 of them).
    """

    kind: str  # "scale" | "power" | "multi"
    references: tuple[str, ...]
    coef: tuple[float, ...]
    n_measured: int
    cv_error: float | None
    cv_p90: float | None
    cv_errors: tuple[float, ...] = field(default=(), repr=False)

    @property
    def name(self) -> str:
        return f"{self.kind}({','.join(self.references)})"

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.name, "kind": self.kind, "references": list(self.references),
                "coef": list(self.coef), "n_measured": self.n_measured,
                "cv_error": self.cv_error, "cv_p90": self.cv_p90}

    def predict(self, references: Mapping[str, Mapping[K, float]], keys: Sequence[K]
                ) -> dict[K, float]:
        """Predicted latency (ms) of each key from the references' latencies."""
        x = _design(self.kind, [references[r] for r in self.references], keys)
        logy = _apply(self.kind, np.asarray(self.coef), x)
        return {key: float(math.exp(v)) for key, v in zip(keys, logy, strict=True)}


def _design(kind: str, refs: Sequence[Mapping[K, float]], keys: Sequence[K]) -> np.ndarray:
    cols = [np.ones(len(keys))]
    for ref in refs:
        cols.append(np.log(np.maximum([ref[k] for k in keys], 1e-9)))
    return np.stack(cols, axis=1)


def _fit(kind: str, x: np.ndarray, logy: np.ndarray) -> np.ndarray:
    if kind == "scale":
        return np.array([float(np.mean(logy - x[:, 1]))])
    coef, *_ = linalg.lstsq(x, logy)
    return np.asarray(coef)


def _apply(kind: str, coef: np.ndarray, x: np.ndarray) -> np.ndarray:
    return coef[0] + x[:, 1] if kind == "scale" else x @ coef


def _candidates(names: Sequence[str], n: int) -> list[tuple[str, tuple[str, ...]]]:
    out: list[tuple[str, tuple[str, ...]]] = [("scale", (r,)) for r in names]
    if n >= 4:  # two parameters and at least two points to judge them on
        out += [("power", (r,)) for r in names]
    if len(names) > 1 and n >= len(names) + 3:
        out.append(("multi", tuple(names)))
    return out


def fit_transfer(measured: Mapping[K, float],
                 references: Mapping[str, Mapping[K, float]]) -> TransferModel:
    """Fit every candidate model on the measured components, keep the best in leave-one-out CV.

    Args:
        measured: latency (ms) of the K measured components on the new device.
        references: per reference device, latency (ms) of every component (at least the
            measured ones and the ones to predict).

    Raises:
        ValueError: no measured component, no reference, or a reference lacking one of them.
    """
    keys = list(measured)
    if not keys:
        raise ValueError("measured: need at least one measured component")
    if not references:
        raise ValueError("references: need at least one reference device")
    for name, ref in references.items():
        lacking = [k for k in keys if k not in ref]
        if lacking:
            raise ValueError(f"reference {name!r} has no latency of {lacking[0]!r}")
    y = np.array([measured[k] for k in keys], dtype=np.float64)
    logy = np.log(np.maximum(y, 1e-9))
    best: TransferModel | None = None
    for kind, names in _candidates(sorted(references), len(keys)):
        x = _design(kind, [references[r] for r in names], keys)
        errors = _loo_errors(kind, x, logy) if len(keys) >= 2 else np.array([])
        coef = _fit(kind, x, logy)
        model = TransferModel(
            kind=kind, references=names, coef=tuple(float(c) for c in coef), n_measured=len(keys),
            cv_error=float(np.median(errors)) if errors.size else None,
            cv_p90=float(np.percentile(errors, 90)) if errors.size else None,
            cv_errors=tuple(float(e) for e in errors))
        if best is None or _better(model, best):
            best = model
    assert best is not None
    return best


def _loo_errors(kind: str, x: np.ndarray, logy: np.ndarray) -> np.ndarray:
    n = len(logy)
    errors = np.empty(n)
    for i in range(n):
        keep = np.arange(n) != i
        coef = _fit(kind, x[keep], logy[keep])
        errors[i] = abs(math.exp(float(_apply(kind, coef, x[i:i + 1])[0]) - logy[i]) - 1.0)
    return errors


def _better(a: TransferModel, b: TransferModel) -> bool:
    """Lower CV error wins; within 1e-12 (e.g. both exact) the simpler model stays."""
    ea = a.cv_error if a.cv_error is not None else math.inf
    eb = b.cv_error if b.cv_error is not None else math.inf
    return ea < eb - 1e-12
