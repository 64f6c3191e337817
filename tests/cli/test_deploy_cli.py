"""`dse export` and `dse verify` end to end: profile -> pareto -> verify on a real SQLite store."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from dse.cli import main

SIZE = (32, 32)


def _run(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A tiny random-weight checkpoint, profiled on 8 synthetic images, searched once."""
    from training.adapters import build_network, describe_positions
    from training.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("deploy")
    torch.manual_seed(0)
    names = [p.name for p in describe_positions("fcn_resnet18")]
    network = build_network("fcn_resnet18", num_classes=6, head_space=["nocrm-b0-fcn"],
                            positions=names[1:4])
    ckpt = root / "tiny.pt"
    save_checkpoint(ckpt, network, meta={"input_size": list(SIZE), "dataset": "synthetic"})
    db = f"sqlite:///{root / 'store.db'}"
    assert main(["profile", "--checkpoint", str(ckpt), "--device", "box", "--data", "synthetic",
                 "--limit", "8", "--repeat", "2", "--warmup", "0", "--threads", "1",
                 "--keep-noisy", "--db", db, "--json"]) == 0
    # Low pixel thresholds: a random network is unconfident, and the test needs early exits.
    assert main(["pareto", "--device", "box", "--th-pix", "0.2,0.25", "--th-img", "0.2,0.5,0.95",
                 "--db", db, "--json"]) == 0
    return root, ckpt, db


def _candidates(capsys, db: str) -> list[dict]:
    code, out, _ = _run(capsys, "pareto", "--device", "box", "--th-pix", "0.2,0.25",
                        "--th-img", "0.2,0.5,0.95", "--db", db, "--json")
    assert code == 0
    return [json.loads(line) for line in out.splitlines() if '"candidate"' in line]


@pytest.mark.slow
def test_verify_on_the_calibration_split_matches_the_prediction(searched, capsys) -> None:
    _root, ckpt, db = searched
    candidates = _candidates(capsys, db)
    # The candidate whose images leave at the most different exits.
    chosen = max(candidates, key=lambda c: sum(1 for r in c["exit_rates"].values() if r > 0))
    assert sum(1 for r in chosen["exit_rates"].values() if r > 0) >= 2
    code, out, err = _run(capsys, "verify", "--run", str(chosen["run"]), "--candidate",
                          str(chosen["candidate"]), "--checkpoint", str(ckpt), "--repeat", "1",
                          "--db", db, "--json")
    assert code == 0, err
    line = json.loads(out)
    assert line["same_images"] is True and line["n_images"] == 8
    assert abs(line["measured_miou"] - line["predicted_miou"]) * 100 <= 0.01
    assert line["measured_miou"] == pytest.approx(chosen["miou"], abs=1e-4)
    for exit_id, count in line["predicted_exit_counts"].items():
        assert abs(line["measured_exit_counts"][exit_id] - count) <= 1
    assert line["predicted_exit_rates"] == pytest.approx(chosen["exit_rates"])
    assert line["measured_latency_ms"] > 0 and line["predicted_latency_ms"] > 0
    # The speed check timed the final-exit-only network on the first images against the
    # run's baseline, and its adjusted error is the measured latency over that ratio.
    speed = line["speed_check"]
    assert speed["n_images"] == 8 and speed["measured_ms"] > 0
    assert speed["ratio"] == pytest.approx(speed["measured_ms"] / speed["predicted_ms"])
    assert speed["adjusted_latency_error"] == pytest.approx(
        line["measured_latency_ms"] / speed["ratio"] / line["predicted_latency_ms"] - 1)
    from db import repository
    from db.session import open_store, session_scope

    with session_scope(open_store(db)) as s:
        stored = repository.list_verifications(s, chosen["run"])
    assert stored and stored[-1].measured["miou"] == line["measured_miou"]
    assert stored[-1].predicted["miou"] == line["predicted_miou"]
    # The human report names both sides.
    code, out, _ = _run(capsys, "verify", "--run", str(chosen["run"]), "--candidate",
                        str(chosen["candidate"]), "--checkpoint", str(ckpt), "--repeat", "1",
                        "--limit", "2", "--db", db)
    assert code == 0 and "predicted" in out and "measured" in out


