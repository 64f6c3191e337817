"""A few-shot latency profile: K components measured on the device, the rest predicted.

`dse profile --few-shot K --reference DEV[,DEV...]`, `dse probe-pack --few-shot K --reference
DEV` and `dse profile --import RESULTS --reference DEV` share these steps:

- `load_references` reads and checks the references' full profiles (same model, input shape,
  batch and dtype; the same runtime unless the user allows another: kernels of two runtimes
  scale differently, so a cross-runtime transfer is a guess the user must ask for);
- `plan_components` picks the K components to measure (`profiling.fewshot.choose_components`
  on the references' geometric mean);
- `store_predictions` fits the transfer (`profiling.fewshot.fit_transfer`) on everything
  measured on the device and stores every component without a measured row as one predicted
  row (source "predicted", one sample: the prediction; `quality`: the model, its coefficients and
  its leave-one-out error), in one transaction.

Predicted rows are never read as measured (`db.repository.load_latency` returns them only on
request), so a later full `dse profile` of the device sees them as missing, measures them and
replaces them.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from db import repository
from db.errors import StorageError
from db.records import DeviceRecord, LatencyRecord
from db.session import session_scope
from profiling.errors import ProfilingError
from profiling.fewshot import TransferModel, choose_components, fit_transfer

Key = tuple[str, str]  # (component kind, name), as stored


@dataclass(frozen=True, kw_only=True)
class FewShot:
    """What a few-shot profile asks for: K components here, the rest from `references`."""

    k: int
    references: tuple[str, ...]
    allow_cross_runtime: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "references", tuple(self.references))
        if self.k < 1:
            raise ValueError(f"few_shot.k: must be >= 1 (components to measure), got {self.k}")
        if not self.references:
            raise ValueError("few_shot.references: name at least one reference device")
        if len(set(self.references)) != len(self.references):
            raise ValueError("few_shot.references: a device is named twice")


@dataclass(frozen=True, kw_only=True)
class References:
    """The references' component latencies (estimate, ms), checked and complete."""

    devices: tuple[DeviceRecord, ...]
    latency_ms: Mapping[str, Mapping[Key, float]]
    rows: Mapping[Key, LatencyRecord]  # the first reference's rows: GFLOPs and parameters
    warnings: tuple[str, ...] = ()

    @property
    def keys(self) -> list[Key]:
        """Every component, in the first reference's (stored) order."""
        return list(self.rows)


@dataclass(frozen=True, kw_only=True)
class FewShotResult:
    """What a few-shot profile stored: components measured, predicted, the model used."""

    measured: tuple[Key, ...]
    predicted: tuple[Key, ...]
    model: TransferModel | None  # None: everything was measured, nothing to predict
    references: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"measured": len(self.measured), "predicted": len(self.predicted),
                "references": list(self.references),
                **({"model": None} if self.model is None else self.model.as_dict())}

    def line(self, device: str) -> str:
        """The one-line summary the CLI prints."""
        total = len(self.measured) + len(self.predicted)
        if self.model is None:
            return (f"few-shot on {device!r}: all {total} components measured, nothing "
                    "predicted (K covers every component)")
        m = self.model
        error = ("too few measured to cross-validate (measure K >= 2)" if m.cv_error is None
                 else f"leave-one-out error {m.cv_error:.1%} median, {m.cv_p90:.1%} p90 over "
                      f"the {m.n_measured} measured")
        return (f"few-shot on {device!r}: measured {len(self.measured)} of {total} components, "
                f"predicted {len(self.predicted)} with {m.name}; {error}; a full `dse profile "
                f"--device {device}` replaces the predictions")


def find_model_id(s: Session, weights_sha256: str) -> int | None:
    """The stored model of these weights, or None."""
    try:
        return repository.get_model(s, weights_sha256).id
    except StorageError:
        return None


