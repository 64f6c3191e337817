"""Models, exits, calibration sets and devices: the provenance every measurement points to."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db._common import aware, insert_or_get, parse_shape, plain_json, sha256_json, shape_key
from db.errors import StorageError
from db.models import CalibrationSet, Device, Exit, Model
from db.records import (
    CalibrationSetRecord,
    DeviceRecord,
    ExitInput,
    ExitRecord,
    ModelRecord,
    check_name,
)

SHA_PREFIX_MIN = 6


# ----------------------------------------------------------------------------- models


def _model_record(row: Model) -> ModelRecord:
    return ModelRecord(
        id=row.id,
        name=row.name,
        arch=row.arch,
        architecture=dict(row.architecture),
        weights_sha256=row.weights_sha256,
        num_classes=row.num_classes,
        created=aware(row.created),
    )


def upsert_model(
    s: Session,
    *,
    name: str,
    arch: str,
    architecture: Mapping[str, Any],
    weights_sha256: str,
    num_classes: int,
) -> ModelRecord:
    """Store a model once per weights hash; a known hash returns the stored row unchanged."""
    check_name(name, field="name")
    if not arch:
        raise ValueError("arch must be a non-empty string")
    sha = weights_sha256.lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ValueError(f"weights_sha256 must be 64 hex digits, got {weights_sha256!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    row = Model(
        name=name,
        arch=arch,
        architecture=plain_json(dict(architecture), field="architecture"),
        weights_sha256=sha,
        num_classes=num_classes,
    )
    stored, _ = insert_or_get(s, row, select(Model).where(Model.weights_sha256 == sha))
    if stored.num_classes != num_classes:
        raise StorageError(
            f"model {sha[:12]} is stored with {stored.num_classes} classes, not {num_classes}"
        )
    return _model_record(stored)


def get_model(s: Session, ref: int | str) -> ModelRecord:
    """A model by id, name (the newest with that name) or weights-hash prefix (>= 6 digits)."""
    text = str(ref).strip()
    row: Model | None = None
    if isinstance(ref, int) or text.isdigit():
        row = s.get(Model, int(text))
    if row is None and text:
        row = s.scalars(select(Model).where(Model.name == text).order_by(Model.id.desc())).first()
    if row is None and len(text) >= SHA_PREFIX_MIN:
        matches = s.scalars(
            select(Model).where(Model.weights_sha256.startswith(text.lower(), autoescape=True))
        ).all()
        if len(matches) > 1:
            raise StorageError(f"model prefix {text!r} is ambiguous; give more hash digits")
        row = matches[0] if matches else None
    if row is None:
        names = list(s.scalars(select(Model.name)).all())
        close = difflib.get_close_matches(text, names, n=3)
        hint = f" (close: {', '.join(close)})" if close else ""
        raise StorageError(f"unknown model {text!r}{hint}; `dse models` lists the stored models")
    return _model_record(row)


def list_models(s: Session) -> list[ModelRecord]:
    return [_model_record(r) for r in s.scalars(select(Model).order_by(Model.id))]


# ----------------------------------------------------------------------------- exits


def _exit_record(row: Exit) -> ExitRecord:
    return ExitRecord(
        id=row.id,
        model_id=row.model_id,
        exit_id=row.exit_id,
        position=row.position,
        position_index=row.position_index,
        head=dict(row.head),
        params=row.params,
        gflops=row.gflops,
        input_shape=parse_shape(row.input_shape),
    )


def upsert_exits(s: Session, model_id: int, exits: Sequence[ExitInput]) -> list[ExitRecord]:
    """Store the exits of a model at an input shape; re-measured costs replace stored ones."""
    if s.get(Model, model_id) is None:
        raise StorageError(f"unknown model id {model_id}; `dse models` lists the stored models")
    out = []
    for e in exits:
        key = shape_key(e.input_shape)
        head = plain_json(dict(e.head), field="head")
        row = Exit(
            model_id=model_id, exit_id=e.exit_id, position=e.position,
            position_index=e.position_index, head=head, params=e.params, gflops=float(e.gflops),
            input_shape=key,
        )
        stored, inserted = insert_or_get(
            s, row,
            select(Exit).where(
                Exit.model_id == model_id, Exit.exit_id == e.exit_id, Exit.input_shape == key
            ),
        )
        if not inserted:
            stored.position, stored.position_index, stored.head = e.position, e.position_index, head
            stored.params, stored.gflops = e.params, float(e.gflops)
        out.append(stored)
    s.flush()
    return [_exit_record(r) for r in out]


def list_exits(
    s: Session, model_id: int, *, input_shape: Sequence[int] | None = None
) -> list[ExitRecord]:
    """Exits of a model ordered by position, optionally at one input shape."""
    stmt = select(Exit).where(Exit.model_id == model_id)
    if input_shape is not None:
        stmt = stmt.where(Exit.input_shape == shape_key(input_shape))
    stmt = stmt.order_by(Exit.position_index, Exit.exit_id, Exit.input_shape)
    return [_exit_record(r) for r in s.scalars(stmt)]


# ----------------------------------------------------------------------------- calibration sets


def _calibration_record(row: CalibrationSet) -> CalibrationSetRecord:
    return CalibrationSetRecord(
        id=row.id, dataset=row.dataset, split=row.split, content_hash=row.content_hash,
        sample_ids=tuple(row.sample_ids),
    )


def upsert_calibration_set(
    s: Session, *, dataset: str, split: str, content_hash: str, sample_ids: Sequence[str]
) -> CalibrationSetRecord:
    """Store a calibration set once per content hash."""
    if not dataset or not split:
        raise ValueError("dataset and split must be non-empty strings")
    if not content_hash:
        raise ValueError("content_hash must be a non-empty string")
    ids = [str(i) for i in sample_ids]
    if not ids:
        raise ValueError("sample_ids must not be empty")
    if len(set(ids)) != len(ids):
        raise ValueError("sample_ids must be unique")
    row = CalibrationSet(
        dataset=dataset, split=split, content_hash=content_hash, num_samples=len(ids),
        sample_ids=ids,
    )
    stored, _ = insert_or_get(
        s, row, select(CalibrationSet).where(CalibrationSet.content_hash == content_hash)
    )
    if list(stored.sample_ids) != ids:
        raise StorageError(
            f"calibration set {content_hash[:12]} is stored with other sample ids; "
            "its content hash must cover the sample ids"
        )
    return _calibration_record(stored)


def get_calibration_set(s: Session, calibration_set_id: int) -> CalibrationSetRecord:
    row = s.get(CalibrationSet, calibration_set_id)
    if row is None:
        raise StorageError(f"unknown calibration set id {calibration_set_id}")
    return _calibration_record(row)


def list_calibration_sets(s: Session) -> list[CalibrationSetRecord]:
    """Every stored calibration set, by id."""
    rows = s.scalars(select(CalibrationSet).order_by(CalibrationSet.id))
    return [_calibration_record(r) for r in rows]


# ----------------------------------------------------------------------------- devices


def _device_record(row: Device) -> DeviceRecord:
    return DeviceRecord(
        id=row.id, name=row.name, fingerprint=dict(row.fingerprint),
        fingerprint_sha256=row.fingerprint_sha256, created=aware(row.created),
    )


def fingerprint_sha256(fingerprint: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a device fingerprint (its unique key)."""
    return sha256_json(dict(fingerprint), field="fingerprint")


