"""Random but plausible profiles, for tests and the search benchmark (no network involved).

Later exits are more accurate and more confident, heads cost something, segments add up; the
numbers are random draws, never results of a real model.
"""

from __future__ import annotations

import numpy as np

from dse.data import AccuracyData, CostData


def random_accuracy(rng: np.random.Generator, *, num_positions: int = 4, heads: int = 2,
                    num_samples: int = 20, num_classes: int = 5, pixels: int = 64,
                    num_bins: int = 10) -> AccuracyData:
    """A profile with `heads` exits at each of `num_positions` positions plus the final exit."""
    exit_ids = tuple(f"p{p}/h{h}" for p in range(num_positions) for h in range(heads))
    positions = tuple(p for p in range(num_positions) for _ in range(heads))
    e = len(exit_ids)
    # ground truth per image: pixels split over a few classes (same for every exit)
    gt = rng.multinomial(pixels, rng.dirichlet(np.full(num_classes, 0.3), size=num_samples))
    quality = np.append(np.linspace(0.3, 0.85, e) if e else np.zeros(0), 0.9)
    quality = np.clip(quality[:, None] + rng.normal(0, 0.1, (e + 1, num_samples)), 0.02, 0.98)
    tp = rng.binomial(gt[None], quality[:, :, None])
    fn = gt[None] - tp
    # wrongly labelled pixels land on random classes as false positives
    fp = np.stack([np.stack([rng.multinomial(int(fn[i, s].sum()), np.full(num_classes,
                                                                          1 / num_classes))
                             for s in range(num_samples)]) for i in range(e + 1)])
    edges = np.round(np.linspace(0.0, 1.0, num_bins + 1), 6)
    weights = np.arange(1, num_bins + 1, dtype=np.float64)
    hist = np.stack([
        np.stack([rng.multinomial(pixels, _softmax(weights * quality[i, s] * 4 / num_bins))
                  for s in range(num_samples)]) for i in range(e)
    ]) if e else np.zeros((0, num_samples, num_bins), dtype=np.int64)
    return AccuracyData(exit_ids=exit_ids, position_index=positions, num_positions=num_positions,
                        edges=edges, tp=tp, fp=fp, fn=fn, hist=hist)


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max())
    return z / z.sum()


def random_costs(rng: np.random.Generator, data: AccuracyData) -> CostData:
    """Segment, head, decision and upsampling costs for every exit of `data` (ms and GFLOPs)."""
    p = data.num_positions
    seg = rng.uniform(1.0, 3.0, p + 1)
    return CostData(
        segment_ms=tuple(seg), segment_gflops=tuple(seg * 0.5),
        head_ms={e: float(rng.uniform(0.2, 1.5)) for e in data.exit_ids},
        head_gflops={e: float(rng.uniform(0.05, 0.6)) for e in data.exit_ids},
        decision_ms={e: float(rng.uniform(0.01, 0.1)) for e in data.exit_ids},
        decision_gflops={e: 0.001 for e in data.exit_ids},
        final_ms=float(rng.uniform(1.0, 2.0)), final_gflops=float(rng.uniform(0.5, 1.0)),
        upsample_ms={e: float(rng.uniform(0.05, 0.3)) for e in data.exit_ids},
        upsample_gflops={e: float(rng.uniform(0.0, 0.01)) for e in data.exit_ids},
        final_upsample_ms=float(rng.uniform(0.05, 0.3)),
        final_upsample_gflops=float(rng.uniform(0.0, 0.01)),
    )
