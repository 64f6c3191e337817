"""Arrays as checksummed `.npy` bytes: compact, portable, and verified when read.

A stored array is `MAGIC + sha256(npy) + npy`: the `.npy` bytes of the array (no pickled
objects) behind a fixed tag and the sha256 of those bytes. Reading checks the tag, the checksum,
then the `.npy` header (dtype, shape, and that the data is exactly as long as the header says)
before touching the data, so a flipped bit, a foreign format (`.npz`, text) or a header that
claims a huge array is one `StorageError`, never a wrong number, a traceback or an allocation.
"""

from __future__ import annotations

import ast
import hashlib
import io
from collections.abc import Sequence

import numpy as np

from db.errors import StorageError

MAGIC = b"DSEARR1\x00"  # schema revision 0006 onwards; earlier stores held bare .npy bytes
_DIGEST = 32
_NPY_MAGIC = b"\x93NUMPY"
_MAX_HEADER = 4096  # numpy writes headers of a few hundred bytes


def npy_bytes(arr: np.ndarray) -> bytes:
    """The plain `.npy` bytes of an array (no pickled objects)."""
    arr = np.asarray(arr)
    if arr.dtype == object:
        raise ValueError("arr must not hold Python objects")
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def seal(npy: bytes) -> bytes:
    """`.npy` bytes -> the stored form (tag, checksum, bytes)."""
    return MAGIC + hashlib.sha256(npy).digest() + npy


def to_bytes(arr: np.ndarray) -> bytes:
    """Serialise an array in the stored form: checksummed `.npy` bytes."""
    return seal(npy_bytes(arr))


def from_bytes(
    blob: bytes,
    dtype: np.dtype | type | str,
    shape: Sequence[int | None] | None = None,
    *,
    where: str = "a stored array",
) -> np.ndarray:
    """Read a stored array back, refusing damage and a dtype or shape other than expected.

    Args:
        blob: bytes written by `to_bytes`.
        dtype: the dtype the caller expects.
        shape: the expected shape; `None` entries match any length, `None` skips the check.
        where: names the row and column in the error (e.g. "dse_latency row 7 samples_ms").

    Raises:
        StorageError: a checksum mismatch, a foreign format, or another dtype or shape.
    """
    data = bytes(blob)
    damaged = f"{where} is damaged"
    if not data.startswith(MAGIC):
        what = "a bare .npy without checksum" if data.startswith(_NPY_MAGIC) else "not a stored array"
        raise StorageError(f"{damaged} ({what}); restore the store from a backup or measure again")
    digest, npy = data[len(MAGIC) : len(MAGIC) + _DIGEST], data[len(MAGIC) + _DIGEST :]
    if hashlib.sha256(npy).digest() != digest:
        raise StorageError(
            f"{damaged} (its checksum does not match its bytes); restore the store from a backup "
            "or measure again"
        )
    arr_dtype, arr_shape, offset = _header(npy, damaged)
    want = np.dtype(dtype)
    if arr_dtype != want:
        raise StorageError(f"{damaged} (dtype {arr_dtype}, expected {want})")
    if shape is not None and (
        len(arr_shape) != len(shape)
        or any(w is not None and g != w for g, w in zip(arr_shape, shape, strict=True))
    ):
        raise StorageError(f"{damaged} (shape {arr_shape}, expected {tuple(shape)})")
    count = int(np.prod(arr_shape, dtype=object))
    if len(npy) - offset != count * want.itemsize:
        raise StorageError(f"{damaged} (its header claims {arr_shape}, its data does not fit)")
    return np.frombuffer(npy, dtype=want, count=count, offset=offset).reshape(arr_shape).copy()


def _header(npy: bytes, damaged: str) -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, shape, data offset) of `.npy` bytes, read without numpy's allocation."""
    if not npy.startswith(_NPY_MAGIC) or len(npy) < 10:
        raise StorageError(f"{damaged} (not .npy bytes)")
    major = npy[6]
    if major == 1:
        size, start = int.from_bytes(npy[8:10], "little"), 10
    elif major in (2, 3):
        size, start = int.from_bytes(npy[8:12], "little"), 12
    else:
        raise StorageError(f"{damaged} (.npy version {major})")
    if size > _MAX_HEADER or start + size > len(npy):
        raise StorageError(f"{damaged} (a .npy header of {size} bytes)")
    try:
        header = ast.literal_eval(npy[start : start + size].decode("latin1"))
        dtype = np.dtype(header["descr"])
        shape = tuple(int(v) for v in header["shape"])
        fortran = bool(header["fortran_order"])
    except (ValueError, SyntaxError, TypeError, KeyError, MemoryError, RecursionError) as e:
        raise StorageError(f"{damaged} (an unreadable .npy header)") from e
    if fortran or dtype.hasobject or any(v < 0 for v in shape):
        raise StorageError(f"{damaged} (a .npy header this store never writes)")
    return dtype, shape, start + size