def upsert_device(s: Session, *, name: str, fingerprint: Mapping[str, Any]) -> DeviceRecord:
    """Store a device once per (name, fingerprint).

    A name already seen with another fingerprint gets a new row (new drivers, another power
    mode...): its measurements never mix with the old ones. The caller may warn about it.
    """
    check_name(name, field="name")
    fp = plain_json(dict(fingerprint), field="fingerprint")
    sha = fingerprint_sha256(fp)
    row = Device(name=name, fingerprint=fp, fingerprint_sha256=sha)
    stored, _ = insert_or_get(
        s, row, select(Device).where(Device.name == name, Device.fingerprint_sha256 == sha)
    )
    return _device_record(stored)


def list_devices(s: Session) -> list[DeviceRecord]:
    return [_device_record(r) for r in s.scalars(select(Device).order_by(Device.name, Device.id))]


def get_device(s: Session, ref: int | str) -> DeviceRecord:
    """A device by id (an int or all digits: names never are) or by name (the newest
    fingerprint for that name; `select_device` says when the name has several setups)."""
    row: Device | None = None
    text = str(ref).strip()
    if isinstance(ref, int) or text.isdigit():
        row = s.get(Device, int(text))
    if row is None and not isinstance(ref, int):
        row = s.scalars(select(Device).where(Device.name == ref).order_by(Device.id.desc())).first()
    if row is None:
        names = list(s.scalars(select(Device.name).distinct()).all())
        close = difflib.get_close_matches(str(ref), names, n=3)
        hint = f" (close: {', '.join(close)})" if close else ""
        raise StorageError(
            f"unknown device {ref!r}{hint}; `dse devices` lists the known ones and "
            "`dse profile --device NAME` measures a new one"
        )
    return _device_record(row)


