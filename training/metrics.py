"""Segmentation metrics built on torch.bincount, honouring an ignore index.

``ConfusionMatrix`` accumulates over batches (torchvision's reference-scripts shape) for training
and validation. The per-image counts that profiling stores are `profiling.counts.class_counts`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from training.data import IGNORE_INDEX


def _valid_pairs(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    keep = target != ignore_index
    return pred[keep].long(), target[keep].long()


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, *, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """int64 [C, C] with rows = ground truth, columns = prediction; ignored pixels left out."""
    pred, target = _valid_pairs(pred, target, num_classes, ignore_index)
    if target.numel() and (int(target.max()) >= num_classes or int(target.min()) < 0):
        raise ValueError(f"target has a class outside 0..{num_classes - 1}")
    if pred.numel() and (int(pred.max()) >= num_classes or int(pred.min()) < 0):
        raise ValueError(f"prediction has a class outside 0..{num_classes - 1}")
    flat = target * num_classes + pred
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


@dataclass(frozen=True, kw_only=True)
class SegmentationScores:
    """What a confusion matrix says; ``iou`` per class is NaN for classes never seen nor predicted."""

    miou: float
    pixel_accuracy: float
    iou: tuple[float, ...]

    def __post_init__(self) -> None:
        if not 0.0 <= self.miou <= 1.0:
            raise ValueError(f"miou must be in [0, 1], got {self.miou}")
        if not 0.0 <= self.pixel_accuracy <= 1.0:
            raise ValueError(f"pixel_accuracy must be in [0, 1], got {self.pixel_accuracy}")


class ConfusionMatrix:
    """Accumulator: ``update(pred, target)`` per batch, ``compute()`` at the end, ``reset()``.

    ``update`` also accepts logits [N, C, H, W] (argmax over C is taken).
    """

    def __init__(self, num_classes: int, *, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.matrix.zero_()

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        if pred.dim() == target.dim() + 1:
            pred = pred.argmax(dim=1)
        cm = confusion_matrix(pred, target, self.num_classes, ignore_index=self.ignore_index)
        self.matrix += cm.cpu()

    def compute(self) -> SegmentationScores:
        m = self.matrix.double()
        tp = m.diagonal()
        union = m.sum(0) + m.sum(1) - tp
        iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
        present = union > 0
        miou = float(iou[present].mean()) if bool(present.any()) else 0.0
        total = float(m.sum())
        pixel_accuracy = float(tp.sum()) / total if total > 0 else 0.0
        return SegmentationScores(
            miou=miou, pixel_accuracy=pixel_accuracy, iou=tuple(float(v) for v in iou)
        )
