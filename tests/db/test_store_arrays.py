"""`.npy` bytes round-trip and refuse arrays of another dtype or shape."""

import numpy as np
import pytest

from db import StorageError, from_bytes, to_bytes


def test_round_trip_keeps_values_dtype_and_shape() -> None:
    arr = np.arange(12, dtype=np.int64).reshape(3, 4)
    back = from_bytes(to_bytes(arr), np.int64, (3, 4))
    np.testing.assert_array_equal(back, arr)
    assert back.dtype == np.int64
    assert from_bytes(to_bytes(arr), "int64", (None, 4)).shape == (3, 4)


def test_wrong_dtype_or_shape_is_refused() -> None:
    blob = to_bytes(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(StorageError, match="dtype float32, expected float64"):
        from_bytes(blob, np.float64, (2, 3))
    with pytest.raises(StorageError, match=r"shape \(2, 3\), expected \(3, 2\)"):
        from_bytes(blob, np.float32, (3, 2))
    with pytest.raises(StorageError, match="shape"):
        from_bytes(blob, np.float32, (6,))


def test_garbage_bytes_and_objects_are_refused() -> None:
    with pytest.raises(StorageError, match="not a stored array"):
        from_bytes(b"not an array", np.int64)
    with pytest.raises(ValueError, match="objects"):
        to_bytes(np.array([{"a": 1}], dtype=object))
