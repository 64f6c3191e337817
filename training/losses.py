"""Losses of MESS training: class-weighted cross-entropy and positive-filtering distillation (PFD).

PFD (method.md, stage 2): an exit is pulled towards the final exit's softened prediction only at
pixels where the final exit's top-1 class is right, so exits never learn the teacher's mistakes:
``L_i = CE(z_i, y) + a * T^2 * mean_{p in P} KL(softmax(z_N(p)/T) || softmax(z_i(p)/T))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.data import IGNORE_INDEX


def segmentation_ce(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Pixel-wise cross-entropy; 0 (still differentiable) when every pixel is ignored."""
    if bool((target != ignore_index).any()):
        return F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index)
    return logits.sum() * 0.0


def positive_filter_mask(
    teacher_logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """bool [N, H, W]: pixels whose teacher top-1 class equals a (non-ignored) ground truth."""
    return (teacher_logits.argmax(dim=1) == target) & (target != ignore_index)


def filtered_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    pixel_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over masked pixels of KL(softmax(teacher/T) || softmax(student/T)); 0 if none masked.

    The teacher is detached: distillation never moves the final exit. ``pixel_weight`` [N, H, W]
    turns the mean into a weighted mean (sum w * KL / sum w over the masked pixels).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not bool(mask.any()):
        return student_logits.sum() * 0.0
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    per_pixel = (log_teacher.exp() * (log_teacher - log_student)).sum(dim=1)  # [N, H, W]
    if pixel_weight is None:
        return per_pixel[mask].mean()
    w = pixel_weight[mask]
    return (per_pixel[mask] * w).sum() / w.sum().clamp_min(1e-12)


def pfd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: float = 1.0,
    temperature: float = 1.0,
    weight: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    distill_class_weights: bool = False,
) -> torch.Tensor:
    """CE(student, y) + alpha * T^2 * filtered KL towards the teacher (alpha = 0: plain CE).

    ``distill_class_weights``: weight each distilled pixel by the class weight of its label, as
    the CE term does. With rare classes up-weighted in the CE only, the unweighted KL mean (the
    method's) is dominated by the frequent classes the teacher gets right.
    """
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    ce = segmentation_ce(student_logits, target, weight=weight, ignore_index=ignore_index)
    if alpha == 0:
        return ce
    mask = positive_filter_mask(teacher_logits, target, ignore_index=ignore_index)
    pixel_weight = None
    if distill_class_weights and weight is not None:
        pixel_weight = weight[target.clamp(0, weight.numel() - 1)]  # ignored pixels: not in mask
    kl = filtered_kl(
        student_logits, teacher_logits, mask, temperature=temperature, pixel_weight=pixel_weight
    )
    return ce + alpha * temperature * temperature * kl
