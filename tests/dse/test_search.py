"""Both engines through one shared check: the stored front equals the brute-force front."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dse.constraints import Bounds, NoFeasibleError
from dse.evaluate import Evaluator
from dse.exhaustive import ExhaustiveSearcher
from dse.optuna_search import OptunaSearcher
from dse.pareto import nondominated_sort
from dse.space import Configuration, build_space, count_configurations
from dse.synthetic import random_accuracy, random_costs


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(11)
    data = random_accuracy(rng, num_positions=4, heads=2, num_samples=30, num_classes=5)
    ev = Evaluator(data, random_costs(rng, data))
    space = build_space(data, max_exits=2, th_pix=[0.3, 0.6], th_img=[0.3, 0.6])
    return ev, space


def all_configs(ev: Evaluator, space) -> list[Configuration]:
    by_pos: dict[int, list[str]] = {}
    for e in space.exit_ids:
        by_pos.setdefault(ev.data.position_index[ev.index[e]], []).append(e)
    out = [Configuration(exits=())]
    for k in range(1, space.max_exits + 1):
        for ps in itertools.combinations(sorted(by_pos), k):
            for exits in itertools.product(*(by_pos[p] for p in ps)):
                for tp, ti in itertools.product(space.th_pix, space.th_img):
                    out.append(Configuration(exits=exits, th_pix=(tp,) * k, th_img=ti))
    return out


def brute_front(ev, configs, bounds: Bounds) -> set[tuple[float, float]]:
    evs = [ev.evaluate(c) for c in configs]
    evs = [e for e in evs if bounds.min_miou is None or e.miou >= bounds.min_miou]
    pts = np.array([[-e.miou, e.latency_ms] for e in evs])
    ranks = nondominated_sort(pts)
    return {(round(e.miou, 9), round(e.latency_ms, 9)) for e, r in zip(evs, ranks, strict=True)
            if r == 1}


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_exhaustive_front_equals_brute_force(problem, n_jobs: int) -> None:
    ev, space = problem
    configs = all_configs(ev, space)
    assert len(configs) == count_configurations(ev.data, space)
    for bounds in (Bounds(), Bounds(min_miou=ev.baseline().miou - 0.05)):
        result = ExhaustiveSearcher(n_jobs=n_jobs).search(ev, space, objectives=["miou", "latency"],
                                                          bounds=bounds)
        assert result.n_evaluated == len(configs)
        got = {(round(e.miou, 9), round(e.latency_ms, 9))
               for e, f in zip(result.candidates, result.fronts, strict=True) if f == 1}
        assert got == brute_front(ev, configs, bounds)
        assert list(result.fronts) == sorted(result.fronts)


def test_optuna_finds_feasible_candidates_reproducibly(problem) -> None:
    ev, space = problem
    bounds = Bounds(min_miou=ev.baseline().miou - 0.1)
    runs = [OptunaSearcher(n_trials=40, seed=3).search(ev, space, objectives=["miou", "latency"],
                                                       bounds=bounds) for _ in range(2)]
    assert [e.config for e in runs[0].candidates] == [e.config for e in runs[1].candidates]
    assert all(e.miou >= bounds.min_miou for e in runs[0].candidates)
    assert runs[0].n_evaluated == 40


def test_empty_feasible_set_raises_with_closest(problem) -> None:
    ev, space = problem
    with pytest.raises(NoFeasibleError, match="closest"):
        ExhaustiveSearcher().search(ev, space, objectives=["miou", "latency"],
                                    bounds=Bounds(max_latency_ms=0.01))


def test_budgeted_and_anytime_spaces(problem) -> None:
    ev, _ = problem
    budgeted = build_space(ev.data, mode="budgeted")
    r = ExhaustiveSearcher().search(ev, budgeted, objectives=["miou", "gflops"], bounds=Bounds())
    assert r.n_evaluated == len(ev.data.exit_ids) + 1
    assert all(len(e.config.all_exits) == 1 for e in r.candidates)
    anytime = build_space(ev.data, max_exits=2, mode="anytime")
    r = ExhaustiveSearcher().search(ev, anytime, objectives=["miou", "latency"], bounds=Bounds())
    assert r.n_evaluated == count_configurations(ev.data, anytime)
    assert r.candidates[0].config.exits == ()  # extra outputs only add latency
