"""`run_profile` as a library call: resumable to the last check, and one exit policy throughout."""

from __future__ import annotations

import json

import pytest
import torch

from db import repository
from db.session import open_store, session_scope
from profiling.closed_loop import choose_paths
from profiling.run import ProfileRequest, run_profile
from profiling.timing import TimingSettings
from training.flops import network_components
from training.policy import ExitPolicy

SIZE = (32, 32)
FAST = TimingSettings(warmup=0, repeat=1)


class Killed(Exception):
    """Stands for a SIGKILL at a chosen point of the pass."""


@pytest.fixture
def checkpoint(tmp_path):
    from training.adapters import build_network, describe_positions
    from training.checkpoint import save_checkpoint

    torch.manual_seed(0)
    names = [p.name for p in describe_positions("fcn_resnet18")]
    network = build_network("fcn_resnet18", num_classes=6, head_space=["nocrm-b0-fcn"],
                            positions=names[1:4])
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, network, meta={"input_size": list(SIZE), "dataset": "synthetic"})
    return path


def _request(checkpoint, **over) -> ProfileRequest:
    fields = {"checkpoint": checkpoint, "device": "box", "data": "synthetic", "limit": 6,
              "threads": 1, "timing": FAST}
    fields.update(over)
    return ProfileRequest(**fields)


def _path_rows(db: str) -> list[str]:
    engine = open_store(db)
    try:
        with session_scope(engine, readonly=True) as s:
            return sorted(r.name for r in repository.list_path_checks(s))
    finally:
        engine.dispose()


def _kill_at(step_matches):
    def progress(stage: str, done: int, total: int | None, step: str) -> None:
        if stage == "latency" and step_matches(done, total, step):
            raise Killed(step)
    return progress


def _expected_paths(checkpoint) -> list[str]:
    from training.checkpoint import load_checkpoint

    network, _ = load_checkpoint(checkpoint)
    heads = {c.name: c.gflops for c in network_components(network, SIZE) if c.kind == "head"}
    return sorted(p[0] if p else "final" for p in choose_paths(network, heads))


def test_a_kill_between_component_timings_and_checks_is_completed_on_resume(tmp_path,
                                                                             checkpoint) -> None:
    db = str(tmp_path / "store.db")
    expected = _expected_paths(checkpoint)
    # Killed right after the last component was committed, before any closed-loop check.
    last_component = _kill_at(lambda done, total, step: total is not None and not
                              step.startswith("path:") and done == total - len(expected))
    with pytest.raises(Killed):
        run_profile(db, _request(checkpoint, accuracy=False), progress=last_component)
    assert _path_rows(db) == []
    outcome = run_profile(db, _request(checkpoint, accuracy=False))
    assert outcome.latency is not None and outcome.latency.measured == ()
    assert sorted(c.taken for c in outcome.latency.paths) == expected
    assert _path_rows(db) == expected
    # Complete now: a third run measures and checks nothing.
    again = run_profile(db, _request(checkpoint, accuracy=False))
    assert again.latency is not None and again.latency.measured == () and again.latency.paths == ()


def test_a_kill_between_two_checks_keeps_the_first_and_checks_the_rest(tmp_path,
                                                                       checkpoint) -> None:
    db = str(tmp_path / "store.db")
    expected = _expected_paths(checkpoint)
    with pytest.raises(Killed):
        run_profile(db, _request(checkpoint, accuracy=False),
                    progress=_kill_at(lambda done, total, step: step.startswith("path:")))
    first = _path_rows(db)
    assert len(first) == 1
    outcome = run_profile(db, _request(checkpoint, accuracy=False))
    assert outcome.latency is not None
    assert sorted(c.taken for c in outcome.latency.paths) == sorted(set(expected) - set(first))
    assert _path_rows(db) == expected


def test_nothing_to_do_is_refused_before_the_store_is_created(tmp_path, checkpoint) -> None:
    from profiling.errors import ProfilingError

    with pytest.raises(ProfilingError, match="nothing to do"):
        run_profile(str(tmp_path / "store.db"), _request(checkpoint, accuracy=False,
                                                         latency=False))
    assert not (tmp_path / "store.db").exists()


def test_a_non_default_policy_is_stored_exported_verified_and_closes_the_loop(
        tmp_path, checkpoint, monkeypatch) -> None:
    import profiling.closed_loop as closed_loop
    from dse.run import SearchRequest, run_search
    from profiling.deploy import (
        ExportRequest,
        VerifyRequest,
        candidate_cascade,
        candidate_network,
        read_candidate,
        run_export,
        run_verify,
    )
    from training.export import load_state_dict_export

    policy = ExitPolicy(edge_correction=True, edge_width=1, window=1)
    assert policy != ExitPolicy()
    built = []
    real_build = closed_loop.build_cascade_module

    def spy(*args, **kwargs):
        built.append(kwargs["policy"])
        return real_build(*args, **kwargs)

    monkeypatch.setattr(closed_loop, "build_cascade_module", spy)
    db = str(tmp_path / "store.db")
    outcome = run_profile(db, _request(checkpoint, limit=8, policy=policy))
    assert outcome.policy == policy
    assert built and all(p == policy for p in built)  # the closed loop decides with it

    engine = open_store(db)
    try:
        with session_scope(engine, readonly=True) as s:
            profile = repository.get_accuracy_profile(s, outcome.accuracy.profile_id)
        assert ExitPolicy.from_settings(dict(profile.settings)) == policy
        stored_run = run_search(engine, db, SearchRequest(
            device="box", th_pix=(0.2, 0.25), th_img=(0.2, 0.5, 0.95)))
        candidates = [c for c in stored_run.candidates if len(c.exits) > 1
                      and sum(1 for r in c.exit_rates.values() if r > 0) >= 2]
        assert candidates, "the test needs a candidate that sends images to two exits"
        chosen = candidates[0]
        stored = read_candidate(engine, stored_run.run.id, chosen.index)
    finally:
        engine.dispose()
    assert stored.policy == policy
    network = candidate_network(stored, checkpoint)
    assert all(d.decision.policy == policy for d in candidate_cascade(network, stored).decisions)

    out = tmp_path / "cascade.pt"
    run_export(db, ExportRequest(run=stored.run.id, candidate=chosen.index,
                                 checkpoint=checkpoint, fmt="state-dict", out=out))
    assert json.loads(out.with_name("cascade.pt.json").read_text())["policy"] == \
        policy.as_settings()
    reloaded = load_state_dict_export(out, network)
    assert reloaded.policy == policy
    assert all(d.decision.policy == policy for d in reloaded.decisions)

    verified = run_verify(db, VerifyRequest(run=stored.run.id, candidate=chosen.index,
                                            checkpoint=checkpoint, repeat=1))
    comparison = verified.comparison
    assert comparison.same_images and comparison.miou_ok and comparison.exits_ok
