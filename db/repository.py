"""Repository functions: take a `Session`, return frozen records from `db.records`.

The code lives in small private modules by subject; this module is the one place to import from.
Writes are idempotent upserts keyed by provenance; wrap a unit of work in `session_scope`.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from db._accuracy import (
    add_accuracy_chunk,
    completed_samples,
    find_accuracy_profiles,
    finish_accuracy_profile,
    get_accuracy_profile,
    load_accuracy,
    missing_chunks,
    summarise,
    upsert_accuracy_profile,
)
from db._catalog import (
    DeviceChoice,
    count_rows,
    device_runtime,
    fingerprint_sha256,
    get_calibration_set,
    get_device,
    get_model,
    list_calibration_sets,
    list_devices,
    list_exits,
    list_models,
    names_with_several_setups,
    runtime_label,
    select_device,
    upsert_calibration_set,
    upsert_device,
    upsert_exits,
    upsert_model,
)
from db._latency import (
    latency_stats,
    list_path_checks,
    list_profile_quality,
    load_latency,
    upsert_latency,
    upsert_profile_quality,
)
from db._search import (
    add_candidates,
    add_verification,
    create_search_run,
    finish_search_run,
    get_candidate,
    get_search_run,
    list_candidates,
    list_search_runs,
    list_verifications,
)
from db.models import Base


def row_counts(s: Session) -> dict[str, int]:
    """Rows per store table (`dse db info`)."""
    return {
        mapper.class_.__tablename__: count_rows(s, mapper.class_)
        for mapper in sorted(Base.registry.mappers, key=lambda m: m.class_.__tablename__)
    }


__all__ = [
    "DeviceChoice", "device_runtime", "names_with_several_setups", "runtime_label",
    "select_device",
    "add_accuracy_chunk", "add_candidates", "add_verification", "completed_samples",
    "create_search_run", "find_accuracy_profiles", "fingerprint_sha256", "finish_accuracy_profile",
    "finish_search_run", "get_accuracy_profile", "get_calibration_set", "get_candidate",
    "get_device", "get_model", "get_search_run", "latency_stats", "list_calibration_sets",
    "list_candidates",
    "list_devices", "list_exits", "list_models", "list_search_runs", "list_verifications",
    "list_path_checks", "list_profile_quality", "load_accuracy", "load_latency", "missing_chunks",
    "row_counts", "summarise",
    "upsert_accuracy_profile", "upsert_calibration_set", "upsert_device", "upsert_exits",
    "upsert_latency", "upsert_model", "upsert_profile_quality",
]
