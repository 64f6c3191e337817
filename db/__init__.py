"""The measurement store: SQLAlchemy tables, Alembic migrations, repository functions.

Import the repository functions from `db.repository` and records from `db.records`; this package
re-exports the most used names.
"""

from db.arrays import from_bytes, to_bytes
from db.errors import StorageError
from db.merge import MergeReport, merge_stores
from db.records import (
    AccuracyArrays,
    AccuracyProfileRecord,
    CalibrationSetRecord,
    CandidateInput,
    CandidateRecord,
    DeviceRecord,
    ExitArrays,
    ExitInput,
    ExitRecord,
    ExitSummary,
    LatencyRecord,
    ModelRecord,
    SearchRunRecord,
    VerificationRecord,
)
from db.session import open_store, session_scope, upgrade

__all__ = [
    "AccuracyArrays", "AccuracyProfileRecord", "CalibrationSetRecord", "CandidateInput",
    "CandidateRecord", "DeviceRecord", "ExitArrays", "ExitInput", "ExitRecord", "ExitSummary",
    "LatencyRecord", "MergeReport", "ModelRecord", "SearchRunRecord", "StorageError", "VerificationRecord",
    "from_bytes", "merge_stores", "open_store", "session_scope", "to_bytes", "upgrade",
]
