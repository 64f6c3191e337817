"""Losses: class-weighted CE and positive-filtering distillation on a hand-made case."""

import pytest
import torch
import torch.nn.functional as F

from training.data import IGNORE_INDEX
from training.losses import filtered_kl, pfd_loss, positive_filter_mask, segmentation_ce


def _hand_made() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """1 image, 2 classes, 1x4 pixels: the teacher is right at pixels 0 and 2 only."""
    target = torch.tensor([[[0, 1, 1, IGNORE_INDEX]]])
    teacher = torch.zeros(1, 2, 1, 4)
    teacher[0, 0, 0] = torch.tensor([3.0, 2.0, -1.0, 5.0])  # argmax: 0, 0, 1, 0
    teacher[0, 1, 0] = torch.tensor([0.0, 0.0, 1.0, 0.0])
    student = torch.tensor([[[[0.5, 0.1, -0.3, 0.2]], [[0.0, 0.4, 0.2, -0.1]]]])
    return student, teacher, target


def test_positive_filter_masks_exactly_the_pixels_the_teacher_gets_right() -> None:
    _, teacher, target = _hand_made()
    mask = positive_filter_mask(teacher, target)
    # pixel 1: teacher wrong; pixel 3: ignored even though the teacher says 0
    assert mask.tolist() == [[[True, False, True, False]]]


def test_pfd_loss_equals_the_formula_by_hand() -> None:
    student, teacher, target = _hand_made()
    alpha, temperature = 0.7, 2.0
    loss = pfd_loss(student, teacher, target, alpha=alpha, temperature=temperature)
    ce = F.cross_entropy(student, target, ignore_index=IGNORE_INDEX)
    kls = []
    for p in (0, 2):
        t = F.softmax(teacher[0, :, 0, p] / temperature, dim=0)
        s = F.softmax(student[0, :, 0, p] / temperature, dim=0)
        kls.append(float((t * (t.log() - s.log())).sum()))
    expected = float(ce) + alpha * temperature**2 * sum(kls) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(pfd_loss(student, teacher, target, alpha=0.0)) == pytest.approx(float(ce))


def test_pfd_gradient_never_reaches_the_teacher_nor_wrong_pixels() -> None:
    student, teacher, target = _hand_made()
    student = student.clone().requires_grad_(True)
    teacher = teacher.clone().requires_grad_(True)
    mask = positive_filter_mask(teacher, target)
    filtered_kl(student, teacher, mask).backward()
    assert teacher.grad is None
    assert student.grad is not None
    assert torch.all(student.grad[0, :, 0, 1] == 0) and torch.all(student.grad[0, :, 0, 3] == 0)
    assert torch.any(student.grad[0, :, 0, 0] != 0)


def test_no_positive_pixels_gives_zero_distillation() -> None:
    student, teacher, _ = _hand_made()
    target = torch.full((1, 1, 4), IGNORE_INDEX)
    assert float(pfd_loss(student, teacher, target)) == 0.0


def test_class_weights_change_the_ce() -> None:
    student, _, target = _hand_made()
    plain = segmentation_ce(student, target)
    weighted = segmentation_ce(student, target, weight=torch.tensor([1.0, 5.0]))
    assert float(plain) != pytest.approx(float(weighted))


def test_class_weighted_distillation_weights_each_kept_pixel_by_its_label() -> None:
    student, teacher, target = _hand_made()
    weight = torch.tensor([1.0, 5.0])
    kls = []
    for p in (0, 2):  # the kept pixels: labels 0 and 1
        t = F.softmax(teacher[0, :, 0, p], dim=0)
        s = F.softmax(student[0, :, 0, p], dim=0)
        kls.append(float((t * (t.log() - s.log())).sum()))
    ce = float(segmentation_ce(student, target, weight=weight))
    weighted = pfd_loss(student, teacher, target, weight=weight, distill_class_weights=True)
    plain = pfd_loss(student, teacher, target, weight=weight)
    assert float(weighted) == pytest.approx(ce + (1 * kls[0] + 5 * kls[1]) / 6, rel=1e-5)
    assert float(plain) == pytest.approx(ce + (kls[0] + kls[1]) / 2, rel=1e-5)
    # without class weights there is nothing to weight by: the method's plain mean
    assert float(pfd_loss(student, teacher, target, distill_class_weights=True)) == pytest.approx(
        float(pfd_loss(student, teacher, target)), rel=1e-6
    )
