"""Repository functions: idempotent upserts by provenance, records out, arrays checked."""

from __future__ import annotations

import numpy as np
import pytest
from store_helpers import SHA_A, SHA_B, chunk, fill

from db import CandidateInput, ExitInput, ExitSummary, StorageError, session_scope
from db import repository as repo
from db.models import AccuracyChunk


def _model(s, sha: str = SHA_A, name: str = "tiny"):
    return repo.upsert_model(
        s, name=name, arch="tiny_resnet", architecture={"w": [1, 2]}, weights_sha256=sha,
        num_classes=3,
    )


def test_models_are_keyed_by_weights_hash(engine) -> None:
    with session_scope(engine) as s:
        a = _model(s)
        again = _model(s, name="renamed")
        b = _model(s, SHA_B, name="other")
    assert again == a and again.name == "tiny"
    assert a.architecture == {"w": [1, 2]} and a.created.tzinfo is not None
    with session_scope(engine) as s:
        assert [m.id for m in repo.list_models(s)] == [a.id, b.id]
        assert repo.get_model(s, a.id) == a
        assert repo.get_model(s, str(b.id)) == b
        assert repo.get_model(s, "other") == b
        assert repo.get_model(s, "bbbbbbbb") == b
        with pytest.raises(StorageError, match="unknown model 'tinyy' .*close: tiny.*dse models"):
            repo.get_model(s, "tinyy")
        with pytest.raises(ValueError, match="weights_sha256"):
            _model(s, "xyz")


def test_exits_upsert_and_list_by_position(engine) -> None:
    def exits(gflops: float):
        return [
            ExitInput(exit_id=f"layer{i}.0/nocrm-b0-fcn", position=f"layer{i}.0", position_index=i,
                      head={"kind": "fcn"}, params=10, gflops=gflops, input_shape=[1, 3, 32, 32])
            for i in (2, 1)
        ]

    with session_scope(engine) as s:
        m = _model(s)
        repo.upsert_exits(s, m.id, exits(0.5))
        repo.upsert_exits(s, m.id, exits(0.7))  # re-measured cost replaces, no duplicate
        stored = repo.list_exits(s, m.id)
    assert [e.position_index for e in stored] == [1, 2]
    assert [e.gflops for e in stored] == [0.7, 0.7]
    assert stored[0].input_shape == (1, 3, 32, 32)
    with session_scope(engine) as s, pytest.raises(StorageError, match="unknown model id"):
        repo.upsert_exits(s, 999, exits(0.1))


def test_calibration_set_conflicting_ids_are_refused(engine) -> None:
    with session_scope(engine) as s:
        c = repo.upsert_calibration_set(
            s, dataset="synthetic", split="val", content_hash="h1", sample_ids=["a", "b"]
        )
        assert repo.upsert_calibration_set(
            s, dataset="synthetic", split="val", content_hash="h1", sample_ids=["a", "b"]
        ) == c
        assert c.sample_ids == ("a", "b") and c.num_samples == 2
        with pytest.raises(StorageError, match="other sample ids"):
            repo.upsert_calibration_set(
                s, dataset="synthetic", split="val", content_hash="h1", sample_ids=["b", "a"]
            )


