"""A device's latency profile from K measured components and the full profiles of other devices.

The store holds complete, provenance-keyed profiles of the same network on other devices. A new
device runs the same kernels, so its component latencies are, to a good approximation, a smooth
function of a reference device's: in log space, `log y = a + b log r` (a *power-law transfer*:
b = 1 is a uniform speed-up, b != 1 a device that gains more on large kernels than on small ones,
as a GPU does). With several references, `log y = a + sum_d b_d log r_d` can weigh them.
Kinds of component (segment, head, decision, upsample, final) move apart between runtimes and
thread counts (ONNX Runtime fuses a head's convolutions, torch pays per call on a decision), so
*kind* models give each kind measured its own intercept, `log y = a_kind + b log r` (b = 1 or
fitted); a kind not measured falls back to the mean intercept.
The models are linear least squares in log space (`scipy.linalg.lstsq`); which one is used is
chosen by leave-one-out cross-validation on the K measured components: the lowest mean squared
leave-one-out residual in log space (PRESS) wins (the minimum of many medians of ten errors is
too easily a lucky one), and the median and p90 of its leave-one-out |predicted / measured - 1|
are the error estimate stored with the predicted rows. Both weigh each measured component by
(components to predict of its kind) / (measured of its kind), so they describe the predicted
components, most of which are small heads, decisions and upsamplings. HELP (NeurIPS'21) and
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
from collections.abc import Collection, Hashable, Mapping, Sequence
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
    """A fitted transfer in log space.

    `scale`: `log y = coef[0] + log r` (slope fixed at 1); `power`: `coef[0] + coef[1] log r`;
    `multi`: `coef[0] + sum_i coef[i + 1] log r_i` over `references`; `kind-scale` and
    `kind-power`: `a_kind + coef[1] log r` with `a_kind = coef[2 + j]` for `groups[j]` and
    `coef[0]` for a kind not measured. `cv_error` and `cv_p90` are the median and 90th
    percentile of |predicted / measured - 1| in leave-one-out cross-validation over the measured
    components (None with fewer than 2 of them).
    """

    kind: str  # "scale" | "power" | "multi" | "kind-scale" | "kind-power"
    references: tuple[str, ...]
    coef: tuple[float, ...]
    n_measured: int
    cv_error: float | None
    cv_p90: float | None
    groups: tuple[str, ...] = ()
    cv_errors: tuple[float, ...] = field(default=(), repr=False)
    # what the choice between models ranks on: the weighted mean squared leave-one-out
    # residual in log space (PRESS); the median of a few errors is too easily lucky
    cv_press: float | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return f"{self.kind}({','.join(self.references)})"

    def as_dict(self) -> dict[str, Any]:
        out = {"model": self.name, "kind": self.kind, "references": list(self.references),
               "coef": list(self.coef), "n_measured": self.n_measured,
               "cv_error": self.cv_error, "cv_p90": self.cv_p90}
        if self.groups:
            out["offsets"] = dict(zip(self.groups, self.coef[2:], strict=True))
        return out

    def predict(self, references: Mapping[str, Mapping[K, float]], keys: Sequence[K],
                kinds: Mapping[K, str] | None = None) -> dict[K, float]:
        """Predicted latency (ms) of each key from the references' latencies (`kinds`: each
        key's kind, needed by the kind models)."""
        if self.kind.startswith("kind-") and kinds is None:
            raise ValueError(f"kinds: the {self.kind} model needs each component's kind")
        x = _design([references[r] for r in self.references], keys)
        g = _groups(kinds, keys)
        logy = _apply(self.kind, np.asarray(self.coef), self.groups, x, g)
        return {key: float(math.exp(v)) for key, v in zip(keys, logy, strict=True)}


def _design(refs: Sequence[Mapping[K, float]], keys: Sequence[K]) -> np.ndarray:
    cols = [np.ones(len(keys))]
    for ref in refs:
        cols.append(np.log(np.maximum([ref[k] for k in keys], 1e-9)))
    return np.stack(cols, axis=1)


def _groups(kinds: Mapping[K, str] | None, keys: Sequence[K]) -> np.ndarray:
    return np.array([kinds[k] if kinds is not None else "" for k in keys], dtype=object)


def _fit(kind: str, x: np.ndarray, logy: np.ndarray, g: np.ndarray
         ) -> tuple[np.ndarray, tuple[str, ...]]:
    if kind == "scale":
        return np.array([float(np.mean(logy - x[:, 1]))]), ()
    if kind in ("power", "multi"):
        coef, *_ = linalg.lstsq(x, logy)
        return np.asarray(coef), ()
    groups = tuple(sorted(set(g)))
    if kind == "kind-scale":
        resid = logy - x[:, 1]
        offsets = [float(np.mean(resid[g == grp])) for grp in groups]
        return np.array([float(np.mean(resid)), 1.0, *offsets]), groups
    onehot = (g[:, None] == np.array(groups, dtype=object)[None, :]).astype(np.float64)
    sol, *_ = linalg.lstsq(np.column_stack([onehot, x[:, 1]]), logy)
    slope = float(sol[-1])
    return np.array([float(np.mean(logy - slope * x[:, 1])), slope, *sol[:-1]]), groups


