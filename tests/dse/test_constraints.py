"""Constraint presets, resolution against the baseline and the empty-set explanation."""

from __future__ import annotations

import re

import numpy as np
import pytest

from dse.constraints import Bounds, Constraints, describe, explain_empty, parse_miou, pick
from dse.errors import DseError
from dse.evaluate import Evaluator
from dse.synthetic import random_accuracy, random_costs


@pytest.fixture()
def ev() -> Evaluator:
    rng = np.random.default_rng(0)
    data = random_accuracy(rng, num_positions=3, heads=1, num_samples=10)
    return Evaluator(data, random_costs(rng, data))


def test_targets_resolve_against_the_baseline(ev: Evaluator) -> None:
    base = ev.baseline()
    speed = Constraints(target="speed")
    assert speed.max_drop_pp == 0.1
    assert speed.resolve(base).min_miou == pytest.approx(base.miou - 0.001)
    acc = Constraints(target="accuracy", max_latency_ms=1e9)
    assert acc.resolve(base).max_latency_ms == pytest.approx(base.latency_ms)
    both = Constraints(min_miou=0.9, max_drop_pp=50.0).resolve(base)
    assert both.min_miou == pytest.approx(max(0.9, base.miou - 0.5))


@pytest.mark.parametrize("kwargs", [{"min_miou": 1.2}, {"max_drop_pp": -1.0},
                                    {"max_latency_ms": 0.0}, {"target": "cheap"},
                                    {"max_gflops": float("nan")}])
def test_invalid_values_name_the_field(kwargs) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs)) if "target" not in kwargs else "target"):
        Constraints(**kwargs)


def test_explain_empty_names_the_excluding_constraint(ev: Evaluator) -> None:
    base = ev.baseline()
    bounds = Bounds(min_miou=0.99, max_latency_ms=1.0)
    err = explain_empty(bounds, 10, {"min_miou": 0, "max_latency_ms": 3}, base)
    assert "mIoU >= 99.00%" in str(err) and "closest: final only" in str(err)
    assert f"mIoU {100 * base.miou:.2f}%" in str(err)  # percent, as the tables print it
    err = explain_empty(bounds, 10, {"min_miou": 2, "max_latency_ms": 3}, None)
    assert "together" in str(err)


def test_pick_follows_the_target(ev: Evaluator) -> None:
    from dse.space import Configuration
    evs = [ev.evaluate(Configuration(exits=(e,), th_pix=(0.5,), th_img=0.5))
           for e in ev.data.exit_ids] + [ev.baseline()]
    fronts = [1] * len(evs)
    assert evs[pick("accuracy", evs, fronts)].miou == max(e.miou for e in evs)
    assert evs[pick("speed", evs, fronts)].latency_ms == min(e.latency_ms for e in evs)
    assert pick(None, evs, fronts) is None


@pytest.mark.parametrize(("text", "fraction"), [
    ("70", 0.70), ("70%", 0.70), ("70.5 %", 0.705), ("0.7", 0.70), ("0.5%", 0.005),
    ("100", 1.0), ("0", 0.0), ("1%", 0.01), ("100%", 1.0),
])
def test_miou_bounds_read_as_percent_or_fraction(text: str, fraction: float) -> None:
    assert parse_miou(text) == pytest.approx(fraction)


@pytest.mark.parametrize(("text", "message"), [
    ("1", "ambiguous: write 1% or 100%"),
    ("150", "must lie in [0, 100] %"),
    ("-3", "must lie in [0, 100] %"),
    ("seventy", "takes a mIoU such as 70%"),
    ("nan", "must lie in [0, 100] %"),
])
def test_miou_bounds_that_cannot_be_read_say_why(text: str, message: str) -> None:
    with pytest.raises(DseError, match=re.escape(message)):
        parse_miou(text)


def test_stored_constraints_read_as_the_user_wrote_them() -> None:
    stored = {"max_latency_ms": 20.0, "max_drop_pp": 1.0, "min_miou": 0.7, "max_gflops": None,
              "target": "speed", "resolved": {"min_miou": 0.7351, "max_latency_ms": 20.0},
              "chosen_candidate": 4}
    assert describe(stored) == ("latency <= 20 ms, mIoU drop <= 1 pp, mIoU >= 70.00%, "
                                "target speed")
    assert describe(stored, resolved=True).endswith(
        "(bounds used: mIoU >= 73.51%, latency <= 20.000 ms)")
    assert "chosen" not in describe(stored, resolved=True)
    assert describe({"chosen_candidate": 0, "resolved": {}}, resolved=True) == "none"