def test_accuracy_chunks_resume_and_load_in_sample_order(engine) -> None:
    rng = np.random.default_rng(1)
    exit_ids = ["layer1.0/nocrm-b0-fcn", "final"]
    with session_scope(engine) as s:
        m = _model(s)
        c = repo.upsert_calibration_set(
            s, dataset="synthetic", split="val", content_hash="h", sample_ids=[f"i{k}" for k in range(7)]
        )
        p = repo.upsert_accuracy_profile(
            s, model_id=m.id, calibration_set_id=c.id, settings={"edge": True},
            edges=np.linspace(0, 1, 5), exit_ids=exit_ids, num_classes=3,
        )
        same = repo.upsert_accuracy_profile(
            s, model_id=m.id, calibration_set_id=c.id, settings={"edge": True},
            edges=np.linspace(0, 1, 5), exit_ids=exit_ids, num_classes=3,
        )
        other = repo.upsert_accuracy_profile(
            s, model_id=m.id, calibration_set_id=c.id, settings={"edge": False},
            edges=np.linspace(0, 1, 5), exit_ids=exit_ids, num_classes=3,
        )
        assert same.id == p.id != other.id
        assert repo.missing_chunks(s, p.id, chunk_size=3) == [(0, 3), (3, 6), (6, 7)]
        later = chunk(rng, exit_ids, 3)
        repo.add_accuracy_chunk(s, p.id, start=3, arrays=later)
    with session_scope(engine) as s:  # a later run resumes
        assert repo.completed_samples(s, p.id) == 3
        assert repo.missing_chunks(s, p.id, chunk_size=3) == [(0, 3), (6, 7)]
        with pytest.raises(StorageError, match="holds 3 of 7 images; run `dse profile`"):
            repo.load_accuracy(s, p.id)
        with pytest.raises(StorageError, match="overlaps"):
            repo.add_accuracy_chunk(s, p.id, start=2, arrays=chunk(rng, exit_ids, 2))
        first, last = chunk(rng, exit_ids, 3), chunk(rng, exit_ids, 1)
        repo.add_accuracy_chunk(s, p.id, start=0, arrays=first)
        repo.add_accuracy_chunk(s, p.id, start=6, arrays=last)
        repo.add_accuracy_chunk(s, p.id, start=6, arrays=last)  # idempotent
        assert s.query(AccuracyChunk).count() == 6
        arrays = repo.load_accuracy(s, p.id)
    assert arrays.tp.shape == (2, 7, 3) and arrays.hist.shape == (2, 7, 4)
    assert arrays.sample_ids == tuple(f"i{k}" for k in range(7))
    for i, e in enumerate(exit_ids):
        want = np.concatenate([first[e].tp, later[e].tp, last[e].tp])
        np.testing.assert_array_equal(arrays.tp[i], want)
        np.testing.assert_array_equal(
            arrays.hist[i], np.concatenate([first[e].hist, later[e].hist, last[e].hist])
        )
    np.testing.assert_array_equal(arrays.edges, np.linspace(0, 1, 5))


def test_accuracy_chunk_shapes_are_checked(engine) -> None:
    rng = np.random.default_rng(2)
    with session_scope(engine) as s:
        m = _model(s)
        c = repo.upsert_calibration_set(
            s, dataset="d", split="val", content_hash="h", sample_ids=["a", "b"]
        )
        p = repo.upsert_accuracy_profile(
            s, model_id=m.id, calibration_set_id=c.id, settings={}, edges=np.linspace(0, 1, 5),
            exit_ids=["final"], num_classes=3,
        )
        with pytest.raises(ValueError, match="classes"):
            repo.add_accuracy_chunk(s, p.id, start=0, arrays=chunk(rng, ["final"], 2, classes=4))
        with pytest.raises(ValueError, match="bins"):
            repo.add_accuracy_chunk(s, p.id, start=0, arrays=chunk(rng, ["final"], 2, bins=3))
        with pytest.raises(ValueError, match="outside the calibration set"):
            repo.add_accuracy_chunk(s, p.id, start=1, arrays=chunk(rng, ["final"], 2))
        with pytest.raises(ValueError, match="missing"):
            repo.add_accuracy_chunk(s, p.id, start=0, arrays=chunk(rng, ["x"], 2))


def test_finish_profile_computes_summaries(engine) -> None:
    ids = fill(engine)
    with session_scope(engine) as s:
        prof = repo.get_accuracy_profile(s, ids["profile"])
        arrays = repo.load_accuracy(s, ids["profile"])
        assert prof.complete
        assert [p.id for p in repo.find_accuracy_profiles(s, ids["model"], complete_only=True)] == [
            prof.id
        ]
    tp, fp, fn = (a[1].sum(axis=0) for a in (arrays.tp, arrays.fp, arrays.fn))
    assert prof.summaries["final"].miou == pytest.approx(float(np.mean(tp / (tp + fp + fn))))
    assert prof.summaries["final"].pixel_accuracy == pytest.approx(tp.sum() / (tp.sum() + fn.sum()))
    with session_scope(engine) as s:
        given = {e: ExitSummary(miou=0.5, pixel_accuracy=0.6, mean_confidence=0.7)
                 for e in prof.exit_ids}
        assert repo.finish_accuracy_profile(s, prof.id, given).summaries == given