def _apply(kind: str, coef: np.ndarray, groups: tuple[str, ...], x: np.ndarray,
           g: np.ndarray) -> np.ndarray:
    if kind == "scale":
        return coef[0] + x[:, 1]
    if kind in ("power", "multi"):
        return x @ coef
    offsets = dict(zip(groups, coef[2:], strict=True))
    return np.array([offsets.get(gi, coef[0]) for gi in g]) + coef[1] * x[:, 1]


def _candidates(names: Sequence[str], n: int, *, kinds: bool
                ) -> list[tuple[str, tuple[str, ...]]]:
    out: list[tuple[str, tuple[str, ...]]] = [("scale", (r,)) for r in names]
    if n >= 4:  # two parameters and at least two points to judge them on
        out += [("power", (r,)) for r in names]
    if kinds and n >= 3:
        out += [("kind-scale", (r,)) for r in names]
    if kinds and n >= 6:
        out += [("kind-power", (r,)) for r in names]
    if len(names) > 1 and n >= len(names) + 3:
        out.append(("multi", tuple(names)))
    return out


def fit_transfer(measured: Mapping[K, float],
                 references: Mapping[str, Mapping[K, float]],
                 kinds: Mapping[K, str] | None = None,
                 targets: Collection[K] | None = None) -> TransferModel:
    """Fit every candidate model on the measured components, keep the best in leave-one-out CV.

    Args:
        measured: latency (ms) of the K measured components on the new device.
        references: per reference device, latency (ms) of every component (at least the
            measured ones and the ones to predict).
        kinds: each component's kind; given, the kind models are candidates too.
        targets: the components to predict. Given with `kinds`, each measured component's
            leave-one-out error weighs (targets of its kind) / (measured of its kind), so the
            median and p90 describe the components predicted: a kind measured entirely (the
            one final head) says nothing about them, and the many small heads and decisions
            count for their number, not for how few of them were measured.

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
    g = _groups(kinds, keys)
    weights = _weights(keys, kinds, targets)
    best: TransferModel | None = None
    for kind, names in _candidates(sorted(references), len(keys), kinds=kinds is not None):
        x = _design([references[r] for r in names], keys)
        residuals = _loo_residuals(kind, x, logy, g) if len(keys) >= 2 else np.array([])
        errors = np.abs(np.expm1(residuals))
        coef, groups = _fit(kind, x, logy, g)
        model = TransferModel(
            kind=kind, references=names, coef=tuple(float(c) for c in coef), n_measured=len(keys),
            cv_error=_percentile(errors, weights, 50) if errors.size else None,
            cv_p90=_percentile(errors, weights, 90) if errors.size else None,
            groups=groups, cv_errors=tuple(float(e) for e in errors),
            cv_press=float(np.average(residuals ** 2, weights=weights))
            if residuals.size else None)
        if best is None or _better(model, best):
            best = model
    assert best is not None
    return best


def _weights(keys: Sequence[K], kinds: Mapping[K, str] | None,
             targets: Collection[K] | None) -> np.ndarray:
    """Per measured component, (targets of its kind) / (measured of its kind); uniform when
    kinds or targets are not given, or no measured kind has a target."""
    if kinds is None or targets is None:
        return np.ones(len(keys))
    wanted: dict[str, int] = {}
    for t in targets:
        wanted[kinds[t]] = wanted.get(kinds[t], 0) + 1
    have: dict[str, int] = {}
    for k in keys:
        have[kinds[k]] = have.get(kinds[k], 0) + 1
    w = np.array([wanted.get(kinds[k], 0) / have[kinds[k]] for k in keys], dtype=np.float64)
    return w if w.sum() > 0 else np.ones(len(keys))


def _percentile(errors: np.ndarray, weights: np.ndarray, q: float) -> float:
    return float(np.percentile(errors, q, weights=weights, method="inverted_cdf"))


def _loo_residuals(kind: str, x: np.ndarray, logy: np.ndarray, g: np.ndarray) -> np.ndarray:
    """log(predicted / measured) of each measured component, predicted by the model fitted on
    the others (a kind left without a measurement falls back to the mean intercept, as an
    unmeasured kind does)."""
    n = len(logy)
    errors = np.empty(n)
    for i in range(n):
        keep = np.arange(n) != i
        coef, groups = _fit(kind, x[keep], logy[keep], g[keep])
        predicted = float(_apply(kind, coef, groups, x[i:i + 1], g[i:i + 1])[0])
        errors[i] = predicted - logy[i]
    return errors


def _better(a: TransferModel, b: TransferModel) -> bool:
    """Lower PRESS wins; within 1e-12 (e.g. both exact) the simpler model stays."""
    ea = a.cv_press if a.cv_press is not None else math.inf
    eb = b.cv_press if b.cv_press is not None else math.inf
    return ea < eb - 1e-12
