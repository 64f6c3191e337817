"""`dse pareto` intervals, --confidence and --check-on on a real SQLite store (no torch)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_pareto_cli import _fill

from db import ExitArrays, open_store, session_scope
from db import repository as repo
from dse.cli import main
from dse.data import AccuracyData
from dse.evaluate import Evaluator
from dse.space import Configuration
from dse.synthetic import random_accuracy, random_costs
from dse.uncertainty import BootstrapSettings, bootstrap_intervals


def _add_set(url: str, data: AccuracyData, *, split: str, model: int = 1,
             settings: dict | None = None) -> None:
    """Another calibration set of the same model: a second accuracy profile."""
    engine = open_store(url)
    with session_scope(engine) as s:
        calib = repo.upsert_calibration_set(
            s, dataset="synthetic", split=split, content_hash=f"hash-{split}",
            sample_ids=[f"{split}-{i}" for i in range(data.num_samples)])
        ids = [*data.exit_ids, "final"]
        prof = repo.upsert_accuracy_profile(s, model_id=model, calibration_set_id=calib.id,
                                            settings=settings or {}, edges=data.edges,
                                            exit_ids=ids, num_classes=data.num_classes)
        hist = np.concatenate([data.hist, data.hist[-1:]])
        repo.add_accuracy_chunk(s, prof.id, start=0, arrays={
            e: ExitArrays(tp=data.tp[i], fp=data.fp[i], fn=data.fn[i], hist=hist[i])
            for i, e in enumerate(ids)})
        repo.finish_accuracy_profile(s, prof.id)
    engine.dispose()


@pytest.fixture()
def store(tmp_path):
    rng = np.random.default_rng(5)
    data = random_accuracy(rng, num_positions=4, heads=2, num_samples=30, num_classes=4)
    cost = random_costs(rng, data)
    url = f"sqlite:///{tmp_path / 'mess.db'}"
    _fill(url, data, cost)
    other = random_accuracy(np.random.default_rng(9), num_positions=4, heads=2, num_samples=20,
                            num_classes=4)
    _add_set(url, other, split="val[1::2]")
    return url, Evaluator(data, cost), Evaluator(other, cost)


def _lines(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()
            if line.startswith("{")]


def _config(line: dict) -> Configuration:
    return Configuration(exits=tuple(line["exits"][:-1]), th_pix=tuple(line["th_pix"]),
                         th_img=line["th_img"])


ARGS = ["--device", "box", "--json", "--calibration", "val", "--max-exits", "2"]


def test_front_one_carries_seeded_exact_intervals(store, capsys) -> None:
    url, ev, _ = store
    assert main(["pareto", "--db", url, *ARGS, "--bootstrap", "300", "--bootstrap-seed", "3"]) == 0
    first = _lines(capsys)
    assert main(["pareto", "--db", url, *ARGS, "--bootstrap", "300", "--bootstrap-seed", "3"]) == 0
    second = _lines(capsys)
    front = [line for line in first if line["front"] == 1]
    assert front and all(line["intervals"] is not None for line in front)
    assert all(line["intervals"] is None for line in first if line["front"] > 1)
    assert [x["intervals"] for x in first] == [x["intervals"] for x in second]
    expected = bootstrap_intervals(ev, [_config(x) for x in front],
                                   BootstrapSettings(resamples=300, seed=3))
    for line, iv in zip(front, expected, strict=True):
        assert line["intervals"] == json.loads(json.dumps(iv.to_dict()))
        assert set(line["intervals"]["exit_rates"]) == set(line["exits"])


def test_robust_pick_holds_its_constraint_at_the_bound(store, capsys) -> None:
    url, ev, _ = store
    base = ev.baseline()
    assert main(["pareto", "--db", url, *ARGS, "--target", "speed", "--max-drop-pp", "3",
                 "--confidence", "0.9"]) == 0
    lines = _lines(capsys)
    chosen = [x for x in lines if x["chosen"]]
    plain = [x for x in lines if x["plain_pick"]]
    assert len(plain) == 1 and plain[0]["latency_ms"] == min(x["latency_ms"] for x in lines)
    (pick,) = chosen  # this profile's plain pick breaks the drop at its bound; another passes
    assert pick["candidate"] != plain[0]["candidate"]
    assert plain[0]["intervals"]["bounds"]["drop_pp_high"] > 3.0
    assert pick["intervals"]["bounds"]["drop_pp_high"] <= 3.0
    assert pick["latency_ms"] >= plain[0]["latency_ms"]
    assert 100 * (base.miou - pick["miou"]) <= 3.0
    assert main(["pareto", "--db", url, "--device", "box", "--calibration", "val",
                 "--max-exits", "2", "--target", "speed", "--max-drop-pp", "3",
                 "--confidence", "0.9"]) == 0
    out = capsys.readouterr().out
    assert "at confidence 0.9" in out
    assert "the robust pick changes mean latency" in out


def test_check_on_scores_the_front_on_the_other_set(store, capsys) -> None:
    url, ev, other = store
    assert main(["pareto", "--db", url, *ARGS, "--check-on", "val[1::2]", "--max-drop-pp",
                 "2"]) == 0
    lines = _lines(capsys)
    checked = [x for x in lines if "check" in x]
    assert checked and {x["candidate"] for x in checked} == {
        x["candidate"] for x in lines if x["front"] == 1}
    base = other.baseline()
    for line in checked:
        observed = other.evaluate(_config(line))
        check = line["check"]
        assert check["split"] == "val[1::2]"
        assert check["observed"]["miou"] == pytest.approx(observed.miou, abs=1e-12)
        assert check["observed"]["drop_pp"] == pytest.approx(100 * (base.miou - observed.miou))
        assert check["observed"]["exit_rates"] == pytest.approx(observed.exit_rates)
        assert check["predicted"]["miou"] == pytest.approx(line["miou"])
        moved = {e: 100 * (observed.exit_rates[e] - line["exit_rates"][e])
                 for e in line["exit_rates"]}
        assert set(check["moved_exits"]) == {e for e, v in moved.items() if abs(v) > 5}
        drop = 100 * (base.miou - observed.miou)
        assert any(b.startswith("drop") for b in check["broken"]) == (drop > 2 + 1e-9)
    engine = open_store(url)
    with session_scope(engine, readonly=True) as s:
        stored = repo.list_verifications(s, lines[0]["run"])
    engine.dispose()
    assert len(stored) == len(checked) and stored[0].measured["source"] == "stored profile"
    assert main(["pareto", "--db", url, "--device", "box", "--calibration", "val",
                 "--max-exits", "2", "--check-on", "val[1::2]"]) == 0
    out = capsys.readouterr().out
    assert "held-out check on synthetic/val[1::2]" in out and "read from the store" in out


@pytest.fixture(scope="module")
def bad_store(tmp_path_factory):
    """The store plus a set profiled by another model only and one at another input size."""
    rng = np.random.default_rng(5)
    data = random_accuracy(rng, num_positions=4, heads=2, num_samples=30, num_classes=4)
    url = f"sqlite:///{tmp_path_factory.mktemp('bad') / 'mess.db'}"
    _fill(url, data, random_costs(rng, data))
    engine = open_store(url)
    with session_scope(engine) as s:
        m2 = repo.upsert_model(s, name="other", arch="tiny", architecture={"positions": []},
                               weights_sha256="d" * 64, num_classes=4)
    engine.dispose()
    _add_set(url, random_accuracy(rng, num_positions=4, heads=2, num_samples=7, num_classes=4),
             split="train", model=m2.id)
    _add_set(url, random_accuracy(rng, num_positions=4, heads=2, num_samples=7, num_classes=4,
                                  pixels=16), split="val[0:7]")
    return url


@pytest.mark.parametrize(("args", "message"), [
    (["--confidence", "0"], "--confidence must lie strictly between 0 and 1"),
    (["--confidence", "1.5"], "--confidence must lie strictly between 0 and 1"),
    (["--interval", "1"], "--interval must lie strictly between 0 and 1"),
    (["--bootstrap", "1"], "--bootstrap must be 0"),
    (["--bootstrap", "0", "--confidence", "0.9"], "needs the bootstrap"),
    (["--check-on", "val"], "is the selection set itself"),
    (["--check-on", "test"], "no stored calibration set 'test'"),
    (["--check-on", "train"], "has no complete accuracy profile of model"),
    (["--check-on", "val[0:7]"], "another input size"),
    (["--calibration", "nothing"], "no stored calibration set 'nothing'"),
])
def test_bad_input_is_one_line_and_stores_nothing(
    bad_store, capsys, args, message, store_counts
) -> None:
    url = bad_store
    before = store_counts(url)
    assert main(["pareto", "--db", url, "--device", "box", "--calibration", "val",
                 *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1, err
    assert store_counts(url) == before