def device_runtime(fingerprint: Mapping[str, Any]) -> str:
    """The runtime a device's timings were taken with: torch eager fingerprints have no
    ``runtime`` key (they predate the others)."""
    return str(fingerprint.get("runtime") or "torch")


def runtime_label(fingerprint: Mapping[str, Any]) -> str:
    """The setup timings rest on, in a few words: ``torch 2.14.1 (2 threads)``,
    ``onnxruntime 1.32.0 (1 thread, opt all)`` (not escaped)."""
    runtime = device_runtime(fingerprint)
    version = fingerprint.get(runtime)
    parts = []
    compute, provider = fingerprint.get("compute"), fingerprint.get("provider")
    if compute not in (None, "cpu"):
        parts.append(str(compute))
    if provider not in (None, "CPUExecutionProvider"):
        parts.append(str(provider))
    threads = fingerprint.get("threads")
    if isinstance(threads, int) and not isinstance(threads, bool):
        parts.append(f"{threads} thread{'' if threads == 1 else 's'}")
    if fingerprint.get("graph_optimization") is not None:
        parts.append(f"opt {fingerprint['graph_optimization']}")
    if fingerprint.get("intra_op_spinning") is True:  # off unless asked (profiling.ort_probe)
        parts.append("spinning")
    head = f"{runtime} {version}" if isinstance(version, str) and version else runtime
    return f"{head} ({', '.join(parts)})" if parts else head


def names_with_several_setups(devices: Iterable[tuple[str, int]]) -> set[str]:
    """The names that come with more than one device id among (name, id) pairs: listings and
    reports name the setup of those, so one machine's runtimes read like two devices."""
    ids: dict[str, set[int]] = {}
    for name, device_id in devices:
        ids.setdefault(name, set()).add(device_id)
    return {name for name, found in ids.items() if len(found) > 1}


@dataclass(frozen=True)
class DeviceChoice:
    """The device a name (and runtime) selects, and a note when the name has other setups."""

    device: DeviceRecord
    note: str | None = None


def select_device(s: Session, ref: str, *, runtime: str | None = None) -> DeviceChoice:
    """The newest fingerprint of a device name, of `runtime` when given (or a device id).

    One name can hold several setups of one machine (torch eager and ONNX Runtime, other
    threads): their timings are separate devices and never mix. A name with several setups
    and none chosen is not resolved silently: the note says which is used and how to pick
    another. Fingerprints that differ only outside the setup (new drivers, another CPU) get no
    note: the newest is the machine as it is now.

    Raises:
        StorageError: an unknown device, or a runtime the device was never profiled with.
    """
    text = str(ref).strip()
    if text.isdigit():
        found = get_device(s, text)
        if runtime is not None and device_runtime(found.fingerprint) != runtime:
            raise StorageError(
                f"device id {found.id} ('{found.name}') was profiled with "
                f"{runtime_label(found.fingerprint)}, not {runtime}; drop --runtime, or give the "
                f"name '{found.name}' with --runtime {runtime}")
        return DeviceChoice(device=found)
    named = [_device_record(r) for r in
             s.scalars(select(Device).where(Device.name == text).order_by(Device.id))]
    if not named:
        get_device(s, text)  # raises, naming the close matches
    pool = named
    if runtime is not None:
        pool = [d for d in named if device_runtime(d.fingerprint) == runtime]
        if not pool:
            have = ", ".join(sorted({device_runtime(d.fingerprint) for d in named}))
            raise StorageError(
                f"device '{text}' has no {runtime} profile (it has: {have}); pick one of those "
                f"with --runtime, or run `dse profile --device {text} --runtime {runtime}`")
    chosen = pool[-1]
    setups: dict[str, DeviceRecord] = {}
    for d in pool:  # the newest fingerprint of each setup
        setups[runtime_label(d.fingerprint)] = d
    if len(setups) < 2:
        return DeviceChoice(device=chosen)
    listed = "; ".join(f"{label}: id {d.id}" for label, d in setups.items())
    runtimes = sorted({device_runtime(d.fingerprint) for d in pool})
    how = (f"--runtime {'|'.join(runtimes)} or --device ID" if len(runtimes) > 1
           else "--device ID")
    note = (f"device '{text}' has {len(setups)} setups ({listed}); using the newest, "
            f"{runtime_label(chosen.fingerprint)} (id {chosen.id}); pick another with {how}")
    return DeviceChoice(device=chosen, note=note)


def count_rows(s: Session, model: type[Any]) -> int:
    return int(s.scalar(select(func.count()).select_from(model)) or 0)
