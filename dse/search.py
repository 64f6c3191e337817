"""The `Searcher` protocol and what every engine returns.

Engines explore a `SearchSpace` with an `Evaluator` (numpy only) and hand back the candidates on
the best fronts of the feasible configurations, re-evaluated exactly and ranked by one Pareto
routine (`dse.pareto`), so both engines' stored numbers mean the same thing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from dse.constraints import Bounds
from dse.evaluate import Evaluation, Evaluator
from dse.pareto import nondominated_sort, objective_matrix
from dse.space import SearchSpace

Progress = Callable[[int, int], None]  # (done, total) work units


@dataclass(frozen=True, kw_only=True)
class SearchResult:
    """Candidates on fronts 1..max_front (front 1 = non-dominated), best first."""

    candidates: tuple[Evaluation, ...]
    fronts: tuple[int, ...]
    n_evaluated: int
    baseline: Evaluation
    method: str
    # Front 1 of the unconstrained space minus what the constraints allow: stored as infeasible,
    # so a report can show (dimmed) how far the excluded trade-offs lie from the kept ones.
    excluded: tuple[Evaluation, ...] = ()

    def __post_init__(self) -> None:
        if len(self.candidates) != len(self.fronts):
            raise ValueError("fronts needs one entry per candidate")


class Searcher(Protocol):
    """A search engine: exhaustive enumeration, Optuna, ..."""

    name: str

    def search(self, ev: Evaluator, space: SearchSpace, *, objectives: list[str],
               bounds: Bounds, progress: Progress | None = None) -> SearchResult:
        """Feasible candidates on the best fronts; raises NoFeasibleError when none is."""
        ...


def feasible(e: Evaluation, bounds: Bounds) -> bool:
    """Whether an exact evaluation meets the bounds."""
    return ((bounds.min_miou is None or e.miou >= bounds.min_miou)
            and (bounds.max_latency_ms is None or e.latency_ms <= bounds.max_latency_ms)
            and (bounds.max_gflops is None or e.gflops <= bounds.max_gflops))


def rank(evaluations: Sequence[Evaluation], objectives: list[str], *, max_front: int,
         baseline: Evaluation, n_evaluated: int, method: str) -> SearchResult:
    """Sort exact evaluations into fronts, keep fronts <= max_front, best front first."""
    # one representative per objective vector: the configuration with the fewest exits
    by_value: dict[tuple[float, ...], Evaluation] = {}
    for e in sorted(evaluations, key=lambda e: len(e.config.exits)):
        by_value.setdefault((e.miou, e.latency_ms, e.gflops), e)
    unique = list(by_value.values())
    values = {"miou": np.array([e.miou for e in unique]),
              "latency": np.array([e.latency_ms for e in unique]),
              "gflops": np.array([e.gflops for e in unique])}
    fronts = nondominated_sort(objective_matrix(values, objectives)) if unique else np.zeros(0)
    order = sorted((i for i in range(len(unique)) if fronts[i] <= max_front),
                   key=lambda i: (fronts[i], unique[i].latency_ms, -unique[i].miou))
    return SearchResult(candidates=tuple(unique[i] for i in order),
                        fronts=tuple(int(fronts[i]) for i in order), n_evaluated=n_evaluated,
                        baseline=baseline, method=method)


EXCLUDED_CAP = 500


def excluded_front(evaluations: Sequence[Evaluation], objectives: list[str],
                   bounds: Bounds) -> tuple[Evaluation, ...]:
    """The non-dominated points of `evaluations` (taken without constraints) that violate
    `bounds`, fastest first, at most `EXCLUDED_CAP`; empty when there are no bounds."""
    if not bounds.names() or not evaluations:
        return ()
    free = rank(evaluations, objectives, max_front=1, baseline=evaluations[0], n_evaluated=0,
                method="")
    out = [e for e in free.candidates if not feasible(e, bounds)]
    if len(out) > EXCLUDED_CAP:  # thin evenly along the front, keep both ends
        step = (len(out) - 1) / (EXCLUDED_CAP - 1)
        out = [out[round(k * step)] for k in range(EXCLUDED_CAP)]
    return tuple(out)
