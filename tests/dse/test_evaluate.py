"""The fast evaluators against a slow, obviously correct per-image reference on random profiles."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest

from dse._kernel import CascadeKernel
from dse.constraints import Bounds
from dse.data import AccuracyData, cost_from_records
from dse.errors import DseError
from dse.evaluate import Evaluator
from dse.space import Configuration, build_space
from dse.synthetic import random_accuracy, random_costs


def reference(data, cost, exits, th_pix, th_img):
    """Route image by image, add up counts and costs with plain Python loops."""
    idx = [data.exit_ids.index(e) for e in exits]
    final = len(data.exit_ids)
    seg_cum = [sum(cost.segment_ms[: p + 1]) for p in range(len(cost.segment_ms))]
    gf_cum = [sum(cost.segment_gflops[: p + 1]) for p in range(len(cost.segment_gflops))]
    tp = [0] * data.num_classes
    union = [0] * data.num_classes
    lat, gfl, counts = [], [], [0] * (len(exits) + 1)
    for s in range(data.num_samples):
        ms = gf = 0.0
        taken = None
        for slot, (i, t) in enumerate(zip(idx, th_pix, strict=True)):
            ms += cost.head_ms[exits[slot]] + cost.decision_ms[exits[slot]]
            gf += cost.head_gflops[exits[slot]] + cost.decision_gflops[exits[slot]]
            k = int(np.flatnonzero(np.isclose(data.edges, t))[0])
            hist = data.hist[i, s]
            if hist[k:].sum() / hist.sum() >= th_img:
                taken = slot
                # the backbone up to the exit, and its logits upsampled to the input size
                ms += seg_cum[data.position_index[i]] + cost.upsample_ms[exits[slot]]
                gf += gf_cum[data.position_index[i]] + cost.upsample_gflops[exits[slot]]
                break
        if taken is None:
            taken = len(exits)
            ms += seg_cum[-1] + cost.final_ms + cost.final_upsample_ms
            gf += gf_cum[-1] + cost.final_gflops + cost.final_upsample_gflops
        row = final if taken == len(exits) else idx[taken]
        for c in range(data.num_classes):
            tp[c] += int(data.tp[row, s, c])
            union[c] += int(data.tp[row, s, c] + data.fp[row, s, c] + data.fn[row, s, c])
        lat.append(ms)
        gfl.append(gf)
        counts[taken] += 1
    ious = [t / u for t, u in zip(tp, union, strict=True) if u > 0]
    return sum(ious) / len(ious), float(np.mean(lat)), float(np.percentile(lat, 95)), \
        float(np.mean(gfl)), counts


def _profile(seed: int):
    rng = np.random.default_rng(seed)
    data = random_accuracy(rng, num_positions=4, heads=2, num_samples=25, num_classes=6)
    return data, random_costs(rng, data)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evaluator_matches_reference(seed: int) -> None:
    data, cost = _profile(seed)
    ev = Evaluator(data, cost)
    rng = np.random.default_rng(seed + 10)
    for _ in range(40):
        k = int(rng.integers(0, 4))
        positions = sorted(rng.choice(4, size=k, replace=False))
        exits = tuple(f"p{p}/h{rng.integers(0, 2)}" for p in positions)
        th_pix = tuple(float(rng.choice(data.edges[:-1])) for _ in exits)
        th_img = float(rng.choice([0.0, 0.2, 0.5, 0.7, 1.0]))
        e = ev.evaluate(Configuration(exits=exits, th_pix=th_pix, th_img=th_img))
        miou, lat, p95, gf, counts = reference(data, cost, exits, th_pix, th_img)
        assert e.miou == pytest.approx(miou, abs=1e-12)
        assert e.latency_ms == pytest.approx(lat, rel=1e-12)
        assert e.latency_p95_ms == pytest.approx(p95, rel=1e-12)
        assert e.gflops == pytest.approx(gf, rel=1e-12)
        assert list(e.exit_counts) == counts


@pytest.mark.parametrize(("seed", "dtype"), [(0, None), (1, "float64"), (2, None)])
def test_kernel_matches_reference_on_every_configuration(seed: int, dtype: str | None) -> None:
    data, cost = _profile(seed)
    ev = Evaluator(data, cost)
    space = build_space(data, max_exits=3, th_pix=[0.3, 0.6], th_img=[0.2, 0.5])
    kernel = CascadeKernel(ev, space, dtype=dtype)
    seen = 0
    for kp, ki in itertools.product(range(2), range(2)):
        unit = kernel.run_unit(kp, ki, kernel.first_positions(), ["miou", "latency"], Bounds(),
                               3, 100, collect=True)
        assert unit.collected is not None
        for codes, values in unit.collected:
            for i, code in enumerate(codes):
                exits = tuple(data.exit_ids[kernel.rows[j]] for j in code[2:] if j >= 0)
                ths = (space.th_pix[code[0]],) * len(exits)
                miou, lat, _, gf, counts = reference(data, cost, exits, ths,
                                                     space.th_img[code[1]])
                assert values["miou"][i] == pytest.approx(miou, abs=1e-6)
                assert values["early"][i] == sum(counts[:-1])  # exact, even in float32
                # costs are float sums (not integers): float32 keeps ~1e-6 relative
                assert values["latency"][i] == pytest.approx(lat, rel=1e-5)
                assert values["gflops"][i] == pytest.approx(gf, rel=1e-5)
                seen += 1
    # every configuration with 1..3 exits, one per position: sum over k of C(4,k) 2^k, minus none
    assert seen == 4 * (8 + 24 + 32)


def test_budgeted_and_anytime_modes() -> None:
    data, cost = _profile(4)
    ev = Evaluator(data, cost)
    b = ev.evaluate(Configuration(exits=("p1/h0",), mode="budgeted"))
    miou, lat, *_ = reference(data, cost, ("p1/h0",), (0.0,), 0.0)  # everyone leaves at p1
    assert b.miou == pytest.approx(miou)
    assert b.latency_ms == pytest.approx(lat - cost.decision_ms["p1/h0"])
    a = ev.evaluate(Configuration(exits=("p0/h1", "p2/h0"), mode="anytime"))
    assert a.miou == pytest.approx(ev.baseline().miou)
    assert a.anytime_ms is not None and len(a.anytime_ms) == 3
    assert list(a.anytime_ms) == sorted(a.anytime_ms)
    # every anytime output is upsampled to the input size as it is handed out
    assert a.anytime_ms[-1] == pytest.approx(ev.baseline().latency_ms + cost.head_ms["p0/h1"]
                                             + cost.head_ms["p2/h0"] + cost.upsample_ms["p0/h1"]
                                             + cost.upsample_ms["p2/h0"])


def _row(kind: str, name: str, ms: float, gflops: float = 0.0) -> SimpleNamespace:
    return SimpleNamespace(kind=kind, name=name, estimate_ms=ms, gflops=gflops)


def test_costs_from_records_charge_the_upsampling_and_ignore_path_checks() -> None:
    rows = [_row("segment", "a", 1.0, 0.5), _row("segment", "tail", 2.0, 1.0),
            _row("head", "a/h", 0.5), _row("decision", "a/h", 0.1), _row("upsample", "a/h", 0.2),
            _row("final", "final", 0.7), _row("upsample", "final", 0.3),
            _row("path", "final", 99.0)]
    cost = cost_from_records(rows, ["a"])
    assert cost.upsample_ms == {"a/h": 0.2} and cost.final_upsample_ms == 0.3
    data = random_accuracy(np.random.default_rng(0), num_positions=1, heads=1, num_samples=5)
    data = AccuracyData(exit_ids=("a/h",), position_index=(0,), num_positions=1,
                        edges=data.edges, tp=data.tp, fp=data.fp, fn=data.fn, hist=data.hist)
    ev = Evaluator(data, cost)
    assert ev.baseline().latency_ms == pytest.approx(1.0 + 2.0 + 0.7 + 0.3)
    budget = ev.evaluate(Configuration(exits=("a/h",), mode="budgeted"))
    assert budget.latency_ms == pytest.approx(1.0 + 0.5 + 0.2)
    # a store profiled before the upsampling was a component: the re-run that measures it
    with pytest.raises(DseError, match="final upsampling.*dse profile --latency"):
        cost_from_records([r for r in rows if r.kind != "upsample"], ["a"])
    with pytest.raises(DseError, match="no latency for exit 'a/h'.*dse profile --latency"):
        Evaluator(data, cost_from_records([r for r in rows if r.name != "a/h" or
                                           r.kind != "upsample"], ["a"]))
