"""Confidence-histogram bin edges and per-image histograms of pixel confidences.

The search reads an image's confidence c_img (the share of pixels whose corrected confidence is
>= th_pix) from a stored histogram instead of re-running the network. That is exact when th_pix
is one of the edges below 1.0. With B bins and B + 1 edges (0.0 first, 1.0 last):

    hist[s, k] = #pixels of image s with edges[k] <= conf < edges[k + 1]   (k < B - 1)
    hist[s, B - 1] = #pixels with edges[B - 1] <= conf <= 1.0              (closed at 1.0)

hence ``#pixels with conf >= edges[k] == hist[s, k:].sum()`` for every k < B. Only th_pix = 1.0
(the last edge) is not exact: it would need saturated pixels apart, and no useful policy uses it.
Comparisons are made in float32, like the network's own ``conf >= th_pix`` on a float32 tensor,
so a pixel sits on the same side of a threshold in the profile and in the real cascade.
"""

from __future__ import annotations

import numpy as np
import torch

# 0.00..0.90 in steps of 0.01, then 0.900..1.000 in steps of 0.001: confidences of a trained
# network crowd near 1, where the useful thresholds are.
_COARSE_STEPS = 100
_FINE_STEPS = 1000


def confidence_edges() -> np.ndarray:
    """Default bin edges (float64, 191 edges = 190 bins from 0.0 to 1.0, denser above 0.9).

    Built from integers and rounded, so ``0.95`` in the search grid equals an edge exactly.
    """
    coarse = np.arange(0, 90) / _COARSE_STEPS
    fine = np.arange(900, _FINE_STEPS + 1) / _FINE_STEPS
    return np.round(np.concatenate([coarse, fine]), 6)


def validate_edges(edges: np.ndarray) -> np.ndarray:
    """Check that edges are usable as histogram lower bounds; returns them as float64.

    Raises:
        ValueError: when the edges are not strictly increasing from 0.0 to 1.0 or too few.
    """
    arr = np.asarray(edges, dtype=np.float64)
    if arr.ndim != 1 or arr.size < 2:
        raise ValueError("edges: need a 1-D array of at least 2 values")
    if arr[0] != 0.0 or arr[-1] != 1.0:
        raise ValueError("edges: must start at 0.0 and end at 1.0")
    if not np.all(np.diff(arr) > 0):
        raise ValueError("edges: must be strictly increasing")
    if np.unique(arr.astype(np.float32)).size != arr.size:
        raise ValueError("edges: two edges collapse to the same float32 value")
    return arr


def confidence_histograms(conf: torch.Tensor, edges: np.ndarray) -> torch.Tensor:
    """Per-image histograms of a confidence map, in one vectorised pass.

    Args:
        conf: float tensor [N, h, w] (or [N, P]) of pixel confidences in [0, 1].
        edges: bin lower bounds, see the module docstring.

    Returns:
        int64 tensor [N, B] on the CPU, B = len(edges) - 1; each row sums to h * w.
    """
    if conf.dim() < 2:
        raise ValueError("conf: expected [N, h, w] or [N, P]")
    n = conf.shape[0]
    flat = conf.detach().reshape(n, -1).to(torch.float32)
    bounds = torch.as_tensor(np.asarray(edges, dtype=np.float32), device=flat.device)
    num_bins = bounds.numel() - 1
    # right=True: index i with bounds[i-1] <= v < bounds[i]; minus one is the bin of v.
    bins = torch.bucketize(flat, bounds, right=True).sub_(1).clamp_(0, num_bins - 1)
    offsets = torch.arange(n, device=flat.device).unsqueeze(1) * num_bins
    counts = torch.bincount((bins + offsets).reshape(-1), minlength=n * num_bins)
    return counts.reshape(n, num_bins).to("cpu", torch.int64)


def share_at_least(hist: np.ndarray, edges: np.ndarray, th_pix: float) -> np.ndarray:
    """c_img per image for a threshold that is an edge below 1.0: share of pixels >= th_pix.

    Raises:
        ValueError: when th_pix is not such an edge (the answer would not be exact).
    """
    lower = np.asarray(edges)[:-1]
    matches = np.flatnonzero(np.isclose(lower, th_pix, rtol=0.0, atol=1e-9))
    if matches.size != 1:
        raise ValueError(f"th_pix: {th_pix} is not a histogram edge below 1.0")
    hist = np.asarray(hist)
    return hist[..., int(matches[0]) :].sum(axis=-1) / hist.sum(axis=-1)
