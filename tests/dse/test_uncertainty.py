"""Bootstrap intervals and robust selection on synthetic profiles (no torch, no store)."""

from __future__ import annotations

import numpy as np
import pytest

from dse.constraints import Bounds, Constraints
from dse.data import AccuracyData
from dse.evaluate import Evaluator
from dse.robust import preference_order, robust_failures, robust_pick
from dse.space import Configuration
from dse.synthetic import random_accuracy, random_costs
from dse.uncertainty import (
    Bootstrap,
    BootstrapSettings,
    Intervals,
    bootstrap_intervals,
    resample_indices,
)


def _setup(seed: int = 0, samples: int = 30) -> Evaluator:
    rng = np.random.default_rng(seed)
    data = random_accuracy(rng, num_positions=4, heads=2, num_samples=samples, num_classes=5)
    return Evaluator(data, random_costs(rng, data))


def _configs(ev: Evaluator) -> list[Configuration]:
    ids, edges = ev.data.exit_ids, ev.data.edges
    return [
        Configuration(exits=()),
        Configuration(exits=(ids[1],), th_pix=(float(edges[5]),), th_img=0.5),
        Configuration(exits=(ids[0], ids[4]), th_pix=(float(edges[6]), float(edges[4])),
                      th_img=0.6),
        Configuration(exits=(ids[3],), mode="budgeted"),
    ]


def _subset(data: AccuracyData, images: np.ndarray) -> AccuracyData:
    return AccuracyData(exit_ids=data.exit_ids, position_index=data.position_index,
                        num_positions=data.num_positions, edges=data.edges,
                        tp=data.tp[:, images], fp=data.fp[:, images], fn=data.fn[:, images],
                        hist=data.hist[:, images])


def test_every_resample_is_the_exact_evaluator_on_those_images() -> None:
    ev = _setup()
    settings = BootstrapSettings(resamples=12, seed=4)
    boot = Bootstrap(ev, settings)
    drawn = resample_indices(ev.data.num_samples, settings)
    batch = boot.replicates_batch(_configs(ev))  # one matrix product for all of them
    for config, rep in zip(_configs(ev), batch, strict=True):
        alone = boot.replicates(config)
        assert np.array_equal(alone.miou, rep.miou)
        assert np.allclose(alone.latency_ms, rep.latency_ms, rtol=1e-12, atol=0)
        for r in range(settings.resamples):
            resampled = Evaluator(_subset(ev.data, drawn[r]), ev.cost)
            exact, base = resampled.evaluate(config), resampled.baseline()
            assert rep.miou[r] == pytest.approx(exact.miou, abs=1e-12)
            assert rep.drop_pp[r] == pytest.approx(100 * (base.miou - exact.miou), abs=1e-10)
            assert rep.latency_ms[r] == pytest.approx(exact.latency_ms, rel=1e-12)
            assert rep.gflops[r] == pytest.approx(exact.gflops, rel=1e-12)
            for e, share in exact.exit_rates.items():
                assert rep.exit_rates[e][r] == pytest.approx(share, abs=1e-12)


def test_fixed_seed_reproduces_and_another_seed_differs() -> None:
    ev = _setup(1)
    configs = _configs(ev)[1:3]
    a = bootstrap_intervals(ev, configs, BootstrapSettings(resamples=200, seed=7), confidence=0.9)
    b = bootstrap_intervals(ev, configs, BootstrapSettings(resamples=200, seed=7), confidence=0.9)
    c = bootstrap_intervals(ev, configs, BootstrapSettings(resamples=200, seed=8), confidence=0.9)
    assert [x.to_dict() for x in a] == [x.to_dict() for x in b]
    assert [x.to_dict() for x in a] != [x.to_dict() for x in c]
    assert Intervals.from_dict(a[0].to_dict()) == a[0]
    for iv, config in zip(a, configs, strict=True):  # the point lies inside its interval here
        point = ev.evaluate(config)
        assert iv.miou[0] <= point.miou <= iv.miou[1]
        assert iv.miou[0] < iv.miou[1]  # images differ: the interval has a width


