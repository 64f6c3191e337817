"""Non-dominated sorting (all objectives minimised) and a running archive of the best fronts.

Front 1 is the non-dominated set; front k+1 is non-dominated once fronts 1..k are removed.
Identical points share a front. Two objectives take O(n log n) (sort, then one binary search per
point); more objectives fall back to repeated peeling, O(n^2) per front.
"""

from __future__ import annotations

import bisect

import numpy as np

OBJECTIVES = {"miou": -1.0, "latency": 1.0, "gflops": 1.0}  # sign that turns each into a minimum


def objective_matrix(values: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    """Stack named objectives into an [n, m] matrix to minimise (mIoU is negated)."""
    return np.stack([OBJECTIVES[n] * np.asarray(values[n], dtype=np.float64) for n in names],
                    axis=1)


def nondominated_sort(points: np.ndarray) -> np.ndarray:
    """Front number (1-based) of every row of an [n, m] matrix to minimise."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2:
        raise ValueError(f"points must be [n, m], got shape {pts.shape}")
    if pts.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    if pts.shape[1] == 2:
        return _sort_2d(pts)
    return _sort_peeling(pts)


def _sort_2d(pts: np.ndarray) -> np.ndarray:
    order = np.lexsort((pts[:, 1], pts[:, 0]))
    ranks = np.zeros(len(pts), dtype=np.int64)
    # tails[k] = objective 2 of the last point put on front k+1; non-decreasing in k
    tails: list[float] = []
    prev = None
    for i in order:
        x, y = pts[i]
        if prev is not None and x == pts[prev, 0] and y == pts[prev, 1]:
            ranks[i] = ranks[prev]  # a duplicate joins the front of its twin
            continue
        k = bisect.bisect_right(tails, y)  # first front whose last y is > y
        if k == len(tails):
            tails.append(y)
        else:
            tails[k] = y
        ranks[i] = k + 1
        prev = i
    return ranks


def _dominated_by_any(pts: np.ndarray, others: np.ndarray) -> np.ndarray:
    dominated = np.zeros(len(pts), dtype=bool)
    for start in range(0, len(others), 512):
        o = others[start: start + 512]
        le = np.all(o[None, :, :] <= pts[:, None, :], axis=2)
        lt = np.any(o[None, :, :] < pts[:, None, :], axis=2)
        dominated |= (le & lt).any(axis=1)
    return dominated


def _sort_peeling(pts: np.ndarray, max_front: int | None = None) -> np.ndarray:
    ranks = np.zeros(len(pts), dtype=np.int64)
    left = np.arange(len(pts))
    front = 1
    while left.size and (max_front is None or front <= max_front):
        sub = pts[left]
        on_front = ~_dominated_by_any(sub, sub)
        ranks[left[on_front]] = front
        left = left[~on_front]
        front += 1
    return ranks


def top_fronts(points: np.ndarray, max_front: int) -> np.ndarray:
    """Front number of each row, 0 for rows beyond `max_front` (vectorised for two objectives)."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.shape[1] != 2:
        return _sort_peeling(pts, max_front)
    ranks = np.zeros(len(pts), dtype=np.int64)
    order = np.lexsort((pts[:, 1], pts[:, 0]))
    for front in range(1, max_front + 1):
        if order.size == 0:
            break
        x, y = pts[order, 0], pts[order, 1]
        best_before = np.minimum.accumulate(np.concatenate(([np.inf], y[:-1])))
        strict = y < best_before
        # who set the running minimum before each point: a twin of it is not dominated either
        setter = np.maximum.accumulate(np.where(strict, np.arange(order.size), 0))
        prev_setter = np.concatenate(([0], setter[:-1]))
        twin = ~strict & (y == y[prev_setter]) & (x == x[prev_setter]) & strict[prev_setter]
        on = strict | twin
        ranks[order[on]] = front
        order = order[~on]
    return ranks


def dominated_by_front(points: np.ndarray, front: np.ndarray) -> np.ndarray:
    """Which rows of an [n, 2] matrix some point of a 2-D front (mutually non-dominated) beats.

    One binary search per point: along a front objective 2 falls as objective 1 grows, so the
    front point with the largest objective 1 <= x has the lowest objective 2 among candidates.
    """
    f = np.asarray(front, dtype=np.float64)
    f = f[np.lexsort((f[:, 1], f[:, 0]))]
    # duplicates in objective 1: keep the lowest objective 2 (the last of equal x after lexsort
    # is the highest, so take the first of each run)
    first = np.concatenate(([True], f[1:, 0] != f[:-1, 0]))
    f = f[first]
    x, y = points[:, 0], points[:, 1]
    k = np.searchsorted(f[:, 0], x, side="right") - 1
    ok = k >= 0
    kk = np.maximum(k, 0)
    fx, fy = f[kk, 0], f[kk, 1]
    return ok & (fy <= y) & ((fy < y) | (fx < x))


def hypervolume_2d(points: np.ndarray, reference: np.ndarray) -> float:
    """Area dominated by a 2-objective set (minimised) and bounded by the reference point."""
    pts = np.asarray(points, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    pts = pts[(pts < ref).all(axis=1)]
    if pts.size == 0:
        return 0.0
    pts = pts[top_fronts(pts, 1) == 1]
    pts = pts[np.lexsort((pts[:, 1], pts[:, 0]))]
    widths = np.diff(np.append(pts[:, 0], ref[0]))
    return float((widths * (ref[1] - pts[:, 1])).sum())


class ParetoArchive:
    """Running set of the points on fronts 1..max_front of everything added so far.

    Keeping fronts <= n of each batch and of the union is exact: a point of global front k <= n
    has all its dominators on fronts < k, so none of them was dropped. `payload` rows travel with
    their points (e.g. configuration codes). When more than `cap` points remain, whole fronts are
    dropped from the back (front 1 is always kept).
    """

    def __init__(self, num_objectives: int, payload_width: int, *, max_front: int = 3,
                 cap: int = 5000) -> None:
        if max_front < 1 or cap < 1:
            raise ValueError("max_front and cap must be >= 1")
        self.max_front = max_front
        self.cap = cap
        self.points = np.zeros((0, num_objectives))
        self.payload = np.zeros((0, payload_width), dtype=np.int64)
        self.fronts = np.zeros(0, dtype=np.int64)
        self.priority = np.zeros(0)

    def add(self, points: np.ndarray, payload: np.ndarray,
            priority: np.ndarray | None = None) -> None:
        """Merge a batch; only its best fronts are kept.

        Points with identical objectives keep one representative: the lowest `priority` (e.g.
        the fewest exits), else the one already kept.
        """
        if len(points) == 0:
            return
        prio = np.zeros(len(points)) if priority is None else np.asarray(priority, dtype=np.float64)
        keep = top_fronts(points, self.max_front) > 0
        pts = np.concatenate([self.points, np.asarray(points, dtype=np.float64)[keep]])
        pay = np.concatenate([self.payload, np.asarray(payload, dtype=np.int64)[keep]])
        pri = np.concatenate([self.priority, prio[keep]])
        order = np.lexsort((np.arange(len(pts)), pri))  # stable: best priority, then oldest
        _, first = np.unique(pts[order], axis=0, return_index=True)
        unique = np.sort(order[first])
        pts, pay, pri = pts[unique], pay[unique], pri[unique]
        ranks = top_fronts(pts, self.max_front)
        last = self.max_front
        while last > 1 and (ranks > 0).sum() > self.cap:
            ranks[ranks == last] = 0
            last -= 1
        on = ranks > 0
        self.points, self.payload, self.fronts = pts[on], pay[on], ranks[on]
        self.priority = pri[on]

    def merge(self, other: ParetoArchive) -> None:
        self.add(other.points, other.payload, other.priority)
