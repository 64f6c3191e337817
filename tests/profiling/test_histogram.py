"""Bin edges and per-image histograms: every edge is an exact threshold."""

import numpy as np
import pytest
import torch

from profiling.histogram import (
    confidence_edges,
    confidence_histograms,
    share_at_least,
    validate_edges,
)


def test_default_edges_are_fine_near_one() -> None:
    edges = validate_edges(confidence_edges())
    assert edges.size >= 100
    assert edges[0] == 0.0 and edges[-1] == 1.0
    above = edges[edges >= 0.9]
    assert np.diff(above).max() <= 0.001 + 1e-12
    assert np.diff(edges[edges < 0.9]).max() <= 0.01 + 1e-12
    # thresholds a search grid would use are edges exactly, not approximately
    for th in (0.5, 0.8, 0.9, 0.95, 0.99, 0.999):
        assert th in set(edges.tolist())


def test_bad_edges_are_rejected() -> None:
    with pytest.raises(ValueError, match="edges"):
        validate_edges(np.array([0.0, 0.5, 0.5, 1.0]))
    with pytest.raises(ValueError, match="edges"):
        validate_edges(np.array([0.1, 1.0]))


def _confidences(seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    conf = torch.rand(5, 9, 11, generator=gen) ** 0.2  # crowd near 1
    edges32 = torch.as_tensor(confidence_edges(), dtype=torch.float32)
    # pixels exactly on edges, at 0 and at 1: the boundary cases
    conf.view(-1)[:40] = edges32[torch.randint(0, edges32.numel(), (40,), generator=gen)]
    conf[0, 0, :3] = torch.tensor([0.0, 1.0, 1.0])
    return conf


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_edge_is_exact_against_direct_counting(seed: int) -> None:
    edges = confidence_edges()
    conf = _confidences(seed)
    hist = confidence_histograms(conf, edges).numpy()
    assert hist.shape == (5, edges.size - 1)
    assert (hist.sum(axis=1) == 9 * 11).all()
    for k, th in enumerate(edges[:-1]):
        direct = (conf >= float(th)).reshape(5, -1).sum(dim=1).numpy()  # the network's test
        assert (hist[:, k:].sum(axis=1) == direct).all(), f"edge {k} = {th}"
        share = share_at_least(hist, edges, float(th))
        np.testing.assert_allclose(share, direct / (9 * 11))


def test_share_at_least_refuses_a_threshold_between_edges() -> None:
    edges = confidence_edges()
    hist = confidence_histograms(_confidences(0), edges).numpy()
    with pytest.raises(ValueError, match="th_pix"):
        share_at_least(hist, edges, 0.9555)
    with pytest.raises(ValueError, match="th_pix"):
        share_at_least(hist, edges, 1.0)


def test_saturated_pixels_land_in_the_last_bin() -> None:
    edges = confidence_edges()
    hist = confidence_histograms(torch.tensor([[1.0, 1.0, 0.0, 0.9995]]), edges).numpy()
    assert hist[0, -1] == 3 and hist[0, 0] == 1
