"""The exit policy on hand-made maps whose answer can be checked by eye."""

import math

import pytest
import torch

from training.errors import TrainingError
from training.policy import (
    ExitDecision,
    check_threshold,
    confidence_map,
    correct_edges,
    image_confidence,
    semantic_edges,
)

# Two regions side by side: class 0 in columns 0-2, class 1 in columns 3-5.
LABELS = torch.tensor([[0, 0, 0, 1, 1, 1]] * 6)[None]
# Confident inside the regions (0.9), unsure on the two columns along the boundary (0.2).
CONF = torch.tensor([[0.9, 0.9, 0.2, 0.2, 0.9, 0.9]] * 6)[None]


def _logits_for(conf: torch.Tensor, labels: torch.Tensor, num_classes: int = 10) -> torch.Tensor:
    """Logits whose softmax top-1 is `conf` on class `labels` (others share the rest equally)."""
    value = torch.log(conf * (num_classes - 1) / (1 - conf))  # > 0 as conf > 1 / num_classes
    logits = torch.zeros(conf.shape[0], num_classes, *conf.shape[1:])
    return logits.scatter(1, labels[:, None], value[:, None])


def test_edges_are_the_two_columns_along_the_label_change() -> None:
    edges = semantic_edges(LABELS)
    expected = torch.zeros(1, 6, 6, dtype=torch.bool)
    expected[:, :, 2:4] = True
    assert torch.equal(edges, expected)
    widened = semantic_edges(LABELS, edge_width=1)
    expected[:, :, 1:5] = True
    assert torch.equal(widened, expected)
    assert not semantic_edges(torch.zeros(1, 4, 4, dtype=torch.long)).any()


def test_edge_pixels_take_the_median_of_their_window() -> None:
    # 5x5 window around column 2 sees columns 0-4: 0.9 0.9 0.2 0.2 0.9 -> median 0.9.
    corrected = correct_edges(CONF, LABELS, window=2)
    assert torch.allclose(corrected, torch.full((1, 6, 6), 0.9))
    # A 3x3 window around column 2 sees 0.9 0.2 0.2 -> median stays 0.2.
    narrow = correct_edges(CONF, LABELS, window=1)
    assert torch.allclose(narrow, CONF)


def test_non_edge_pixels_keep_their_confidence() -> None:
    conf = CONF.clone()
    conf[0, 0, 0] = 0.1  # inside region 0, far from the boundary
    corrected = correct_edges(conf, LABELS, window=2)
    assert corrected[0, 0, 0].item() == pytest.approx(0.1)
    assert torch.allclose(corrected[0, :, 2:4], torch.full((6, 2), 0.9))


def test_confidence_map_from_logits_with_and_without_correction() -> None:
    logits = _logits_for(CONF, LABELS)
    assert torch.allclose(confidence_map(logits, edge_correction=False), CONF, atol=1e-6)
    assert torch.allclose(confidence_map(logits), torch.full((1, 6, 6), 0.9), atol=1e-6)


def test_image_confidence_counts_pixels_at_or_above_threshold() -> None:
    assert image_confidence(CONF, 0.5).tolist() == pytest.approx([4 / 6])
    assert image_confidence(CONF, 0.9).tolist() == pytest.approx([4 / 6])  # >= counts
    assert image_confidence(CONF, 0.95).tolist() == [0.0]
    batch = torch.cat([CONF, torch.full((1, 6, 6), 0.3)])
    assert image_confidence(batch, 0.5).tolist() == pytest.approx([4 / 6, 0.0])


def test_decision_module_matches_the_functions() -> None:
    logits = _logits_for(CONF, LABELS)
    assert ExitDecision()(logits, 0.5).tolist() == pytest.approx([1.0])
    assert ExitDecision(edge_correction=False)(logits, 0.5).tolist() == pytest.approx([4 / 6])
    ops = ExitDecision().operations(num_classes=2, height=6, width=6)
    assert ops > ExitDecision(edge_correction=False).operations(num_classes=2, height=6, width=6) > 0


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.01, math.nan])
def test_thresholds_outside_unit_interval_are_rejected(bad: float) -> None:
    with pytest.raises(TrainingError, match=r"\(0, 1\]"):
        check_threshold("th_pix", bad)
    assert check_threshold("th_img", 1.0) == 1.0