def test_verify_says_when_the_machine_runs_at_another_speed(searched, capsys, tmp_path) -> None:
    """A run whose profile predicted the final exit 1000x faster than this machine runs it: the
    verification says the machine's speed changed and shows the error without that change."""
    import shutil

    from sqlalchemy import text

    from db.session import open_store, session_scope

    _root, ckpt, db = searched
    copy = tmp_path / "store.db"
    shutil.copy(db.removeprefix("sqlite:///"), copy)
    url = f"sqlite:///{copy}"
    chosen = next(c for c in _candidates(capsys, url) if len(c["exits"]) > 1)
    engine = open_store(url)
    with session_scope(engine) as s:
        row = s.execute(text("SELECT baseline FROM dse_search_run WHERE id = :id"),
                        {"id": chosen["run"]}).scalar_one()
        baseline = json.loads(row) if isinstance(row, str) else dict(row)
        baseline["latency_ms"] /= 1000
        s.execute(text("UPDATE dse_search_run SET baseline = :b WHERE id = :id"),
                  {"b": json.dumps(baseline), "id": chosen["run"]})
    engine.dispose()
    code, out, err = _run(capsys, "verify", "--run", str(chosen["run"]), "--candidate",
                          str(chosen["candidate"]), "--checkpoint", str(ckpt), "--repeat", "1",
                          "--limit", "2", "--db", url)
    assert code == 0, err
    assert "warning: the final-exit-only network measured" in err
    assert "runs at another speed than when it was profiled" in err
    assert "speed check: the final-exit-only network measured" in out
    ratio_line = next(line for line in out.splitlines() if line.startswith("speed check"))
    assert "on 2 image(s)" in ratio_line


@pytest.mark.slow
def test_exported_torchscript_runs_the_candidate(searched, capsys) -> None:
    root, ckpt, db = searched
    from training.checkpoint import load_checkpoint
    from training.data import build_dataset
    from training.network import CascadeConfig

    candidate = next(c for c in _candidates(capsys, db) if len(c["exits"]) > 1)
    out = root / f"cand{candidate['candidate']}.pt"
    code, text, err = _run(capsys, "export", "--run", str(candidate["run"]), "--candidate",
                           str(candidate["candidate"]), "--format", "torchscript",
                           "--out", str(out), "--checkpoint", str(ckpt), "--db", db, "--json")
    assert code == 0, err
    assert json.loads(text)["files"] == [str(out), str(out) + ".json"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(out))
    network, _ = load_checkpoint(ckpt)
    data = build_dataset("synthetic", split="val", input_size=SIZE, size=8)
    images = torch.stack([data[i][0] for i in range(len(data))])
    config = CascadeConfig(exits=tuple(candidate["exits"][:-1]), th_pix=tuple(candidate["th_pix"]),
                           th_img=candidate["th_img"])
    with torch.no_grad():
        ref = network.cascade(images, config)
        for n in range(len(data)):
            logits, index = scripted(images[n : n + 1])
            assert candidate["exits"][int(index[0])] == ref.exit_ids[n]
            torch.testing.assert_close(logits, ref.logits[n : n + 1], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_bad_requests_get_one_line_and_exit_2(searched, capsys, tmp_path) -> None:
    _root, ckpt, db = searched
    cases = [
        (["verify", "--run", "1", "--candidate", "999", "--checkpoint", str(ckpt)],
         "no candidate 999"),
        (["verify", "--run", "77", "--candidate", "0", "--checkpoint", str(ckpt)],
         "unknown search run 77"),
        (["verify", "--run", "1", "--candidate", "0"], "give --checkpoint"),
        (["export", "--run", "1", "--candidate", "0", "--format", "tflite", "--out",
          str(tmp_path / "m")], "'tflite' is not one of 'torchscript', 'onnx', 'state-dict'"),
        (["export", "--run", "1", "--candidate", "0", "--checkpoint", str(ckpt)], "give --out"),
    ]
    for args, message in cases:
        code, _, err = _run(capsys, *args, "--db", db)
        assert code == 2, (args, err)
        assert message in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_another_machine_is_refused_unless_forced(searched, capsys) -> None:
    """A run whose device fingerprint is not this machine's: no latency comparison."""
    _root, ckpt, db = searched
    from db import repository
    from db.session import open_store, session_scope

    engine = open_store(db)
    with session_scope(engine) as s:
        run = repository.get_search_run(s, 1)
        other = repository.upsert_device(s, name="jetson",
                                         fingerprint={**run.device_fingerprint, "cpu": "ARM A78"})
        moved = repository.create_search_run(
            s, model_id=run.model_id, device_id=other.id,
            accuracy_profile_id=run.accuracy_profile_id, method=run.method, mode=run.mode,
            space=run.space, constraints=run.constraints, objectives=run.objectives,
            baseline=run.baseline, input_shape=run.input_shape)
        candidates = repository.list_candidates(s, 1)
        repository.add_candidates(s, moved.id, candidates[:1])
    code, _, err = _run(capsys, "verify", "--run", str(moved.id), "--candidate", "0",
                        "--checkpoint", str(ckpt), "--db", db)
    assert code == 2 and "dse profile --device" in err and "cpu" in err
    code, out, err = _run(capsys, "verify", "--run", str(moved.id), "--candidate", "0",
                          "--checkpoint", str(ckpt), "--limit", "2", "--repeat", "1",
                          "--force", "--db", db, "--json")
    assert code == 0 and "meaningless" in err
    assert json.loads(out)["n_images"] == 2
