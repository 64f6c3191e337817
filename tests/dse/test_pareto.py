"""Non-dominated sorting against a brute-force definition."""

from __future__ import annotations

import numpy as np
import pytest

from dse.pareto import (
    ParetoArchive,
    dominated_by_front,
    hypervolume_2d,
    nondominated_sort,
    top_fronts,
)


def brute_fronts(pts: np.ndarray) -> np.ndarray:
    n = len(pts)
    dom = [[bool(np.all(pts[j] <= pts[i]) and np.any(pts[j] < pts[i])) for j in range(n)]
           for i in range(n)]
    ranks = np.zeros(n, dtype=int)
    left = set(range(n))
    front = 1
    while left:
        cur = {i for i in left if not any(dom[i][j] for j in left)}
        for i in cur:
            ranks[i] = front
        left -= cur
        front += 1
    return ranks


@pytest.mark.parametrize(("seed", "m"), [(0, 2), (1, 2), (2, 3), (3, 2)])
def test_sort_matches_brute_force_with_ties(seed: int, m: int) -> None:
    rng = np.random.default_rng(seed)
    pts = rng.integers(0, 6, size=(60, m)).astype(float)  # small ints: many ties and twins
    expected = brute_fronts(pts)
    assert (nondominated_sort(pts) == expected).all()
    top = top_fronts(pts, 2)
    assert (top == np.where(expected <= 2, expected, 0)).all()


def test_archive_keeps_exact_best_fronts_when_fed_in_batches() -> None:
    rng = np.random.default_rng(5)
    pts = rng.random((400, 2))
    archive = ParetoArchive(2, 1, max_front=3, cap=10_000)
    for start in range(0, 400, 37):
        archive.add(pts[start: start + 37], np.arange(start, min(start + 37, 400))[:, None])
    expected = brute_fronts(pts)
    kept = set(archive.payload[:, 0].tolist())
    assert kept == set(np.flatnonzero(expected <= 3).tolist())
    assert (archive.fronts == expected[archive.payload[:, 0]]).all()


def test_archive_cap_drops_later_fronts_first() -> None:
    rng = np.random.default_rng(6)
    pts = rng.random((300, 2))
    archive = ParetoArchive(2, 1, max_front=5, cap=15)
    archive.add(pts, np.arange(300)[:, None])
    assert (archive.fronts >= 1).all() and 1 in archive.fronts
    assert len(archive.points) <= max(15, int((brute_fronts(pts) == 1).sum()))


def test_hypervolume_of_a_staircase() -> None:
    pts = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0], [3.0, 3.0]])
    assert hypervolume_2d(pts, np.array([4.0, 4.0])) == pytest.approx(1 * 1 + 1 * 2 + 1 * 3)


def test_dominated_by_front_matches_pairwise_check() -> None:
    rng = np.random.default_rng(8)
    cloud = rng.integers(0, 8, size=(80, 2)).astype(float)
    front = cloud[brute_fronts(cloud) == 1]
    pts = rng.integers(0, 8, size=(200, 2)).astype(float)
    expected = [bool(any(np.all(f <= p) and np.any(f < p) for f in front)) for p in pts]
    assert list(dominated_by_front(pts, front)) == expected
