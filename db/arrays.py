"""Arrays as `.npy` bytes: compact, portable, and checked for dtype and shape when read."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from db.errors import StorageError


def to_bytes(arr: np.ndarray) -> bytes:
    """Serialise an array as `.npy` bytes (no pickled objects)."""
    arr = np.asarray(arr)
    if arr.dtype == object:
        raise ValueError("arr must not hold Python objects")
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def from_bytes(
    blob: bytes, dtype: np.dtype | type | str, shape: Sequence[int | None] | None = None
) -> np.ndarray:
    """Read `.npy` bytes back, refusing a dtype or shape other than expected.

    Args:
        blob: bytes written by `to_bytes`.
        dtype: the dtype the caller expects.
        shape: the expected shape; `None` entries match any length, `None` skips the check.

    Raises:
        StorageError: the bytes are not an array of that dtype and shape (a damaged store).
    """
    try:
        arr = np.load(io.BytesIO(bytes(blob)), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise StorageError(f"a stored array is unreadable ({e}); the store is damaged") from e
    if arr.dtype != np.dtype(dtype):
        raise StorageError(
            f"a stored array has dtype {arr.dtype}, expected {np.dtype(dtype)}; the store is damaged"
        )
    if shape is not None and (
        arr.ndim != len(shape)
        or any(want is not None and got != want for got, want in zip(arr.shape, shape, strict=True))
    ):
        raise StorageError(
            f"a stored array has shape {arr.shape}, expected {tuple(shape)}; the store is damaged"
        )
    return arr
