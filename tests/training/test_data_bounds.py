"""What a split or a size may ask for is bounded before anything is generated or allocated."""

from __future__ import annotations

import pytest

from training._synthetic import MAX_SIZE
from training.data import build_dataset
from training.errors import TrainingError


@pytest.mark.parametrize(("split", "size"), [
    ("val[0:99999999999999999999999]", None),
    ("val[99999999999999999999999:]", None),
    ("val", 10**30),
    ("val", MAX_SIZE + 1),
])
def test_synthetic_requests_above_the_split_size_are_refused(split: str, size: int | None) -> None:
    with pytest.raises(TrainingError, match=f"at most {MAX_SIZE:,}|the split has 64"):
        build_dataset("synthetic", split=split, input_size=(8, 8), size=size)


def test_the_largest_synthetic_split_is_allowed_and_lazy() -> None:
    ds = build_dataset("synthetic", split=f"val[{MAX_SIZE - 2}:{MAX_SIZE}]", input_size=(8, 8))
    assert len(ds) == 2 and ds.sample_ids[-1].endswith(f"{MAX_SIZE - 1:06d}")


@pytest.mark.parametrize("split", ["vall", "Val", "", "  ", "train[0:2]x", "[0:2]"])
def test_unknown_or_empty_split_names_are_refused(split: str) -> None:
    """A typo used to draw a new set of synthetic images: a new calibration set by accident."""
    with pytest.raises(TrainingError, match="no split|empty|not a selection"):
        build_dataset("synthetic", split=split, input_size=(8, 8), size=2)
