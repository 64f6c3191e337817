"""Measurement quality travels: `dse pareto` warns, `dse devices` lists it, the report shows it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from db import open_store, session_scope
from db import repository as repo
from dse.cli import main
from dse.synthetic import random_accuracy, random_costs
from tests.cli.test_pareto_cli import SHAPE, _fill


@pytest.fixture()
def store(tmp_path):
    rng = np.random.default_rng(3)
    data = random_accuracy(rng, num_positions=3, heads=2, num_samples=16, num_classes=4)
    url = f"sqlite:///{tmp_path / 'mess.db'}"
    _fill(url, data, random_costs(rng, data))
    return url


def _mark(url: str, *, noisy: bool, gap: float | None = None) -> None:
    engine = open_store(url)
    with session_scope(engine) as s:
        quality = {"components": 20, "unstable": 4 if noisy else 0,
                   "max_rel_spread": 0.37 if noisy else 0.03,
                   "passes": [{"other_cores": 1.4, "load_1m": 3.2, "contended": noisy}],
                   "closed_loop": []}
        if noisy:
            row = repo.load_latency(s, model_id=1, device_id=1)[0]
            repo.upsert_latency(s, model_id=1, device_id=1, kind=row.kind, name=row.name,
                                input_shape=SHAPE, batch=1, dtype="float32",
                                samples_ms=row.samples_ms, gflops=row.gflops, params=1,
                                noisy=True, quality={"rel_spread": 0.37})
        if gap is not None:
            repo.upsert_latency(s, model_id=1, device_id=1, kind="path", name="final",
                                input_shape=SHAPE, batch=1, dtype="float32",
                                samples_ms=[10.0], gflops=0.0, params=0,
                                predicted_ms=10.0 * (1 - gap))
            quality["closed_loop"] = [{"path": "final", "deviation": gap}]
        repo.upsert_profile_quality(s, model_id=1, device_id=1, input_shape=SHAPE, batch=1,
                                    dtype="float32", noisy=noisy, quality=quality)
    engine.dispose()


def test_pareto_warns_in_one_line_on_a_noisy_profile(store, capsys) -> None:
    _mark(store, noisy=True)
    assert main(["pareto", "--device", "box", "--db", store, "--max-exits", "1"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(err) == 1
    assert "stored although noisy" in err[0] and "4/20 unstable" in err[0] and "load 3.20" in err[0]


def test_pareto_warns_on_a_failed_closed_loop(store, capsys) -> None:
    _mark(store, noisy=False, gap=0.21)
    assert main(["pareto", "--device", "box", "--db", store, "--max-exits", "1", "--json"]) == 0
    err = capsys.readouterr().err
    assert "final +21%" in err and "more than 10%" in err


def test_pareto_is_silent_on_a_checked_profile_and_an_old_one(store, capsys) -> None:
    assert main(["pareto", "--device", "box", "--db", store, "--max-exits", "1"]) == 0
    assert "warning" not in capsys.readouterr().err  # measured before checks existed
    _mark(store, noisy=False, gap=0.04)
    assert main(["pareto", "--device", "box", "--db", store, "--max-exits", "1"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_devices_lists_the_quality(store, capsys) -> None:
    _mark(store, noisy=True)
    assert main(["devices", "--db", store, "--json"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    (q,) = row["quality"]
    assert q["status"] == "noisy" and q["noisy_rows"] == 1 and "37%" in q["figures"]
    assert main(["devices", "--db", store]) == 0
    assert "noisy" in capsys.readouterr().out


def test_report_shows_the_quality_next_to_the_front(store, tmp_path, capsys) -> None:
    _mark(store, noisy=False, gap=-0.15)
    out = tmp_path / "r.html"
    assert main(["pareto", "--device", "box", "--db", store, "--max-exits", "1",
                 "--report", str(out)]) == 0
    html = out.read_text()
    assert 'data-trust="closed-loop failed"' in html and "final -15%" in html
    front = html.index("<h3>Pareto front</h3>")
    assert front < html.index('data-trust="closed-loop failed"') < html.index("<h3>Front 1</h3>")
