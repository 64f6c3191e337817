"""Per-image, per-class true positives, false positives and false negatives.

Summed over any subset of images (the images that a configuration routes to one exit) these
give the exact mIoU of that routing, which is what the search needs.
"""

from __future__ import annotations

import numpy as np
import torch

from profiling.errors import ProfilingError


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
        ProfilingError: when a label is neither a class nor the ignore index (the checkpoint
            and the data disagree on the number of classes).
    """
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(f"pred/target: expected equal [N, H, W] shapes, got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    n, c = pred.shape[0], num_classes
    target = target.to(pred.device, torch.int64)
    pred = pred.to(torch.int64)
    valid = target != ignore_index
    bad = valid & ((target < 0) | (target >= c))
    if bool(bad.any()):
        label = int(target[bad][0])
        raise ProfilingError(
            f"label {label} found in the data but the network has {c} classes; "
            "use a checkpoint trained on this dataset"
        )
    image = torch.arange(n, device=pred.device).view(n, 1, 1).expand_as(pred)
    key = (image * c + target) * c + pred
    confusion = torch.bincount(key[valid], minlength=n * c * c).reshape(n, c, c).cpu()
    tp = torch.diagonal(confusion, dim1=1, dim2=2).clone()
    fp = confusion.sum(dim=1) - tp  # predicted as the class, truth elsewhere
    fn = confusion.sum(dim=2) - tp  # truth is the class, predicted elsewhere
    return tp, fp, fn


def miou_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> float:
    """mIoU of counts summed over every leading axis; classes never seen nor predicted are left out.

    Returns 0.0 when no class has any pixel (an empty selection).
    """
    tp_c = np.asarray(tp).reshape(-1, np.shape(tp)[-1]).sum(axis=0)
    union = tp_c + np.asarray(fp).reshape(-1, np.shape(fp)[-1]).sum(axis=0)
    union = union + np.asarray(fn).reshape(-1, np.shape(fn)[-1]).sum(axis=0)
    present = union > 0
    if not present.any():
        return 0.0
    return float(np.mean(tp_c[present] / union[present]))


def pixel_accuracy_from_counts(tp: np.ndarray, fn: np.ndarray) -> float:
    """Share of labelled pixels predicted right; 0.0 when nothing is labelled."""
    labelled = int(np.asarray(tp).sum() + np.asarray(fn).sum())
    return float(np.asarray(tp).sum() / labelled) if labelled else 0.0
