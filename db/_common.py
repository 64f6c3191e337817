"""Helpers shared by the repository modules: canonical JSON, provenance hashes, get-or-insert."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.errors import StorageError

T = TypeVar("T")


def canonical_json(value: Any, *, field: str) -> str:
    """Stable JSON text (sorted keys, no spaces) of a plain JSON value."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{field} must be plain JSON (str, int, float, bool, list, dict): {e}") from e


def plain_json(value: Any, *, field: str) -> Any:
    """The value as it will read back from a JSON column (tuples become lists, ...)."""
    return json.loads(canonical_json(value, field=field))


def sha256_json(value: Any, *, field: str) -> str:
    return hashlib.sha256(canonical_json(value, field=field).encode()).hexdigest()


def shape_key(shape: Sequence[int]) -> str:
    """`(1, 3, 64, 64)` -> `"1x3x64x64"`, the stored form of an input shape."""
    dims = [int(d) for d in shape]
    if not dims or any(d <= 0 for d in dims):
        raise ValueError(f"input_shape must be positive ints, got {tuple(shape)!r}")
    return "x".join(str(d) for d in dims)


def parse_shape(key: str) -> tuple[int, ...]:
    return tuple(int(d) for d in key.split("x"))


def aware(value: datetime) -> datetime:
    """SQLite returns naive datetimes; every stored time is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def insert_or_get(session: Session, row: T, lookup: Select[Any]) -> tuple[T, bool]:
    """Insert `row` unless `lookup` finds it; safe when another writer inserts it meanwhile.

    Returns:
        (the stored row, whether it was inserted now).
    """
    existing: T | None = session.scalars(lookup).first()
    if existing is not None:
        return existing, False
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        existing = session.scalars(lookup).first()
        if existing is None:
            raise
        return existing, False
    return row, True


def require(row: T | None, message: str) -> T:
    if row is None:
        raise StorageError(message)
    return row