def load_references(s: Session, names: Sequence[str], *, model_id: int | None, model_name: str,
                    input_shape: Sequence[int], batch: int, dtype: str, runtime: str,
                    device_name: str | None, allow_cross_runtime: bool = False,
                    expected: Collection[Key] | None = None) -> References:
    """The references' measured profiles of this model at this input shape, batch and dtype.

    Args:
        names: the reference devices.
        runtime: the runtime of the device to predict ("torch", "onnxruntime").
        device_name: the device to predict (it cannot be its own reference; its setup of
            another runtime can, with `allow_cross_runtime`).
        expected: every component the network has (None: the first reference's components).

    Raises:
        ProfilingError: one line naming the reference and what to do: an unknown device, the
            device being profiled itself, another runtime (without `allow_cross_runtime`), no
            profile of this model and shape, or an incomplete one.
    """
    shape = tuple(int(v) for v in input_shape)
    where = f"model {model_name!r} at input {'x'.join(map(str, shape))} ({dtype}, batch {batch})"
    devices, latency, warnings = [], {}, []
    rows_of_first: dict[Key, LatencyRecord] = {}
    for name in names:
        device = _reference_device(s, name, runtime)
        theirs = repository.device_runtime(device.fingerprint)
        if device.name == device_name and theirs == runtime:  # another runtime is another setup
            raise ProfilingError(f"--reference {name}: that is the device being profiled; name "
                                 "devices with a full profile of this model")
        if theirs != runtime and not allow_cross_runtime:
            raise ProfilingError(
                f"reference {name!r} was profiled with {theirs}, this profile runs {runtime}; "
                "kernels of two runtimes scale differently: name a reference profiled with "
                f"{runtime}, or pass --allow-cross-runtime to predict across runtimes anyway")
        rows = [] if model_id is None else [
            r for r in repository.load_latency(s, model_id=model_id, device_id=device.id,
                                               input_shape=shape, batch=batch, dtype=dtype)
            if r.kind != "path"]
        if not rows:
            raise ProfilingError(
                f"reference {name!r} has no latency profile of {where}; profile it there first "
                f"(`dse profile --checkpoint CKPT --device {name}`) or name another reference")
        have = {(r.kind, r.name): r for r in rows}
        wanted = set(expected) if expected is not None else set(rows_of_first or have)
        lacking = sorted(wanted - set(have))
        if lacking:
            raise ProfilingError(
                f"reference {name!r} has {len(wanted) - len(lacking)} of the {len(wanted)} "
                f"component latencies of {where} (none of {lacking[0][0]}:{lacking[0][1]}); "
                f"complete it with `dse profile --device {name}` on that device, or name "
                "another reference")
        noisy = sum(r.noisy for r in rows)
        if noisy:
            warnings.append(f"reference {name!r}: {noisy} of its {len(rows)} component "
                            "latencies were stored although noisy; the predictions inherit "
                            "their noise")
        if not rows_of_first:
            rows_of_first = {k: have[k] for k in sorted(wanted, key=list(have).index)}
        devices.append(device)
        latency[name] = {k: float(have[k].estimate_ms) for k in rows_of_first}
    return References(devices=tuple(devices), latency_ms=latency, rows=rows_of_first,
                      warnings=tuple(warnings))


def _reference_device(s: Session, name: str, runtime: str) -> DeviceRecord:
    """A reference by name (its setup of `runtime` when it has one, else its newest) or id."""
    try:
        try:
            return repository.select_device(s, name, runtime=runtime).device
        except StorageError:
            return repository.select_device(s, name).device
    except StorageError as exc:
        raise ProfilingError(f"--reference: {exc}") from exc


def plan_components(references: References, k: int) -> list[Key]:
    """The K components to measure: spread over kinds and sizes of the references' geometric
    mean (all of them when K reaches their number)."""
    names = list(references.latency_ms)
    mean = {key: math.exp(sum(math.log(max(references.latency_ms[n][key], 1e-9))
                              for n in names) / len(names)) for key in references.keys}
    return choose_components(mean, {key: key[0] for key in mean}, k)


def read_plan(engine: Engine, few_shot: FewShot, *, weights_sha256: str, model_name: str,
              input_shape: Sequence[int], batch: int, dtype: str, runtime: str,
              device_name: str | None, expected: Collection[Key] | None = None
              ) -> tuple[References, list[Key]]:
    """`load_references` and `plan_components` in one read-only look at the store."""
    with session_scope(engine, readonly=True) as s:
        refs = load_references(
            s, few_shot.references, model_id=find_model_id(s, weights_sha256),
            model_name=model_name, input_shape=input_shape, batch=batch, dtype=dtype,
            runtime=runtime, device_name=device_name,
            allow_cross_runtime=few_shot.allow_cross_runtime, expected=expected)
    return refs, plan_components(refs, few_shot.k)


def store_predictions(s: Session, references: References, *, model_id: int, device_id: int,
                      input_shape: Sequence[int], batch: int, dtype: str) -> FewShotResult:
    """Fit the transfer on the device's measured components and store every other component
    as predicted (in the caller's transaction).

    Raises:
        ProfilingError: nothing measured on the device at this shape, batch and dtype.
    """
    shape = tuple(int(v) for v in input_shape)
    measured = {(r.kind, r.name): float(r.estimate_ms) for r in repository.load_latency(
        s, model_id=model_id, device_id=device_id, input_shape=shape, batch=batch, dtype=dtype)
        if r.kind != "path"}
    names = tuple(references.latency_ms)
    usable = {k: v for k, v in measured.items() if k in references.rows}
    if not usable:
        raise ProfilingError("nothing measured on the device to fit the prediction on; "
                             "measure at least one component (--few-shot K >= 1)")
    targets = [k for k in references.keys if k not in measured]
    if not targets:
        return FewShotResult(measured=tuple(measured), predicted=(), model=None,
                             references=names)
    kinds = {key: key[0] for key in references.keys}
    model = fit_transfer(usable, references.latency_ms, kinds, targets)
    predicted = model.predict(references.latency_ms, targets, kinds)
    quality = {**model.as_dict(), "components": len(references.keys)}
    for key in targets:
        ref = references.rows[key]
        repository.upsert_latency(
            s, model_id=model_id, device_id=device_id, kind=key[0], name=key[1],
            input_shape=shape, batch=batch, dtype=dtype, samples_ms=[predicted[key]],
            gflops=ref.gflops, params=ref.params, quality=quality, source="predicted")
    return FewShotResult(measured=tuple(measured), predicted=tuple(targets), model=model,
                         references=names)
