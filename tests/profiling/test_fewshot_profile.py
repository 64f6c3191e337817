"""The few-shot profile against a real store: references checked, predictions stored marked."""

from __future__ import annotations

import numpy as np
import pytest

from db import repository as repo
from db.session import open_store, session_scope
from profiling.errors import ProfilingError
from profiling.fewshot_profile import (
    FewShot,
    load_references,
    plan_components,
    store_predictions,
)

SHAPE = (1, 3, 32, 32)
KINDS = ("segment", "head", "decision", "upsample", "final")


def _keys(n: int = 30) -> list[tuple[str, str]]:
    return [(KINDS[i % 5], f"c{i}") for i in range(n)]


def _store(tmp_path, devices: dict[str, tuple[dict, dict]]):
    """A real SQLite store with one model and, per device, (fingerprint, {key: ms})."""
    engine = open_store(str(tmp_path / "s.db"), create=True)
    with session_scope(engine) as s:
        model = repo.upsert_model(s, name="net", arch="a", architecture={},
                                  weights_sha256="ab" * 32, num_classes=2)
        for name, (fingerprint, ms) in devices.items():
            dev = repo.upsert_device(s, name=name, fingerprint=fingerprint)
            for (kind, comp), value in ms.items():
                repo.upsert_latency(s, model_id=model.id, device_id=dev.id, kind=kind,
                                    name=comp, input_shape=SHAPE, batch=1, dtype="float32",
                                    samples_ms=[value, value], gflops=0.5, params=7)
    return engine, model.id


def _refs(s, names, **kw):
    args = dict(model_id=1, model_name="net", input_shape=SHAPE, batch=1, dtype="float32",
                runtime="torch", device_name="new")
    return load_references(s, names, **{**args, **kw})


@pytest.mark.parametrize("k", [2, 5, 12])
def test_an_exact_scaling_of_a_reference_is_recovered_to_float_precision(tmp_path, k) -> None:
    rng = np.random.default_rng(0)
    ref = {key: float(np.exp(rng.uniform(-3, 3))) for key in _keys()}
    other = {key: float(np.exp(rng.uniform(-3, 3))) for key in _keys()}
    engine, model_id = _store(tmp_path, {"ref": ({"cpu": "a"}, ref),
                                         "other": ({"cpu": "b"}, other)})
    with session_scope(engine) as s:
        refs = _refs(s, ["ref", "other"])
        chosen = plan_components(refs, k)
        new = repo.upsert_device(s, name="new", fingerprint={"cpu": "c"})
        for kind, name in chosen:
            repo.upsert_latency(s, model_id=model_id, device_id=new.id, kind=kind, name=name,
                                input_shape=SHAPE, batch=1, dtype="float32",
                                samples_ms=[3.5 * ref[(kind, name)]], gflops=0.5, params=7)
        result = store_predictions(s, refs, model_id=model_id, device_id=new.id,
                                   input_shape=SHAPE, batch=1, dtype="float32")
    assert len(result.measured) == k and len(result.predicted) == 30 - k
    assert result.model is not None and result.model.references == ("ref",)
    with session_scope(engine, readonly=True) as s:
        measured = repo.load_latency(s, model_id=model_id, device_id=new.id)
        rows = repo.load_latency(s, model_id=model_id, device_id=new.id, include_predicted=True)
    assert len(measured) == k and not any(r.predicted for r in measured)
    assert len(rows) == 30
    for r in rows:
        assert r.estimate_ms == pytest.approx(3.5 * ref[(r.kind, r.name)], rel=1e-12)
        if r.predicted:
            assert r.quality["model"] == result.model.name and r.gflops == 0.5
            assert r.quality["cv_error"] == pytest.approx(0.0, abs=1e-12)
    engine.dispose()


def test_references_that_cannot_serve_are_named(tmp_path) -> None:
    ms = {key: 1.0 + i for i, key in enumerate(_keys())}
    partial = dict(list(ms.items())[:10])
    engine, _ = _store(tmp_path, {"ref": ({"cpu": "a"}, ms),
                                  "ort": ({"cpu": "a", "runtime": "onnxruntime"}, ms),
                                  "partial": ({"cpu": "b"}, partial)})
    with session_scope(engine, readonly=True) as s:
        with pytest.raises(ProfilingError, match="reference 'ort' was profiled with onnxruntime"):
            _refs(s, ["ort"])
        assert set(_refs(s, ["ort"], allow_cross_runtime=True).keys) == set(ms)
        with pytest.raises(ProfilingError, match="has 10 of the 30 component latencies"):
            _refs(s, ["ref", "partial"])
        with pytest.raises(ProfilingError, match="no latency profile of model 'net' at input "
                                                 "1x3x64x64"):
            _refs(s, ["ref"], input_shape=(1, 3, 64, 64))
        with pytest.raises(ProfilingError, match="unknown device 'nope'"):
            _refs(s, ["nope"])
        with pytest.raises(ProfilingError, match="the device being profiled"):
            _refs(s, ["ref"], device_name="ref")
        # the same name's setup of another runtime is another device
        assert _refs(s, ["ort"], device_name="ort", allow_cross_runtime=True).keys
    engine.dispose()
    with pytest.raises(ValueError, match="few_shot.k: must be >= 1"):
        FewShot(k=0, references=("ref",))
