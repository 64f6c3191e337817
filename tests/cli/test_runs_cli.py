"""`dse runs`: the stored search runs, readable and as JSON lines."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_pareto_cli import _fill

from dse.cli import main
from dse.synthetic import random_accuracy, random_costs


@pytest.fixture()
def store(tmp_path) -> str:
    rng = np.random.default_rng(5)
    data = random_accuracy(rng, num_positions=3, heads=2, num_samples=12, num_classes=4)
    cost = random_costs(rng, data)
    url = f"sqlite:///{tmp_path / 'mess.db'}"
    _fill(url, data, cost)
    _fill(url, data, cost, device="phone")
    return url


def test_empty_store_says_how_to_make_a_run(store, capsys) -> None:
    assert main(["runs", "--db", store]) == 0
    assert "no search runs yet; `dse pareto --device NAME`" in capsys.readouterr().out


def test_runs_list_what_report_export_and_verify_need(store, capsys, console_width) -> None:
    assert main(["pareto", "--db", store, "--device", "box", "--max-exits", "1",
                 "--target", "speed", "--max-drop-pp", "5", "--json"]) == 0
    chosen = next(json.loads(line) for line in capsys.readouterr().out.splitlines()
                  if json.loads(line)["chosen"])
    assert main(["pareto", "--db", store, "--device", "phone", "--max-exits", "1",
                 "--min-miou", "10%", "--json"]) == 0
    capsys.readouterr()

    assert main(["runs", "--db", store, "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["run"], r["device"], r["model"], r["method"]) for r in rows] == [
        (1, "box", "tiny", "exhaustive"), (2, "phone", "tiny", "exhaustive")]
    assert rows[0]["constraints"] == {"max_drop_pp": 5.0, "target": "speed"}
    assert rows[0]["chosen"] == chosen["candidate"]
    assert rows[0]["chosen_miou"] == pytest.approx(chosen["miou"])
    assert rows[1]["constraints"] == {"min_miou": pytest.approx(0.1)}
    assert rows[1]["chosen"] is None and rows[1]["created"]
    assert "chosen_candidate" not in json.dumps(rows)  # internal keys stay internal

    for width in (80, 250):  # a pipe and a wide terminal: both whole, no internal keys
        console_width(width)
        assert main(["runs", "--db", store]) == 0
        out = capsys.readouterr().out
        assert "…" not in out and "chosen_candidate" not in out and "resolved" not in out
        assert "mIoU drop <= 5 pp, target speed" in out and "mIoU >= 10.00%" in out
        assert f"#{chosen['candidate']}" in out and f"{100 * chosen['miou']:.2f}%" in out

    assert main(["runs", "--db", store, "--device", "phone", "--json"]) == 0
    assert [json.loads(line)["run"] for line in capsys.readouterr().out.splitlines()] == [2]
    assert main(["runs", "--db", store, "--model", "tiny", "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_unknown_filter_is_one_line(store, capsys) -> None:
    assert main(["runs", "--db", store, "--device", "phnoe"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown device 'phnoe' (close: phone)") and "\n" not in err