def test_devices_keyed_by_name_and_fingerprint(engine) -> None:
    with session_scope(engine) as s:
        a = repo.upsert_device(s, name="jetson", fingerprint={"power": "30W", "torch": "2.14"})
        same = repo.upsert_device(s, name="jetson", fingerprint={"torch": "2.14", "power": "30W"})
        b = repo.upsert_device(s, name="jetson", fingerprint={"power": "15W", "torch": "2.14"})
        assert same == a and b.id != a.id
        assert repo.get_device(s, "jetson") == b  # the newest fingerprint for the name
        assert repo.get_device(s, a.id) == a
        assert [d.id for d in repo.list_devices(s)] == [a.id, b.id]
        with pytest.raises(StorageError, match="unknown device 'jetsn' .*close: jetson.*dse devices"):
            repo.get_device(s, "jetsn")


def test_one_name_several_runtime_setups(engine) -> None:
    ort = {"runtime": "onnxruntime", "onnxruntime": "1.32.0", "threads": 1,
           "graph_optimization": "all", "provider": "CPUExecutionProvider"}
    with session_scope(engine) as s:
        eager = repo.upsert_device(s, name="laptop", fingerprint={"torch": "2.14.1", "threads": 2})
        one = repo.upsert_device(s, name="laptop", fingerprint=ort)
        two = repo.upsert_device(s, name="laptop", fingerprint={
            **ort, "threads": 2, "intra_op_spinning": False})
        assert [repo.runtime_label(d.fingerprint) for d in (eager, one, two)] == [
            "torch 2.14.1 (2 threads)", "onnxruntime 1.32.0 (1 thread, opt all)",
            "onnxruntime 1.32.0 (2 threads, opt all)"]
        assert repo.runtime_label({"torch": "2.14.1", "compute": "cuda", "threads": 1}) == \
            "torch 2.14.1 (cuda, 1 thread)"
        assert repo.runtime_label({**ort, "threads": 2, "intra_op_spinning": True,
                                   "provider": "CUDAExecutionProvider"}) == \
            "onnxruntime 1.32.0 (CUDAExecutionProvider, 2 threads, opt all, spinning)"
        assert repo.select_device(s, "laptop", runtime="torch") == repo.DeviceChoice(device=eager)
        assert repo.select_device(s, str(one.id)) == repo.DeviceChoice(device=one)
        bare = repo.select_device(s, "laptop")
        assert bare.device == two and bare.note is not None
        assert "has 3 setups" in bare.note and "--runtime onnxruntime|torch" in bare.note
        # one runtime named, two of its setups (threads) left: only an id tells them apart
        chosen = repo.select_device(s, "laptop", runtime="onnxruntime")
        assert chosen.device == two and chosen.note is not None
        assert chosen.note.endswith(f"(id {two.id}); pick another with --device ID")
        assert f"onnxruntime 1.32.0 (1 thread, opt all): id {one.id}" in chosen.note
        # a re-profiled torch (new drivers): the same setup, the newest, no note
        repo.upsert_device(s, name="box", fingerprint={"torch": "2.14.1", "cuda": "12.8"})
        newer = repo.upsert_device(s, name="box", fingerprint={"torch": "2.14.1", "cuda": "13.0"})
        assert repo.select_device(s, "box") == repo.DeviceChoice(device=newer)
        assert repo.names_with_several_setups([("laptop", 1), ("laptop", 2), ("box", 4),
                                               ("box", 4)]) == {"laptop"}


