"""Scores from per-class counts: the one home of mIoU and pixel accuracy from TP/FP/FN.

The store summarises a profile with them, the profilers and `dse verify` score a measurement
with them, and the search scores every configuration with them; all of those see the same
numbers. Plain numpy, so every layer can import it (db imports nothing of ours).
"""

from __future__ import annotations

import numpy as np


def miou_from_union(tp: np.ndarray, union: np.ndarray) -> np.ndarray:
    """Mean IoU over the classes present (union > 0), along the last (class) axis.

    Unions are whole pixel counts, so `max(union, 1)` divides exactly where a class is present
    and gives 0 / 1 where it is absent: no masked division, which keeps the search's blocks
    fast. A row with no class present scores 0.0.
    """
    iou_sum = (tp / np.maximum(union, 1)).sum(axis=-1)
    return iou_sum / np.maximum(np.count_nonzero(union, axis=-1), 1)


def miou_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> float:
    """mIoU of counts summed over every leading axis; classes never seen nor predicted are
    left out; 0.0 when no class has any pixel (an empty selection)."""
    classes = np.shape(tp)[-1]
    tp_c = np.asarray(tp).reshape(-1, classes).sum(axis=0)
    union = tp_c + np.asarray(fp).reshape(-1, classes).sum(axis=0)
    union = union + np.asarray(fn).reshape(-1, classes).sum(axis=0)
    return float(miou_from_union(tp_c, union))


def pixel_accuracy_from_counts(tp: np.ndarray, fn: np.ndarray) -> float:
    """Share of labelled pixels predicted right; 0.0 when nothing is labelled."""
    labelled = int(np.asarray(tp).sum() + np.asarray(fn).sum())
    return float(np.asarray(tp).sum() / labelled) if labelled else 0.0
