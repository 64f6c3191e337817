"""Per-image TP/FP/FN against a direct loop, and mIoU from counts."""

import numpy as np
import pytest
import torch

from db.counts import miou_from_counts, pixel_accuracy_from_counts
from profiling.counts import class_counts
from profiling.errors import ProfilingError


def _loop_counts(pred: torch.Tensor, target: torch.Tensor, c: int) -> np.ndarray:
    out = np.zeros((3, pred.shape[0], c), dtype=np.int64)
    for i in range(pred.shape[0]):
        p, t = pred[i].flatten().tolist(), target[i].flatten().tolist()
        for pv, tv in zip(p, t, strict=True):
            if tv == 255:
                continue
            if pv == tv:
                out[0, i, pv] += 1
            else:
                out[1, i, pv] += 1
                out[2, i, tv] += 1
    return out


def test_counts_match_a_direct_loop_and_ignore_255() -> None:
    gen = torch.Generator().manual_seed(0)
    c = 4
    pred = torch.randint(0, c, (3, 6, 7), generator=gen)
    target = torch.randint(0, c, (3, 6, 7), generator=gen)
    target[0, :2] = 255
    target[2, 3, 3] = 255
    tp, fp, fn = class_counts(pred, target, num_classes=c)
    expected = _loop_counts(pred, target, c)
    assert tp.dtype == torch.int64 and tp.shape == (3, c)
    np.testing.assert_array_equal(tp.numpy(), expected[0])
    np.testing.assert_array_equal(fp.numpy(), expected[1])
    np.testing.assert_array_equal(fn.numpy(), expected[2])
    labelled = int((target != 255).sum())
    assert int(tp.sum() + fn.sum()) == labelled


def test_label_beyond_the_classes_is_a_user_error() -> None:
    pred = torch.zeros(1, 2, 2, dtype=torch.int64)
    target = torch.tensor([[[0, 1], [5, 255]]])
    with pytest.raises(ProfilingError, match="label 5 .* 3 classes"):
        class_counts(pred, target, num_classes=3)


def test_miou_skips_absent_classes() -> None:
    tp = np.array([[2, 0, 0]])
    fp = np.array([[1, 1, 0]])
    fn = np.array([[1, 0, 0]])
    # class 0: 2/4, class 1: 0/1, class 2: absent
    assert miou_from_counts(tp, fp, fn) == pytest.approx((0.5 + 0.0) / 2)
    assert miou_from_counts(tp * 0, fp * 0, fn * 0) == 0.0
    assert pixel_accuracy_from_counts(tp, fn) == pytest.approx(2 / 3)


def test_class_counts_match_the_training_confusion_matrix() -> None:
    from training.metrics import ConfusionMatrix

    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (5, 6, 7), generator=gen)
    target[0, 0, :3] = 255
    pred = torch.randint(0, 4, (5, 6, 7), generator=gen)
    tp, fp, fn = class_counts(pred, target, num_classes=4)
    assert tp.shape == (5, 4)
    for i in range(5):
        cm = ConfusionMatrix(4)
        cm.update(pred[i : i + 1], target[i : i + 1])
        assert tp[i].tolist() == cm.matrix.diagonal().tolist()
        assert fn[i].tolist() == (cm.matrix.sum(1) - cm.matrix.diagonal()).tolist()
        assert fp[i].tolist() == (cm.matrix.sum(0) - cm.matrix.diagonal()).tolist()
    whole = ConfusionMatrix(4)
    whole.update(pred, target)
    assert miou_from_counts(tp.numpy(), fp.numpy(), fn.numpy()) == pytest.approx(
        whole.compute().miou)