def test_identical_images_collapse_every_interval_to_the_point() -> None:
    ev = _setup(2)
    same = Evaluator(_subset(ev.data, np.zeros(25, dtype=np.int64)), ev.cost)
    base = same.baseline()
    for config in _configs(ev):
        point = same.evaluate(config)
        (iv,) = bootstrap_intervals(same, [config], BootstrapSettings(resamples=50),
                                    confidence=0.8)
        assert iv.miou == pytest.approx((point.miou, point.miou), abs=1e-12)
        drop = 100 * (base.miou - point.miou)
        assert iv.drop_pp == pytest.approx((drop, drop), abs=1e-10)
        assert iv.latency_ms == pytest.approx((point.latency_ms,) * 2, rel=1e-12)
        for e, share in point.exit_rates.items():
            assert iv.exit_rates[e] == pytest.approx((share, share), abs=1e-12)
        assert iv.bounds is not None and iv.bounds["miou_low"] == pytest.approx(point.miou)


@pytest.mark.parametrize("seed", range(6))
def test_robust_pick_never_breaks_a_constraint_at_its_bound(seed: int) -> None:
    ev = _setup(seed, samples=20)
    ids, edges = ev.data.exit_ids, ev.data.edges
    evaluations = [ev.evaluate(Configuration(exits=(e,), th_pix=(float(edges[k]),), th_img=t))
                   for e in ids for k in (3, 6, 8) for t in (0.3, 0.6, 0.9)]
    base = ev.baseline()
    drop = float(np.median([100 * (base.miou - e.miou) for e in evaluations]))
    boot = Bootstrap(ev, BootstrapSettings(resamples=100, seed=seed))
    for target, constraints in (("speed", Constraints(max_drop_pp=max(drop, 0.0),
                                                      target="speed")),
                                ("accuracy", Constraints(target="accuracy", min_miou=0.2))):
        bounds = constraints.resolve(base)
        computed: list[int] = []

        def compute(indices: list[int], computed: list[int] = computed) -> dict[int, Intervals]:
            computed.extend(indices)
            return {i: boot.intervals(evaluations[i].config, confidence=0.9) for i in indices}

        intervals: dict[int, Intervals] = {}
        result = robust_pick(target, evaluations, constraints, bounds, intervals, compute)
        order = preference_order(target, evaluations)
        if result.chosen is not None:
            assert robust_failures(intervals[result.chosen], constraints, bounds) == []
            before = order[: order.index(result.chosen)]
        else:
            before = order
        for i in before:  # everything the target prefers was refused for a stated reason
            assert robust_failures(intervals[i], constraints, bounds) == result.failures[i] != []
        assert len(set(computed)) == len(computed)  # nothing bootstrapped twice


def test_robust_failures_read_the_one_sided_bounds() -> None:
    iv = Intervals(level=0.9, miou=(0.5, 0.6), drop_pp=(0.0, 2.0), latency_ms=(9.0, 11.0),
                   exit_rates={}, confidence=0.9,
                   bounds={"miou_low": 0.52, "drop_pp_high": 1.5, "latency_ms_high": 10.5,
                           "gflops_high": 1.0})
    assert robust_failures(iv, Constraints(max_drop_pp=1.5), Bounds()) == []
    assert robust_failures(iv, Constraints(max_drop_pp=1.4), Bounds()) == [
        "drop 1.50 pp > 1.4 pp"]
    assert robust_failures(iv, Constraints(min_miou=0.53), Bounds()) == [
        "mIoU 52.00% < 53.00%"]
    assert robust_failures(iv, Constraints(), Bounds(max_latency_ms=10.0)) == [
        "latency 10.500 ms > 10.000 ms"]
