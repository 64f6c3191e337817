"""Per-image, per-class true positives, false positives and false negatives.

Summed over any subset of images (the images that a configuration routes to one exit) these
give the exact mIoU of that routing (`db.counts`), which is what the search needs.
"""

from __future__ import annotations

import torch

from profiling.errors import ProfilingError


def label_keys(target: torch.Tensor, *, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """Per-pixel bincount offsets of the truth, shared by every exit of a batch.

    key = (image * (C + 1) + truth) * C, with ignored pixels as an extra truth row C that is
    dropped after counting (cheaper than gathering the labelled pixels).

    Raises:
        ProfilingError: when a label is neither a class nor the ignore index (the checkpoint
            and the data disagree on the number of classes).
    """
    if target.dim() != 3:
        raise ValueError(f"target: expected [N, H, W], got {tuple(target.shape)}")
    n, c = target.shape[0], num_classes
    target = target.to(torch.int64)
    ignored = target == ignore_index
    bad = ~ignored & ((target < 0) | (target >= c))
    if bool(bad.any()):
        label = int(target[bad][0])
        raise ProfilingError(
            f"label {label} found in the data but the network has {c} classes; "
            "use a checkpoint trained on this dataset"
        )
    truth = torch.where(ignored, c, target)
    image = torch.arange(n, device=target.device).view(n, 1, 1)
    return (image * (c + 1) + truth) * c


def counts_from_keys(keys: torch.Tensor, pred: torch.Tensor, *, num_classes: int
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TP, FP, FN per image and class ([N, C] int64, CPU) from `label_keys` and predictions."""
    if keys.shape != pred.shape:
        raise ValueError(f"pred: expected shape {tuple(keys.shape)}, got {tuple(pred.shape)}")
    n, c = keys.shape[0], num_classes
    flat = (keys + pred.to(keys.device, torch.int64)).reshape(-1)
    confusion = torch.bincount(flat, minlength=n * (c + 1) * c).reshape(n, c + 1, c)[:, :c].cpu()
    tp = torch.diagonal(confusion, dim1=1, dim2=2).clone()
    fp = confusion.sum(dim=1) - tp  # predicted as the class, truth elsewhere
    fn = confusion.sum(dim=2) - tp  # truth is the class, predicted elsewhere
    return tp, fp, fn


def class_counts(
    pred: torch.Tensor, target: torch.Tensor, *, num_classes: int, ignore_index: int = 255
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TP, FP and FN per image and class, from one bincount over (image, truth, prediction).

    Args:
        pred: int tensor [N, H, W] of predicted classes in [0, num_classes).
        target: int tensor [N, H, W] of true classes; ``ignore_index`` pixels are left out.
        num_classes: C.
        ignore_index: label of pixels that count for nothing.

    Returns:
        (tp, fp, fn), each int64 [N, C] on the CPU.

    Raises:
        ProfilingError: a label that is neither a class nor the ignore index.
    """
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(f"pred/target: expected equal [N, H, W] shapes, got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    keys = label_keys(target.to(pred.device), num_classes=num_classes, ignore_index=ignore_index)
    return counts_from_keys(keys, pred, num_classes=num_classes)
