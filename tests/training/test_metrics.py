"""Metrics: confusion matrix with ignore index, per-image counts, mIoU over present classes."""

import pytest
import torch

from training.data import IGNORE_INDEX
from training.metrics import ConfusionMatrix


def test_confusion_matrix_by_hand() -> None:
    target = torch.tensor([[[0, 0, 1, IGNORE_INDEX]]])
    pred = torch.tensor([[[0, 1, 1, 2]]])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
    scores = cm.compute()
    # class 0: 1/(1+0+1)=0.5, class 1: 1/(1+1)=0.5; class 2 absent from both -> left out
    assert scores.miou == pytest.approx(0.5)
    assert scores.pixel_accuracy == pytest.approx(2 / 3)
    assert scores.iou[2] != scores.iou[2]  # NaN
    cm.reset()
    assert int(cm.matrix.sum()) == 0


def test_update_accepts_logits_and_accumulates() -> None:
    target = torch.tensor([[[0, 1], [1, 1]]])
    logits = torch.zeros(1, 2, 2, 2)
    logits[:, 1] = 1.0  # predicts class 1 everywhere
    cm = ConfusionMatrix(2)
    cm.update(logits, target)
    cm.update(logits, target)
    assert cm.matrix.tolist() == [[0, 2], [0, 6]]
    assert cm.compute().miou == pytest.approx((0 + 6 / 8) / 2)


def test_out_of_range_classes_are_refused() -> None:
    cm = ConfusionMatrix(2)
    with pytest.raises(ValueError, match="target"):
        cm.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 5))
