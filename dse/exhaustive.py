"""Exhaustive search: every configuration of the space, streamed through joblib workers.

Cascade mode goes through the batched kernel (`dse._kernel`), one work unit per threshold pair
(and group of first-exit positions); each unit keeps only its best fronts, and the main process
merges them into a running archive, so memory stays constant however large the space is.
Budgeted and anytime spaces are small or closed-form and are enumerated directly.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
from joblib import Parallel, delayed

from dse._kernel import CascadeKernel, UnitResult
from dse.constraints import Bounds, explain_empty
from dse.data import FINAL_EXIT
from dse.evaluate import Evaluation, Evaluator
from dse.pareto import ParetoArchive
from dse.search import Progress, SearchResult, excluded_front, feasible, rank
from dse.space import Configuration, SearchSpace


def _run(kernel: CascadeKernel, unit: tuple[int, int, list[int]], names: list[str],
         bounds: Bounds, max_front: int, cap: int) -> UnitResult:
    return kernel.run_unit(*unit, names, bounds, max_front, cap)


class ExhaustiveSearcher:
    """Evaluates the whole space.

    Args:
        n_jobs: joblib workers (processes); 1 runs in this process.
        max_front: fronts kept and stored (1 = non-dominated only).
        cap: most candidates kept; later fronts are dropped first.
        dtype: kernel precision; None picks float32 where counts stay exact integers.
    """

    name = "exhaustive"

    def __init__(self, *, n_jobs: int = 1, max_front: int = 3, cap: int = 2000,
                 dtype: str | None = None, backend: str = "loky") -> None:
        self.n_jobs, self.max_front, self.cap, self.dtype = n_jobs, max_front, cap, dtype
        self.backend = backend

    def search(self, ev: Evaluator, space: SearchSpace, *, objectives: list[str],
               bounds: Bounds, progress: Progress | None = None) -> SearchResult:
        baseline = ev.baseline()
        if space.mode == "cascade":
            configs, n_evaluated, stats = self._cascade(ev, space, objectives, bounds, progress)
            evaluations = [ev.evaluate(c) for c in configs]
            evaluations.append(baseline)
        else:
            evaluations = [ev.evaluate(c) for c in _enumerate_static(ev, space)]
            n_evaluated = len(evaluations)
            stats = None
        kept = [e for e in evaluations if feasible(e, bounds)]
        if not kept:
            if stats is not None and isinstance(stats["closest"], Configuration):
                evaluations.append(ev.evaluate(stats["closest"]))
            raise _empty(evaluations, bounds, n_evaluated, stats)
        result = rank(kept, objectives, max_front=self.max_front, baseline=baseline,
                      n_evaluated=n_evaluated, method=self.name)
        if bounds.names():  # a second, unconstrained pass: front 1 only
            pool = evaluations
            if space.mode == "cascade":
                free, _, _ = self._cascade(ev, space, objectives, Bounds(), None, max_front=1)
                pool = [ev.evaluate(c) for c in free] + [baseline]
            result = replace(result, excluded=excluded_front(pool, objectives, bounds))
        return result

    def _cascade(self, ev: Evaluator, space: SearchSpace, objectives: list[str], bounds: Bounds,
                 progress: Progress | None, *, max_front: int | None = None,
                 ) -> tuple[list[Configuration], int, dict[str, object]]:
        kernel = CascadeKernel(ev, space, dtype=self.dtype)
        units = _units(kernel, self.n_jobs) if space.max_exits > 0 and len(kernel.rows) else []
        fronts = self.max_front if max_front is None else max_front
        archive = ParetoArchive(len(objectives), 2 + space.max_exits, max_front=fronts,
                                cap=self.cap)
        n_evaluated, n_sat = 1, dict.fromkeys(bounds.names(), 0)
        closest: tuple[float, np.ndarray | None] = (np.inf, None)
        jobs = (delayed(_run)(kernel, u, objectives, bounds, fronts, self.cap) for u in units)
        if self.n_jobs == 1:
            results = (_run(kernel, u, objectives, bounds, fronts, self.cap) for u in units)
        else:
            results = Parallel(n_jobs=self.n_jobs, backend=self.backend,
                               return_as="generator_unordered")(jobs)
        for done, r in enumerate(results, start=1):
            archive.merge(r.archive)
            n_evaluated += r.n_evaluated
            for k, v in r.n_satisfying.items():
                n_sat[k] += v
            if r.closest_violation < closest[0]:
                closest = (r.closest_violation, r.closest_payload)
            if progress is not None:
                progress(done, len(units))
        configs = [_decode(kernel, ev, space, code) for code in archive.payload]
        if closest[1] is not None:
            closest_config: Configuration | None = _decode(kernel, ev, space, closest[1])
        else:
            closest_config = None
        return configs, n_evaluated, {"n_satisfying": n_sat, "closest": closest_config}


def _units(kernel: CascadeKernel, n_jobs: int) -> list[tuple[int, int, list[int]]]:
    """One unit per threshold pair; first positions split further when pairs are few."""
    pairs = list(itertools.product(range(len(kernel.th_pix)), range(len(kernel.th_img))))
    firsts = kernel.first_positions()
    splits = min(len(firsts), max(1, -(-4 * n_jobs // len(pairs)))) if n_jobs > 1 else 1
    groups = [firsts[i::splits] for i in range(splits)]
    return [(kp, ki, g) for kp, ki in pairs for g in groups if g]


def _decode(kernel: CascadeKernel, ev: Evaluator, space: SearchSpace,
            code: np.ndarray) -> Configuration:
    exits = tuple(ev.data.exit_ids[kernel.rows[j]] for j in code[2:] if j >= 0)
    return Configuration(exits=exits, th_pix=(space.th_pix[code[0]],) * len(exits),
                         th_img=space.th_img[code[1]])


def _enumerate_static(ev: Evaluator, space: SearchSpace) -> list[Configuration]:
    if space.mode == "budgeted":
        return [Configuration(exits=(e,), mode="budgeted") for e in (*space.exit_ids, FINAL_EXIT)]
    by_position: dict[int, list[str]] = {}
    for e in space.exit_ids:
        by_position.setdefault(ev.data.position_index[ev.index[e]], []).append(e)
    configs = []
    for k in range(space.max_exits + 1):
        for chosen in itertools.combinations(sorted(by_position), k):
            for exits in itertools.product(*(by_position[p] for p in chosen)):
                configs.append(Configuration(exits=exits, mode="anytime"))
    return configs


def _empty(evaluations: list[Evaluation], bounds: Bounds, n_evaluated: int,
           stats: dict[str, object] | None) -> Exception:
    if stats is None:
        n_sat = {n: 0 for n in bounds.names()}
        for e in evaluations:
            for n in bounds.names():
                n_sat[n] += feasible(e, Bounds(**{n: getattr(bounds, n)}))
        closest = min(evaluations, key=lambda e: _violation(e, bounds))
        return explain_empty(bounds, n_evaluated, n_sat, closest)
    n_sat = dict(stats["n_satisfying"])  # type: ignore[call-overload]
    baseline = next(e for e in evaluations if e.config.exits == ())  # evaluated outside the kernel
    for n in bounds.names():
        n_sat[n] += feasible(baseline, Bounds(**{n: getattr(bounds, n)}))
    closest = min(evaluations, key=lambda e: _violation(e, bounds))
    return explain_empty(bounds, n_evaluated, n_sat, closest)


def _violation(e: Evaluation, bounds: Bounds) -> float:
    total = 0.0
    if bounds.min_miou is not None:
        total += max(0.0, bounds.min_miou - e.miou) / max(bounds.min_miou, 1e-12)
    if bounds.max_latency_ms is not None:
        total += max(0.0, e.latency_ms - bounds.max_latency_ms) / bounds.max_latency_ms
    if bounds.max_gflops is not None:
        total += max(0.0, e.gflops - bounds.max_gflops) / bounds.max_gflops
    return total
