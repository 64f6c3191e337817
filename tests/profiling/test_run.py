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


def _latency_rows(db: str) -> int:
    engine = open_store(db)
    try:
        with session_scope(engine, readonly=True) as s:
            return sum(len(repository.load_latency(s, model_id=m.id, device_id=d.id))
                       for m in repository.list_models(s) for d in repository.list_devices(s))
    finally:
        engine.dispose()


def test_a_kill_during_the_latency_pass_leaves_nothing_half_written(tmp_path, checkpoint,
                                                                    virtual_timing) -> None:
    """The latency pass is judged as a whole (components and closed loop) before anything is
    stored, so a kill anywhere in it stores nothing; the next run measures it whole."""
    db = str(tmp_path / "store.db")
    expected = _expected_paths(checkpoint)
    with pytest.raises(Killed):
        run_profile(db, _request(checkpoint, accuracy=False, protocol=virtual_timing),
                    progress=_kill_at(lambda done, total, step: "closed loop" in step))
    assert _path_rows(db) == [] and _latency_rows(db) == 0
    outcome = run_profile(db, _request(checkpoint, accuracy=False,
                                       protocol=virtual_timing))
    assert outcome.latency is not None and outcome.latency.verdict is not None
    assert outcome.latency.verdict.ok  # virtual time: stable, and the loop closes exactly
    assert all(c.deviation == pytest.approx(0.0, abs=1e-9) for c in outcome.latency.paths)
    assert sorted(c.taken for c in outcome.latency.paths) == expected
    assert _path_rows(db) == expected
    # Complete now: a third run measures and checks nothing.
    again = run_profile(db, _request(checkpoint, accuracy=False, protocol=virtual_timing))
    assert again.latency is not None and again.latency.measured == () and again.latency.paths == ()


def test_a_closed_loop_gap_refuses_the_profile(tmp_path, checkpoint, virtual_timing,
                                               monkeypatch) -> None:
    """The cascade pays an extra convolution the components do not: a 1 ms gap per path."""
    import profiling.closed_loop as closed_loop
    from profiling.verdict import UnstableProfileError

    real = closed_loop.build_cascade_module

    def slower(*args, **kwargs):
        module = real(*args, **kwargs)
        extra = torch.nn.Conv2d(1, 1, 1)

        def pay(*_: object) -> None:
            extra(torch.zeros(1, 1, 1, 1))

        module.register_forward_pre_hook(pay)
        return module

    monkeypatch.setattr(closed_loop, "build_cascade_module", slower)
    db = str(tmp_path / "store.db")
    with pytest.raises(UnstableProfileError, match="closed-loop gap beyond 10%"):
        run_profile(db, _request(checkpoint, accuracy=False, protocol=virtual_timing))
    assert _latency_rows(db) == 0


def test_nothing_to_do_is_refused_before_the_store_is_created(tmp_path, checkpoint) -> None:
    from profiling.errors import ProfilingError

    with pytest.raises(ProfilingError, match="nothing to do"):
        run_profile(str(tmp_path / "store.db"), _request(checkpoint, accuracy=False,
                                                         latency=False))
    assert not (tmp_path / "store.db").exists()


def test_a_non_default_policy_is_stored_exported_verified_and_closes_the_loop(
        tmp_path, checkpoint, monkeypatch, virtual_timing) -> None:
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
    outcome = run_profile(db, _request(checkpoint, limit=8, policy=policy,
                                       protocol=virtual_timing))
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
