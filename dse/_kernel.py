"""Batched evaluation of cascade configurations with shared thresholds (the exhaustive engine).

Everything the objectives need is linear in the images' routing, so a whole block of
configurations is one matrix product. For early exits e_1..e_k with pass_j[s] = c_img >= th_img:

    total = base + sum_j R_{j-1} @ Y_{e_j},   R_j = R_{j-1} * (1 - pass_j),   R_0 = 1

where base holds the final exit's summed [TP | union] counts and S x its latency/GFLOPs, and row s
of Y_e = [pass(s) * (counts_e(s) - counts_final(s)) | pass(s) | latency and GFLOPs terms]: an image
that leaves at e swaps its final-exit counts for e's (and the final exit's cost, upsampling
included, for the backbone to e plus e's upsampling), and every image that reaches e pays its
head and decision. Configurations sharing a prefix share R, so the search walks prefixes depth
first and expands each group of prefixes to every later exit with one GEMM; the prefix sums ride
along as extra columns of R (against an identity block under Y), so the GEMM also adds them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from db.counts import miou_from_union
from dse.constraints import Bounds
from dse.evaluate import Evaluator
from dse.pareto import OBJECTIVES, ParetoArchive, dominated_by_front, top_fronts
from dse.space import SearchSpace

_POOL_ROWS = 512  # prefixes pooled per final-level GEMM (bounded memory, better BLAS efficiency)


@dataclass
class UnitResult:
    """What one work unit hands back: its archive and the bookkeeping for empty feasible sets."""

    archive: ParetoArchive
    n_evaluated: int
    n_feasible: int
    n_satisfying: dict[str, int]
    closest_violation: float
    closest_payload: np.ndarray | None
    collected: list[tuple[np.ndarray, dict[str, np.ndarray]]] | None = None


class CascadeKernel:
    """Prepared tables for one (profile, costs, space); picklable, so joblib can ship it."""

    def __init__(self, ev: Evaluator, space: SearchSpace, *, dtype: str | None = None) -> None:
        data = ev.data
        rows = sorted((ev.index[e] for e in space.exit_ids), key=lambda r: (data.position_index[r], r))
        self.rows = np.asarray(rows, dtype=np.int64)
        self.pos = np.asarray([data.position_index[r] for r in self.rows], dtype=np.int64)
        self.num_samples = s = data.num_samples
        self.num_classes = c = data.num_classes
        self.width = 2 * c + 3
        final = len(data.exit_ids)
        counts = np.concatenate([data.tp, ev.union], axis=2)  # [E + 1, S, 2C]
        totals = counts[final].sum(axis=0)
        if dtype is None:  # float32 only where every partial sum stays an exact integer
            dtype = "float32" if 2 * counts.sum(axis=1).max(initial=0) < 2**24 else "float64"
        self.dtype = np.dtype(dtype)
        self.diff = (counts[self.rows] - counts[final][None]).astype(self.dtype)
        edge_idx = [data.edge_index(t) for t in space.th_pix]
        self.c_img = np.stack([np.stack([data.image_confidence(r, k) for k in edge_idx], axis=1)
                               for r in self.rows]) if len(self.rows) else np.zeros((0, s, len(edge_idx)))
        self.th_img = np.asarray(space.th_img, dtype=np.float64)
        self.th_pix = np.asarray(space.th_pix, dtype=np.float64)
        # leaving at e swaps the final exit's cost (whole backbone, final head, its upsampling)
        # for e's (backbone to e, e's upsampling); reaching e adds its head and decision
        self.lat = np.stack([ev.leave_ms[self.rows] - ev.final_ms, ev.check_ms[self.rows]], axis=1)
        self.gfl = np.stack([ev.leave_gflops[self.rows] - ev.final_gflops,
                             ev.check_gflops[self.rows]], axis=1)
        self.base = np.concatenate([totals, [0.0, s * ev.final_ms, s * ev.final_gflops]])
        self.max_exits = space.max_exits

    def first_positions(self) -> list[int]:
        return sorted(set(self.pos.tolist()))

    def _tables(self, kp: int, ki: int, lo: int) -> tuple[np.ndarray, np.ndarray]:
        """Y of exits lo.. stacked as [S + W, n * W] (identity block below) and 1 - pass [n, S]."""
        passed = (self.c_img[lo:, :, kp] >= self.th_img[ki]).astype(self.dtype)  # [n, S]
        n, s, w = passed.shape[0], self.num_samples, self.width
        y = np.empty((n, s + w, w), dtype=self.dtype)
        y[:, :s, : w - 3] = passed[:, :, None] * self.diff[lo:]
        y[:, :s, w - 3] = passed
        y[:, :s, w - 2] = passed * self.lat[lo:, 0, None] + self.lat[lo:, 1, None]
        y[:, :s, w - 1] = passed * self.gfl[lo:, 0, None] + self.gfl[lo:, 1, None]
        y[:, s:, :] = np.eye(w, dtype=self.dtype)[None]
        return y.transpose(1, 0, 2).reshape(s + w, n * w), 1.0 - passed

    def run_unit(self, kp: int, ki: int, first_positions: list[int], names: list[str],
                 bounds: Bounds, max_front: int, cap: int, collect: bool = False) -> UnitResult:
        """Evaluate every configuration of thresholds (kp, ki) whose first exit is at one of
        `first_positions`; return the best fronts of the feasible ones (`collect`: and every
        configuration's objectives, for tests)."""
        lo = int(np.searchsorted(self.pos, min(first_positions)))
        ycat, notpass = self._tables(kp, ki, lo)
        state = _UnitState(self, names, bounds, ParetoArchive(len(names), 2 + self.max_exits,
                                                               max_front=max_front, cap=cap), kp, ki)
        state.collected = [] if collect else None
        root = np.concatenate([np.ones(self.num_samples), self.base]).astype(self.dtype)[None]
        for p1 in first_positions:
            a, b = np.searchsorted(self.pos, [p1, p1 + 1])
            out = (root @ ycat[:, (a - lo) * self.width: (b - lo) * self.width]).reshape(1, b - a, -1)
            prefix = np.zeros((1, 0), dtype=np.int64)
            state.evaluate(out, prefix, np.arange(a, b))
            if self.max_exits > 1:
                rows = np.concatenate([notpass[a - lo: b - lo], out[0]], axis=1)
                self._child(state, rows, np.arange(a, b)[:, None], p1, ycat, notpass, lo)
        for r in sorted(state.buffers):
            self._flush(state, r, ycat, notpass, lo)
        return state.result()

    def _child(self, state: _UnitState, rows: np.ndarray, prefix: np.ndarray, last: int,
               ycat: np.ndarray, notpass: np.ndarray, lo: int) -> None:
        """Expand a prefix group now, or, when its expansions are the last level, pool it with
        other groups ending at the same position so the final GEMMs have more rows."""
        if prefix.shape[1] < self.max_exits - 1:
            self._expand(state, rows, prefix, last, ycat, notpass, lo)
            return
        state.buffers.setdefault(last, []).append((rows, prefix))
        if sum(len(p) for _, p in state.buffers[last]) >= _POOL_ROWS:
            self._flush(state, last, ycat, notpass, lo)

    def _flush(self, state: _UnitState, last: int, ycat: np.ndarray, notpass: np.ndarray,
               lo: int) -> None:
        pooled = state.buffers.pop(last, [])
        if pooled:
            self._expand(state, np.concatenate([r for r, _ in pooled]),
                         np.concatenate([p for _, p in pooled]), last, ycat, notpass, lo)

    def _expand(self, state: _UnitState, rows: np.ndarray, prefix: np.ndarray, last: int,
                ycat: np.ndarray, notpass: np.ndarray, lo: int) -> None:
        start = int(np.searchsorted(self.pos, last + 1))
        if start == len(self.pos):
            return
        s, w = self.num_samples, self.width
        out = (rows @ ycat[:, (start - lo) * w:]).reshape(len(rows), -1, w)
        state.evaluate(out, prefix, np.arange(start, len(self.pos)))
        if prefix.shape[1] + 1 >= self.max_exits:
            return
        for r in sorted(set(self.pos[start:].tolist())):
            a, b = np.searchsorted(self.pos, [r, r + 1])
            acc = out[:, a - start: b - start, :].reshape(-1, w)
            reach = (rows[:, None, :s] * notpass[None, a - lo: b - lo, :]).reshape(-1, s)
            new_prefix = np.concatenate([np.repeat(prefix, b - a, axis=0),
                                         np.tile(np.arange(a, b), len(prefix))[:, None]], axis=1)
            self._child(state, np.concatenate([reach, acc], axis=1), new_prefix, r, ycat,
                        notpass, lo)


class _UnitState:
    def __init__(self, kernel: CascadeKernel, names: list[str], bounds: Bounds,
                 archive: ParetoArchive, kp: int, ki: int) -> None:
        self.k, self.names, self.bounds, self.archive = kernel, names, bounds, archive
        self.kp, self.ki = kp, ki
        self.n_evaluated = self.n_feasible = 0
        self.n_satisfying = dict.fromkeys(bounds.names(), 0)
        self.closest_violation = np.inf
        self.closest_payload: np.ndarray | None = None
        self.collected: list[tuple[np.ndarray, dict[str, np.ndarray]]] | None = None
        self.buffers: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}

    def evaluate(self, out: np.ndarray, prefix: np.ndarray, cols: np.ndarray) -> None:
        c, s = self.k.num_classes, self.k.num_samples
        tp, union = out[..., :c], out[..., c: 2 * c]
        values = {"miou": miou_from_union(tp, union).ravel()}
        every = self.collected is not None
        if every or "latency" in self.names or self.bounds.max_latency_ms is not None:
            values["latency"] = out[..., 2 * c + 1].ravel() / s
        if every or "gflops" in self.names or self.bounds.max_gflops is not None:
            values["gflops"] = out[..., 2 * c + 2].ravel() / s
        if every:
            values["early"] = out[..., 2 * c].ravel()  # images answered by an early exit
        n = values["miou"].size
        self.n_evaluated += n
        feasible, violation = self._feasible(values)

        def payload(idx: np.ndarray) -> np.ndarray:
            i, j = np.divmod(idx, len(cols))
            code = np.full((idx.size, 2 + self.k.max_exits), -1, dtype=np.int64)
            code[:, 0], code[:, 1] = self.kp, self.ki
            code[:, 2: 2 + prefix.shape[1]] = prefix[i]
            code[:, 2 + prefix.shape[1]] = cols[j]
            return code

        if self.collected is not None:
            self.collected.append((payload(np.arange(n)), values))
        if violation is not None and not feasible.all():
            nearest = int(np.argmin(violation))
            if violation[nearest] < self.closest_violation:
                self.closest_violation = float(violation[nearest])
                self.closest_payload = payload(np.array([nearest]))[0]
        idx = np.flatnonzero(feasible)
        if idx.size:
            self.n_feasible += idx.size
            pts = np.stack([OBJECTIVES[m] * values[m][idx].astype(np.float64) for m in self.names],
                           axis=1)
            arch = self.archive
            if pts.shape[1] == 2 and (arch.fronts == arch.max_front).any():
                # beaten by a point already on the last kept front: can never make the cut
                alive = ~dominated_by_front(pts, arch.points[arch.fronts == arch.max_front])
                pts, idx = pts[alive], idx[alive]
            best = top_fronts(pts, arch.max_front) > 0  # payload only for the survivors
            self.archive.add(pts[best], payload(idx[best]),
                             np.full(int(best.sum()), prefix.shape[1] + 1))

    def _feasible(self, values: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        b = self.bounds
        n = values["miou"].size
        ok = np.ones(n, dtype=bool)
        violation = np.zeros(n) if b.names() else None
        for name, key, sign in (("min_miou", "miou", -1.0), ("max_latency_ms", "latency", 1.0),
                                ("max_gflops", "gflops", 1.0)):
            limit = getattr(b, name)
            if limit is None:
                continue
            excess = sign * (values[key].astype(np.float64) - limit)
            meets = excess <= 0
            self.n_satisfying[name] += int(meets.sum())
            ok &= meets
            assert violation is not None
            violation += np.maximum(excess, 0.0) / max(abs(limit), 1e-12)
        return ok, violation

    def result(self) -> UnitResult:
        return UnitResult(archive=self.archive, n_evaluated=self.n_evaluated,
                          n_feasible=self.n_feasible, n_satisfying=self.n_satisfying,
                          closest_violation=self.closest_violation,
                          closest_payload=self.closest_payload, collected=self.collected)
