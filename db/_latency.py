"""Latency of each component of a model on a device, summary statistics computed on insert."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from db._common import aware, insert_or_get, parse_shape, shape_key
from db.arrays import from_bytes, to_bytes
from db.errors import StorageError
from db.models import Device, Latency, Model, ProfileQuality, utcnow
from db.records import LATENCY_KINDS, LATENCY_SOURCES, LatencyRecord, ProfileQualityRecord

DAMAGED = "the store is damaged: restore it from a backup or measure again"
_STATS = ("mean_ms", "std_ms", "min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms")


def latency_stats(samples_ms: np.ndarray) -> dict[str, float]:
    """n, mean, std (population), min, p50, p90, p99, max of the samples (linear percentiles)."""
    x = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    return {
        "n": int(x.size), "mean_ms": float(x.mean()), "std_ms": float(x.std()),
        "min_ms": float(x.min()), "p50_ms": float(p50), "p90_ms": float(p90),
        "p99_ms": float(p99), "max_ms": float(x.max()),
    }


def _record(row: Latency) -> LatencyRecord:
    where = f"dse_latency row {row.id} ({row.kind} {row.name!r})"
    samples = from_bytes(row.samples_ms, np.float64, (row.n,), where=f"{where} column samples_ms")
    if row.n < 1 or not np.all(np.isfinite(samples)) or (samples < 0).any():
        raise StorageError(f"{where} holds timings that are not finite, non-negative numbers; {DAMAGED}")
    stored = {k: getattr(row, k) for k in _STATS}
    if not all(np.isclose(stored[k], v, rtol=1e-9, atol=0.0) for k, v in latency_stats(samples).items()
               if k in stored):
        raise StorageError(f"{where}: its summary columns do not match its samples; {DAMAGED}")
    return LatencyRecord(
        id=row.id, model_id=row.model_id, device_id=row.device_id, kind=row.kind, name=row.name,
        input_shape=parse_shape(row.input_shape), batch=row.batch, dtype=row.dtype, n=row.n,
        mean_ms=row.mean_ms, std_ms=row.std_ms, min_ms=row.min_ms, p50_ms=row.p50_ms,
        p90_ms=row.p90_ms, p99_ms=row.p99_ms, max_ms=row.max_ms,
        samples_ms=samples, gflops=row.gflops,
        params=row.params, created=aware(row.created), predicted_ms=row.predicted_ms,
        noisy=bool(row.noisy), quality=row.quality, source=row.source or "measured",
        provenance=dict(row.provenance) if row.provenance is not None else None,
    )


def upsert_latency(
    s: Session,
    *,
    model_id: int,
    device_id: int,
    kind: str,
    name: str,
    input_shape: Sequence[int],
    batch: int,
    dtype: str,
    samples_ms: Sequence[float] | np.ndarray,
    gflops: float,
    params: int,
    predicted_ms: float | None = None,
    noisy: bool = False,
    quality: dict[str, Any] | None = None,
    source: str = "measured",
    provenance: Mapping[str, Any] | None = None,
) -> LatencyRecord:
    """Store the timing samples of one component; a new measurement replaces the old one.

    The key is (model, device, kind, name, input shape, batch, dtype). Kind "path" is a
    closed-loop check (the real cascade on one forced path) and needs `predicted_ms`, the sum of
    component estimates it was compared with; the components themselves take none. `noisy`
    marks a row stored although its profile failed the stability checks; `quality` keeps its
    spread figures. `source` "predicted" marks a few-shot prediction (never a path check).
    `provenance` keeps where samples not timed in-process came from (a probe import: pack
    and results hashes, when, load), a JSON object.
    """
    if kind not in LATENCY_KINDS:
        raise ValueError(f"kind must be one of {LATENCY_KINDS}, got {kind!r}")
    if source not in LATENCY_SOURCES or (source == "predicted" and kind == "path"):
        raise ValueError(f"source must be one of {LATENCY_SOURCES} (a path check is measured), "
                         f"got {source!r}")
    if (kind == "path") != (predicted_ms is not None):
        raise ValueError("predicted_ms: needed for kind 'path' and only for it")
    if predicted_ms is not None and (not np.isfinite(predicted_ms) or predicted_ms < 0):
        raise ValueError(f"predicted_ms must be finite and >= 0, got {predicted_ms}")
    if not name:
        raise ValueError("name must be a non-empty string")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if not dtype:
        raise ValueError("dtype must be a non-empty string")
    x = np.asarray(samples_ms, dtype=np.float64).reshape(-1)
    if x.size == 0 or not np.all(np.isfinite(x)) or (x < 0).any():
        raise ValueError("samples_ms must be a non-empty list of finite, non-negative times")
    if not np.isfinite(gflops) or gflops < 0:
        raise ValueError(f"gflops must be finite and >= 0, got {gflops}")
    if params < 0:
        raise ValueError(f"params must be >= 0, got {params}")
    if s.get(Model, model_id) is None:
        raise StorageError(f"unknown model id {model_id}; `dse models` lists the stored models")
    if s.get(Device, device_id) is None:
        raise StorageError(f"unknown device id {device_id}; `dse devices` lists the known ones")
    key = shape_key(input_shape)
    values = dict(latency_stats(x), samples_ms=to_bytes(x), gflops=float(gflops), params=int(params),
                  predicted_ms=None if predicted_ms is None else float(predicted_ms),
                  noisy=bool(noisy), quality=None if quality is None else dict(quality),
                  source=source,
                  provenance=None if provenance is None else dict(provenance))
    row = Latency(
        model_id=model_id, device_id=device_id, kind=kind, name=name, input_shape=key,
        batch=batch, dtype=dtype, **values,
    )
    stored, inserted = insert_or_get(
        s, row,
        select(Latency).where(
            Latency.model_id == model_id, Latency.device_id == device_id, Latency.kind == kind,
            Latency.name == name, Latency.input_shape == key, Latency.batch == batch,
            Latency.dtype == dtype,
        ),
    )
    if not inserted:
        for attr, value in values.items():
            setattr(stored, attr, value)
    s.flush()
    return _record(stored)


def load_latency(
    s: Session,
    *,
    model_id: int,
    device_id: int,
    input_shape: Sequence[int] | None = None,
    batch: int | None = None,
    dtype: str | None = None,
    include_predicted: bool = False,
) -> list[LatencyRecord]:
    """Timings of a model on a device, optionally narrowed to one input shape, batch, dtype.

    Only measured rows unless `include_predicted`: a few-shot prediction is never returned
    to a caller that did not ask for one.
    """
    stmt = select(Latency).where(Latency.model_id == model_id, Latency.device_id == device_id)
    if not include_predicted:
        stmt = stmt.where(Latency.source == "measured")
    if input_shape is not None:
        stmt = stmt.where(Latency.input_shape == shape_key(input_shape))
    if batch is not None:
        stmt = stmt.where(Latency.batch == batch)
    if dtype is not None:
        stmt = stmt.where(Latency.dtype == dtype)
    stmt = stmt.order_by(Latency.input_shape, Latency.batch, Latency.dtype, Latency.kind, Latency.name)
    return [_record(r) for r in s.scalars(stmt)]


def list_path_checks(s: Session, *, model_id: int | None = None,
                     device_id: int | None = None) -> list[LatencyRecord]:
    """Stored closed-loop checks (kind "path"), optionally of one model or device, oldest first."""
    stmt = select(Latency).where(Latency.kind == "path")
    if model_id is not None:
        stmt = stmt.where(Latency.model_id == model_id)
    if device_id is not None:
        stmt = stmt.where(Latency.device_id == device_id)
    stmt = stmt.order_by(Latency.model_id, Latency.device_id, Latency.input_shape, Latency.id)
    return [_record(r) for r in s.scalars(stmt)]


def _quality_record(row: ProfileQuality) -> ProfileQualityRecord:
    return ProfileQualityRecord(
        id=row.id, model_id=row.model_id, device_id=row.device_id,
        input_shape=parse_shape(row.input_shape), batch=row.batch, dtype=row.dtype,
        noisy=bool(row.noisy), quality=dict(row.quality), created=aware(row.created),
    )


def upsert_profile_quality(s: Session, *, model_id: int, device_id: int,
                           input_shape: Sequence[int], batch: int, dtype: str, noisy: bool,
                           quality: dict[str, Any]) -> ProfileQualityRecord:
    """Record how a latency-profile run went; a later run of the same profile replaces it."""
    if s.get(Model, model_id) is None:
        raise StorageError(f"unknown model id {model_id}; `dse models` lists the stored models")
    if s.get(Device, device_id) is None:
        raise StorageError(f"unknown device id {device_id}; `dse devices` lists the known ones")
    key = shape_key(input_shape)
    row = ProfileQuality(model_id=model_id, device_id=device_id, input_shape=key, batch=batch,
                         dtype=dtype, noisy=bool(noisy), quality=dict(quality))
    stored, inserted = insert_or_get(
        s, row,
        select(ProfileQuality).where(
            ProfileQuality.model_id == model_id, ProfileQuality.device_id == device_id,
            ProfileQuality.input_shape == key, ProfileQuality.batch == batch,
            ProfileQuality.dtype == dtype,
        ),
    )
    if not inserted:
        stored.noisy, stored.quality = bool(noisy), dict(quality)
        stored.created = utcnow()
    s.flush()
    return _quality_record(stored)


def list_profile_quality(s: Session, *, model_id: int | None = None,
                         device_id: int | None = None) -> list[ProfileQualityRecord]:
    """Stored profile-quality rows, optionally of one model or device."""
    stmt = select(ProfileQuality)
    if model_id is not None:
        stmt = stmt.where(ProfileQuality.model_id == model_id)
    if device_id is not None:
        stmt = stmt.where(ProfileQuality.device_id == device_id)
    stmt = stmt.order_by(ProfileQuality.model_id, ProfileQuality.device_id, ProfileQuality.id)
    return [_quality_record(r) for r in s.scalars(stmt)]
