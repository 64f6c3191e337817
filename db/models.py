"""ORM tables of the store (SQLAlchemy 2.0 typed style); only `db/` touches these classes.

Every table name starts with `dse_` so the store can share a database with Optuna's tables.
Unique constraints are the provenance keys that make re-runs and merges idempotent.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


# Named constraints, so later migrations can alter them on SQLite (batch mode) and PostgreSQL alike.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime(timezone=True)}


class Model(Base):
    __tablename__ = "dse_model"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    arch: Mapped[str] = mapped_column(String(200))
    architecture: Mapped[dict[str, Any]]
    weights_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    num_classes: Mapped[int] = mapped_column(Integer)
    created: Mapped[datetime] = mapped_column(default=utcnow)


class Exit(Base):
    __tablename__ = "dse_exit"
    __table_args__ = (UniqueConstraint("model_id", "exit_id", "input_shape"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("dse_model.id", ondelete="CASCADE"), index=True)
    exit_id: Mapped[str] = mapped_column(String(300))
    position: Mapped[str] = mapped_column(String(200))
    position_index: Mapped[int] = mapped_column(Integer)
    head: Mapped[dict[str, Any]]
    params: Mapped[int] = mapped_column(BigInteger)
    gflops: Mapped[float] = mapped_column(Float)
    input_shape: Mapped[str] = mapped_column(String(100))


class CalibrationSet(Base):
    __tablename__ = "dse_calibration_set"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset: Mapped[str] = mapped_column(String(200))
    split: Mapped[str] = mapped_column(String(100))
    content_hash: Mapped[str] = mapped_column(String(128), unique=True)
    num_samples: Mapped[int] = mapped_column(Integer)
    sample_ids: Mapped[list[Any]]


class AccuracyProfile(Base):
    __tablename__ = "dse_accuracy_profile"
    __table_args__ = (UniqueConstraint("model_id", "calibration_set_id", "settings_sha256"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("dse_model.id", ondelete="CASCADE"), index=True)
    calibration_set_id: Mapped[int] = mapped_column(
        ForeignKey("dse_calibration_set.id", ondelete="CASCADE")
    )
    settings: Mapped[dict[str, Any]]
    settings_sha256: Mapped[str] = mapped_column(String(64))
    edges: Mapped[bytes] = mapped_column(LargeBinary)
    exit_ids: Mapped[list[Any]]
    num_classes: Mapped[int] = mapped_column(Integer)
    num_samples: Mapped[int] = mapped_column(Integer)
    complete: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[datetime] = mapped_column(default=utcnow)


class AccuracyChunk(Base):
    """Counts of one exit over images [start, start + n) of the calibration set."""

    __tablename__ = "dse_accuracy_chunk"
    __table_args__ = (UniqueConstraint("profile_id", "exit_id", "start"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    profile_id: Mapped[int] = mapped_column(
        ForeignKey("dse_accuracy_profile.id", ondelete="CASCADE"), index=True
    )
    exit_id: Mapped[str] = mapped_column(String(300))
    start: Mapped[int] = mapped_column(Integer)
    n: Mapped[int] = mapped_column(Integer)
    tp: Mapped[bytes] = mapped_column(LargeBinary)
    fp: Mapped[bytes] = mapped_column(LargeBinary)
    fn: Mapped[bytes] = mapped_column(LargeBinary)
    hist: Mapped[bytes] = mapped_column(LargeBinary)


class AccuracySummary(Base):
    __tablename__ = "dse_accuracy_summary"
    __table_args__ = (UniqueConstraint("profile_id", "exit_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    profile_id: Mapped[int] = mapped_column(
        ForeignKey("dse_accuracy_profile.id", ondelete="CASCADE"), index=True
    )
    exit_id: Mapped[str] = mapped_column(String(300))
    miou: Mapped[float] = mapped_column(Float)
    pixel_accuracy: Mapped[float] = mapped_column(Float)
    mean_confidence: Mapped[float] = mapped_column(Float)


class Device(Base):
    __tablename__ = "dse_device"
    __table_args__ = (UniqueConstraint("name", "fingerprint_sha256"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    fingerprint: Mapped[dict[str, Any]]
    fingerprint_sha256: Mapped[str] = mapped_column(String(64))
    created: Mapped[datetime] = mapped_column(default=utcnow)


class Latency(Base):
    __tablename__ = "dse_latency"
    __table_args__ = (
        UniqueConstraint("model_id", "device_id", "kind", "name", "input_shape", "batch", "dtype"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("dse_model.id", ondelete="CASCADE"), index=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("dse_device.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(300))
    input_shape: Mapped[str] = mapped_column(String(100))
    batch: Mapped[int] = mapped_column(Integer)
    dtype: Mapped[str] = mapped_column(String(30))
    n: Mapped[int] = mapped_column(Integer)
    mean_ms: Mapped[float] = mapped_column(Float)
    std_ms: Mapped[float] = mapped_column(Float)
    min_ms: Mapped[float] = mapped_column(Float)
    p50_ms: Mapped[float] = mapped_column(Float)
    p90_ms: Mapped[float] = mapped_column(Float)
    p99_ms: Mapped[float] = mapped_column(Float)
    max_ms: Mapped[float] = mapped_column(Float)
    samples_ms: Mapped[bytes] = mapped_column(LargeBinary)
    gflops: Mapped[float] = mapped_column(Float)
    params: Mapped[int] = mapped_column(BigInteger)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    # kind "path" (closed-loop check): the sum of component means the measurement is compared to
    predicted_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Measurement quality (profiling.quality): spread figures of the samples; `noisy` marks a
    # row stored although the profile failed its stability checks (kept by an explicit flag).
    noisy: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    quality: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # "measured", or "predicted" (few-shot: `quality` holds the model and its CV error)
    source: Mapped[str] = mapped_column(String(20), default="measured", server_default="measured")
    # Where samples not timed in-process came from: a probe import {"via": "probe",
    # "pack_sha256": ..., "results_sha256": ..., ...}; None for `dse profile`'s own timings.
    provenance: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class ProfileQuality(Base):
    """How the latest latency-profile run of (model, device, input shape, batch, dtype) went:
    protocol, spread, machine load, closed-loop gaps, and whether it was stored as noisy."""

    __tablename__ = "dse_profile_quality"
    __table_args__ = (
        UniqueConstraint("model_id", "device_id", "input_shape", "batch", "dtype"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("dse_model.id", ondelete="CASCADE"), index=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("dse_device.id", ondelete="CASCADE"))
    input_shape: Mapped[str] = mapped_column(String(100))
    batch: Mapped[int] = mapped_column(Integer)
    dtype: Mapped[str] = mapped_column(String(30))
    noisy: Mapped[bool] = mapped_column(Boolean)
    quality: Mapped[dict[str, Any]]
    created: Mapped[datetime] = mapped_column(default=utcnow)


class SearchRun(Base):
    __tablename__ = "dse_search_run"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uid: Mapped[str] = mapped_column(String(32), unique=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("dse_model.id", ondelete="CASCADE"), index=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("dse_device.id", ondelete="CASCADE"))
    accuracy_profile_id: Mapped[int] = mapped_column(
        ForeignKey("dse_accuracy_profile.id", ondelete="CASCADE")
    )
    method: Mapped[str] = mapped_column(String(50))
    mode: Mapped[str] = mapped_column(String(50))
    space: Mapped[dict[str, Any]]
    constraints: Mapped[dict[str, Any]]
    objectives: Mapped[list[Any]]
    baseline: Mapped[dict[str, Any]]
    input_shape: Mapped[list[Any]]
    duration_s: Mapped[float] = mapped_column(Float)
    n_evaluated: Mapped[int] = mapped_column(BigInteger)
    created: Mapped[datetime] = mapped_column(default=utcnow)


class Candidate(Base):
    __tablename__ = "dse_candidate"
    __table_args__ = (UniqueConstraint("run_id", "index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(
        ForeignKey("dse_search_run.id", ondelete="CASCADE"), index=True
    )
    index: Mapped[int] = mapped_column(Integer)
    front: Mapped[int] = mapped_column(Integer)
    exits: Mapped[list[Any]]
    th_pix: Mapped[list[Any]]
    th_img: Mapped[float] = mapped_column(Float)
    miou: Mapped[float] = mapped_column(Float)
    latency_ms: Mapped[float] = mapped_column(Float)
    latency_p95_ms: Mapped[float] = mapped_column(Float)
    gflops: Mapped[float] = mapped_column(Float)
    exit_rates: Mapped[dict[str, Any]]
    feasible: Mapped[bool] = mapped_column(Boolean)
    anytime_ms: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)


class Verification(Base):
    __tablename__ = "dse_verification"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uid: Mapped[str] = mapped_column(String(32), unique=True)
    run_id: Mapped[int] = mapped_column(
        ForeignKey("dse_search_run.id", ondelete="CASCADE"), index=True
    )
    candidate_index: Mapped[int] = mapped_column(Integer)
    device_id: Mapped[int] = mapped_column(ForeignKey("dse_device.id", ondelete="CASCADE"))
    dataset: Mapped[str] = mapped_column(String(200))
    split: Mapped[str] = mapped_column(String(100))
    predicted: Mapped[dict[str, Any]]
    measured: Mapped[dict[str, Any]]
    created: Mapped[datetime] = mapped_column(default=utcnow)


TABLES: list[str] = sorted(Base.metadata.tables)
