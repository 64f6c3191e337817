"""`dse pareto` end to end on a real SQLite store filled through the repository (no torch)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from db import ExitArrays, ExitInput, open_store, session_scope
from db import repository as repo
from db.errors import StorageError
from dse.cli import main
from dse.constraints import Constraints
from dse.data import AccuracyData, CostData
from dse.errors import DseError
from dse.evaluate import Evaluator
from dse.run import SearchRequest, run_search
from dse.space import Configuration
from dse.synthetic import random_accuracy, random_costs

SHAPE = (1, 3, 32, 32)


def _fill(url: str, data: AccuracyData, cost: CostData, *, device: str = "box") -> None:
    positions = [f"p{i}" for i in range(data.num_positions)]
    engine = open_store(url, create=True)
    with session_scope(engine) as s:
        m = repo.upsert_model(s, name="tiny", arch="tiny", architecture={"positions": positions},
                              weights_sha256="c" * 64, num_classes=data.num_classes)
        repo.upsert_exits(s, m.id, [
            ExitInput(exit_id=e, position=positions[p], position_index=p, head={}, params=1,
                      gflops=0.1, input_shape=SHAPE)
            for e, p in zip(data.exit_ids, data.position_index, strict=True)
        ] + [ExitInput(exit_id="final", position="tail", position_index=data.num_positions,
                       head={}, params=1, gflops=0.1, input_shape=SHAPE)])
        calib = repo.upsert_calibration_set(
            s, dataset="synthetic", split="val", content_hash="h",
            sample_ids=[f"s{i}" for i in range(data.num_samples)])
        ids = [*data.exit_ids, "final"]
        prof = repo.upsert_accuracy_profile(s, model_id=m.id, calibration_set_id=calib.id,
                                            settings={}, edges=data.edges, exit_ids=ids,
                                            num_classes=data.num_classes)
        hist = np.concatenate([data.hist, data.hist[-1:]])  # the final exit's histogram is unused
        repo.add_accuracy_chunk(s, prof.id, start=0, arrays={
            e: ExitArrays(tp=data.tp[i], fp=data.fp[i], fn=data.fn[i], hist=hist[i])
            for i, e in enumerate(ids)})
        repo.finish_accuracy_profile(s, prof.id)
        d = repo.upsert_device(s, name=device, fingerprint={"cpu": "test"})
        rows = [("segment", n, cost.segment_ms[i], cost.segment_gflops[i])
                for i, n in enumerate([*positions, "tail"])]
        rows += [("head", e, cost.head_ms[e], cost.head_gflops[e]) for e in data.exit_ids]
        rows += [("decision", e, cost.decision_ms[e], cost.decision_gflops[e])
                 for e in data.exit_ids]
        rows += [("upsample", e, cost.upsample_ms[e], cost.upsample_gflops[e])
                 for e in data.exit_ids]
        rows.append(("final", "final", cost.final_ms, cost.final_gflops))
        rows.append(("upsample", "final", cost.final_upsample_ms, cost.final_upsample_gflops))
        for kind, name, ms, gf in rows:
            repo.upsert_latency(s, model_id=m.id, device_id=d.id, kind=kind, name=name,
                                input_shape=SHAPE, batch=1, dtype="float32",
                                samples_ms=np.full(5, ms), gflops=gf, params=1)
    engine.dispose()


@pytest.fixture()
def store(tmp_path):
    rng = np.random.default_rng(3)
    data = random_accuracy(rng, num_positions=4, heads=2, num_samples=24, num_classes=4)
    cost = random_costs(rng, data)
    url = f"sqlite:///{tmp_path / 'mess.db'}"
    _fill(url, data, cost)
    return url, Evaluator(data, cost)


def _runs(url: str) -> int:
    engine = open_store(url)
    with session_scope(engine) as s:
        n = len(repo.list_search_runs(s))
    engine.dispose()
    return n


def test_json_lines_carry_the_contract_keys_and_exact_numbers(store, capsys) -> None:
    url, ev = store
    assert main(["pareto", "--device", "box", "--db", url, "--json", "--th-pix", "0.5,0.8",
                 "--th-img", "0.4,0.7"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines and {line["front"] for line in lines} >= {1}
    keys = {"run", "candidate", "front", "exits", "th_pix", "th_img", "miou", "latency_ms",
            "latency_p95_ms", "gflops", "exit_rates"}
    assert all(keys <= set(line) for line in lines)
    for line in lines[:10]:
        config = Configuration(exits=tuple(line["exits"][:-1]), th_pix=tuple(line["th_pix"]),
                               th_img=line["th_img"])
        e = ev.evaluate(config)
        assert line["exits"][-1] == "final"
        assert line["miou"] == pytest.approx(e.miou, abs=1e-12)
        assert line["latency_ms"] == pytest.approx(e.latency_ms, rel=1e-12)
        assert sum(line["exit_rates"].values()) == pytest.approx(1.0)
    front1 = [(line["miou"], line["latency_ms"]) for line in lines if line["front"] == 1]
    for m, lat in front1:  # nothing on front 1 dominates another front-1 point
        assert not any(m2 >= m and l2 <= lat and (m2, l2) != (m, lat) for m2, l2 in front1)
    assert _runs(url) == 1


def test_table_and_target_speed(store, capsys) -> None:
    url, _ = store
    assert main(["pareto", "--device", "box", "--db", url, "--target", "speed",
                 "--max-exits", "2"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "front 1" in out and "baseline (final exit only)" in out and "chosen" in out


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"device": "nowhere"}, "unknown device"),
    ({"constraints": {"min_miou": 0.999}}, "no configuration meets mIoU >= 99.90%"),
    ({"max_exits": 9}, "above the 4 candidate positions"),
    ({"th_pix": (0.55,)}, "not a confidence-histogram edge"),
    ({"constraints": {"min_miou": 1.5}}, "min_miou must lie in [0, 1]"),
    ({"objectives": ("miou",)}, "objectives must be two or more"),
    ({"constraints": {"max_latency_ms": 0.001}}, "closest:"),
    ({"constraints": {"min_miou": 0.6, "max_latency_ms": 5.0}}, "together"),
])
def test_bad_input_says_what_is_wrong_and_stores_nothing(store, kwargs, message) -> None:
    url, _ = store
    engine = open_store(url)
    args = {"device": "box", **kwargs}
    with pytest.raises((ValueError, DseError, StorageError)) as info:
        constraints = Constraints(**args.pop("constraints", {}))
        run_search(engine, url, SearchRequest(constraints=constraints, **args))
    engine.dispose()
    assert message in str(info.value) and "\n" not in str(info.value)
    assert _runs(url) == 0


@pytest.mark.parametrize(("args", "message"), [
    (["--min-miou", "0.999"], "error: no configuration meets mIoU >= 99.90%"),
    (["--min-miou", "99.9"], "error: no configuration meets mIoU >= 99.90%"),
    (["--min-miou", "99.9%"], "error: no configuration meets mIoU >= 99.90%"),
    (["--th-pix", "0.55"], "error: th_pix 0.55 is not a confidence-histogram edge"),
    (["--th-pix", "abc"], "error: --th-pix takes comma-separated numbers"),
    (["--min-miou", "150"], "error: --min-miou must lie in [0, 100] %"),
    (["--min-miou", "1"], "error: --min-miou 1 is ambiguous"),
    (["--model", "nope"], "error: "),
])
def test_cli_user_error_is_one_line_exit_2(store, capsys, args, message) -> None:
    url, _ = store
    assert main(["pareto", "--db", url, "--device", "box", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err and "Traceback" not in err
    assert _runs(url) == 0


def test_missing_latency_names_the_profile_command(tmp_path, capsys) -> None:
    rng = np.random.default_rng(0)
    data = random_accuracy(rng, num_positions=2, heads=1, num_samples=6)
    url = f"sqlite:///{tmp_path / 'm.db'}"
    _fill(url, data, random_costs(rng, data))
    engine = open_store(url)
    with session_scope(engine) as s:
        repo.upsert_device(s, name="other", fingerprint={"cpu": "x"})
    engine.dispose()
    assert main(["pareto", "--db", url, "--device", "other"]) == 2
    err = capsys.readouterr().err
    assert "dse profile --checkpoint CKPT --device other" in err and "\n" not in err.strip()
    assert _runs(url) == 0


def test_optuna_workers_join_one_study_in_the_store(store, capsys) -> None:
    url, _ = store
    args = ["pareto", "--device", "box", "--db", url, "--method", "optuna", "--study", "shared",
            "--trials", "15", "--json", "--per-exit-thresholds"]
    assert main(args) == 0
    assert main(args) == 0
    import optuna

    study = optuna.load_study(study_name="shared", storage=url)
    assert len(study.trials) == 30
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {line["run"] for line in lines} == {1, 2}


def test_report_is_written_for_the_stored_run(store, tmp_path, capsys) -> None:
    url, _ = store
    out = tmp_path / "front.html"
    assert main(["pareto", "--device", "box", "--db", url, "--max-exits", "1",
                 "--report", str(out)]) == 0
    html = out.read_text()
    assert "<html" in html.lower() and "tiny" in html and "box" in html
    assert "report:" in capsys.readouterr().out


def _front_one(url: str) -> list:
    engine = open_store(url)
    with session_scope(engine) as s:
        run = repo.list_search_runs(s)[-1]
        front = [c for c in repo.list_candidates(s, run.id, front=1) if c.feasible]
    engine.dispose()
    return front


@pytest.mark.parametrize("width", [80, 40, 250])
def test_front_reads_whole_at_any_width(store, capsys, console_width, width: int) -> None:
    """A pipe (80 columns) or a narrow terminal gets every exit id, threshold and number
    uncut; a wide terminal gets the table."""
    console_width(width)
    assert main(["pareto", "--device", "box", "--db", store[0], "--max-exits", "3",
                 "--th-pix", "0.5,0.8", "--th-img", "0.4,0.7"]) == 0
    out = capsys.readouterr().out
    assert "…" not in out
    front = _front_one(store[0])
    assert len(front) > 3
    if width == 250:
        assert "┃ exits" in out and "mIoU %" in out
        return
    blocks = out.split("\n#")[1:]
    assert len(blocks) == len(front)
    for c, block in zip(front, blocks, strict=True):
        head, *rest = block.splitlines()
        exit_lines = [line for line in rest if line.startswith("    ")  # then the footer
                      and "% interval: mIoU " not in line]  # and the bootstrap's line
        assert any("% interval: mIoU " in line for line in rest)  # intervals stay visible
        assert head.startswith(f"{c.index}  mIoU {100 * c.miou:.2f}%  {c.latency_ms:.3f} ms")
        for exit_id, line in zip(c.exits, exit_lines, strict=True):
            assert line.split()[0] == exit_id
            assert line.split()[-1] == f"{c.exit_rates.get(exit_id, 0.0):.0%}"


def test_mIoU_reads_in_percent_and_json_stays_a_fraction(store, capsys, console_width) -> None:
    url, ev = store
    console_width(250)
    assert main(["pareto", "--device", "box", "--db", url, "--min-miou", "30"]) == 0
    out = capsys.readouterr().out
    assert f"baseline (final exit only): mIoU {100 * ev.baseline().miou:.2f}%" in out
    assert all(c.miou >= 0.30 for c in _front_one(url))
    assert main(["pareto", "--device", "box", "--db", url, "--min-miou", "0.3", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert all(0.30 <= line["miou"] <= 1 for line in lines)  # DESIGN.md: miou in [0, 1]
    engine = open_store(url)
    with session_scope(engine) as s:
        stored = [r.constraints["min_miou"] for r in repo.list_search_runs(s)]
    engine.dispose()
    assert stored == [pytest.approx(0.30), pytest.approx(0.30)]  # 30 and 0.3 mean the same


def test_optuna_prints_no_log_line_and_keeps_no_anonymous_study(store, capfd) -> None:
    import optuna

    url, _ = store
    assert main(["pareto", "--device", "box", "--db", url, "--method", "optuna",
                 "--trials", "10"]) == 0
    captured = capfd.readouterr()
    assert "study" not in (captured.out + captured.err).lower()
    assert optuna.get_all_study_summaries(storage=url) == []
    assert _runs(url) == 1  # the search run itself is stored
    assert main(["pareto", "--device", "box", "--db", url, "--method", "optuna",
                 "--trials", "5", "--study", "named", "--json"]) == 0
    assert "A new study created" not in capfd.readouterr().err
    assert [st.study_name for st in optuna.get_all_study_summaries(storage=url)] == ["named"]


def test_excluded_trade_offs_are_stored_apart_for_the_report(store, capsys, tmp_path) -> None:
    """A constraint that excludes most of the space: the unconstrained front's excluded points
    are stored as infeasible (after the kept candidates), left out of --json and front 1, and
    drawn dimmed in the report."""
    url, ev = store
    base = ev.baseline()
    floor = base.miou - 0.02
    assert main(["pareto", "--device", "box", "--db", url, "--json",
                 "--min-miou", f"{100 * floor:.4f}"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    engine = open_store(url)
    with session_scope(engine) as s:
        stored = repo.list_candidates(s, 1)
    engine.dispose()
    kept = [c for c in stored if c.feasible]
    excluded = [c for c in stored if not c.feasible]
    assert [line["candidate"] for line in lines] == [c.index for c in kept]
    assert excluded and all(c.miou < floor for c in excluded)
    assert [c.index for c in excluded] == list(range(len(kept), len(stored)))
    assert min(c.latency_ms for c in excluded) < min(c.latency_ms for c in kept)
    points = [(c.miou, c.latency_ms) for c in stored]
    for c in excluded:  # nothing stored dominates an excluded point: it is on the free front
        assert not any(m >= c.miou and t <= c.latency_ms and (m, t) != (c.miou, c.latency_ms)
                       for m, t in points)
        e = ev.evaluate(Configuration(exits=tuple(c.exits[:-1]), th_pix=tuple(c.th_pix),
                                      th_img=c.th_img))
        assert c.miou == pytest.approx(e.miou, abs=1e-12)
    out = tmp_path / "r.html"
    assert main(["report", "--runs", "1", "--db", url, "--out", str(out)]) == 0
    assert "violates a constraint" in out.read_text()
    assert main(["pareto", "--device", "box", "--db", url, "--json"]) == 0  # no constraint
    capsys.readouterr()
    engine = open_store(url)
    with session_scope(engine) as s:
        assert all(c.feasible for c in repo.list_candidates(s, 2))
    engine.dispose()