def test_latency_statistics_and_replacement(engine) -> None:
    samples = np.array([5.0, 1.0, 2.0, 3.0, 4.0, 10.0])
    with session_scope(engine) as s:
        m = _model(s)
        d = repo.upsert_device(s, name="cpu", fingerprint={})
        kw = dict(model_id=m.id, device_id=d.id, kind="head", name="layer1.0/nocrm-b0-fcn",
                  input_shape=(1, 3, 32, 32), batch=1, dtype="float32", gflops=0.2, params=7)
        rec = repo.upsert_latency(s, samples_ms=samples, **kw)
        assert (rec.n, rec.min_ms, rec.max_ms) == (6, 1.0, 10.0)
        assert rec.mean_ms == pytest.approx(samples.mean())
        assert rec.std_ms == pytest.approx(samples.std())
        assert rec.p50_ms == pytest.approx(np.percentile(samples, 50))
        assert rec.p90_ms == pytest.approx(np.percentile(samples, 90))
        assert rec.p99_ms == pytest.approx(np.percentile(samples, 99))
        repo.upsert_latency(s, samples_ms=[7.0, 9.0], **kw)
        repo.upsert_latency(s, samples_ms=[1.0], **{**kw, "dtype": "float16"})
        loaded = repo.load_latency(s, model_id=m.id, device_id=d.id, dtype="float32")
        assert len(loaded) == 1 and loaded[0].mean_ms == 8.0
        np.testing.assert_array_equal(loaded[0].samples_ms, [7.0, 9.0])
        assert len(repo.load_latency(s, model_id=m.id, device_id=d.id, input_shape=(1, 3, 32, 32))) == 2
        assert repo.load_latency(s, model_id=m.id, device_id=d.id, input_shape=(1, 3, 64, 64)) == []
        with pytest.raises(ValueError, match="kind"):
            repo.upsert_latency(s, samples_ms=[1.0], **{**kw, "kind": "blob"})
        with pytest.raises(ValueError, match="samples_ms"):
            repo.upsert_latency(s, samples_ms=[], **kw)


def _candidate(index: int, front: int) -> CandidateInput:
    return CandidateInput(
        index=index, front=front, exits=["layer1.0/nocrm-b0-fcn", "final"], th_pix=[0.8],
        th_img=0.6, miou=0.4 + index / 100, latency_ms=3.0, latency_p95_ms=4.0, gflops=0.1,
        exit_rates={"layer1.0/nocrm-b0-fcn": 0.7, "final": 0.3}, feasible=True,
    )


def test_search_runs_candidates_and_verifications(engine) -> None:
    ids = fill(engine)
    with session_scope(engine) as s:
        run = repo.finish_search_run(s, ids["run"], duration_s=1.5, n_evaluated=40)
        assert repo.add_candidates(s, run.id, [_candidate(0, 1), _candidate(1, 2), _candidate(2, 1)]) == 3
    with session_scope(engine) as s:
        run = repo.get_search_run(s, ids["run"])
        assert (run.duration_s, run.n_evaluated, run.device_name) == (1.5, 40, "cpu-box")
        assert run.device_fingerprint == {"cpu": "test", "threads": 1}
        assert run.input_shape == [1, 3, 32, 32] and run.objectives == ["miou", "latency_ms"]
        assert [c.index for c in repo.list_candidates(s, run.id, front=1)] == [0, 2]
        c = repo.get_candidate(s, run.id, 1)
        assert c.exits == ["layer1.0/nocrm-b0-fcn", "final"] and c.th_pix == [0.8]
        assert c.exit_rates["final"] == 0.3 and c.anytime_ms is None and c.run_id == run.id
        with pytest.raises(StorageError, match="already holds candidates"):
            repo.add_candidates(s, run.id, [_candidate(1, 1)])
        with pytest.raises(StorageError, match="has no candidate 9 .*has 3"):
            repo.get_candidate(s, run.id, 9)
        with pytest.raises(StorageError, match="unknown search run 77; `dse pareto`"):
            repo.get_search_run(s, 77)
        v = repo.add_verification(
            s, run_id=run.id, candidate_index=0, device_id=ids["device"], dataset="synthetic",
            split="val", predicted={"miou": 0.4}, measured={"miou": 0.41},
        )
        assert repo.list_verifications(s, run.id) == [v]
        assert [r.id for r in repo.list_search_runs(s, model_id=ids["model"])] == [run.id]


def test_candidate_input_validation() -> None:
    with pytest.raises(ValueError, match="miou"):
        CandidateInput(index=0, front=1, exits=["final"], th_pix=[], th_img=0.5, miou=1.5,
                       latency_ms=1, latency_p95_ms=1, gflops=1, exit_rates={}, feasible=True)
    with pytest.raises(ValueError, match="front"):
        _candidate(0, 0)
