"""Measurement quality in the store: noisy rows, spread figures, profile quality, 0002 -> 0003."""

from __future__ import annotations

import numpy as np
import pytest
from alembic import command
from sqlalchemy import text

from db import open_store, session_scope
from db import repository as repo
from db import session as dbsession
from db.merge import merge_stores

SHAPE = (1, 3, 32, 32)


def _model_device(s) -> tuple[int, int]:
    m = repo.upsert_model(s, name="m", arch="fcn_resnet18", architecture={"positions": ["a"]},
                          weights_sha256="e" * 64, num_classes=3)
    d = repo.upsert_device(s, name="cpu", fingerprint={"cpu": "x"})
    return m.id, d.id


def _quality(**over) -> dict:
    q = {"protocol": "interleaved", "estimator": "median", "components": 7, "unstable": 0,
         "max_rel_spread": 0.04, "passes": [{"other_cores": 0.1, "load_1m": 1.5}],
         "closed_loop": [{"path": "final", "deviation": 0.03}]}
    q.update(over)
    return q


def test_rows_keep_noisy_and_quality_and_the_estimate_is_the_median(engine) -> None:
    with session_scope(engine) as s:
        m, d = _model_device(s)
        samples = np.array([1.0, 1.01, 0.99, 1.0, 5.0])  # one burst
        row = repo.upsert_latency(s, model_id=m, device_id=d, kind="head", name="a/h",
                                  input_shape=SHAPE, batch=1, dtype="float32",
                                  samples_ms=samples, gflops=0.0, params=0, noisy=True,
                                  quality={"rel_spread": 0.02})
        plain = repo.upsert_latency(s, model_id=m, device_id=d, kind="segment", name="a",
                                    input_shape=SHAPE, batch=1, dtype="float32",
                                    samples_ms=[2.0], gflops=0.0, params=0)
    assert row.noisy and row.quality == {"rel_spread": 0.02}
    assert not plain.noisy and plain.quality is None
    assert row.estimate_ms == pytest.approx(1.0) and row.mean_ms > 1.7


def test_profile_quality_is_replaced_by_the_next_run_and_describes_itself(engine) -> None:
    with session_scope(engine) as s:
        m, d = _model_device(s)
        first = repo.upsert_profile_quality(s, model_id=m, device_id=d, input_shape=SHAPE,
                                            batch=1, dtype="float32", noisy=True,
                                            quality=_quality(unstable=3, max_rel_spread=0.4))
        assert first.noisy and first.worst_gap == pytest.approx(0.03)
        assert "3/7 unstable" in first.describe() and "load 1.50" in first.describe()
        repo.upsert_profile_quality(s, model_id=m, device_id=d, input_shape=SHAPE, batch=1,
                                    dtype="float32", noisy=False, quality=_quality())
    with session_scope(engine) as s:
        (row,) = repo.list_profile_quality(s, device_id=d)
    assert not row.noisy and row.quality["unstable"] == 0 and row.input_shape == SHAPE


def test_merge_copies_quality(tmp_path) -> None:
    src, dst = str(tmp_path / "a.db"), str(tmp_path / "b.db")
    open_store(dst, create=True).dispose()
    engine = open_store(src, create=True)
    with session_scope(engine) as s:
        m, d = _model_device(s)
        repo.upsert_latency(s, model_id=m, device_id=d, kind="head", name="a/h",
                            input_shape=SHAPE, batch=1, dtype="float32", samples_ms=[1.0],
                            gflops=0.0, params=0, noisy=True, quality={"rel_spread": 0.3})
        repo.upsert_profile_quality(s, model_id=m, device_id=d, input_shape=SHAPE, batch=1,
                                    dtype="float32", noisy=True, quality=_quality())
    engine.dispose()
    merge_stores(src, dst)
    report = merge_stores(src, dst)
    assert report.skipped.get("dse_profile_quality") == 1 and not report.conflicts
    engine = open_store(dst)
    with session_scope(engine) as s:
        (row,) = repo.load_latency(s, model_id=1, device_id=1)
        (q,) = repo.list_profile_quality(s)
    engine.dispose()
    assert row.noisy and row.quality == {"rel_spread": 0.3} and q.noisy


def test_a_0002_store_upgrades_rows_are_measured_not_noisy(tmp_path) -> None:
    url = str(tmp_path / "old.db")
    dbsession._check_sqlite_file(tmp_path / "old.db", create=True)
    engine = dbsession.make_engine(url)
    with engine.connect() as conn:
        command.upgrade(dbsession._alembic_config(conn), "0002")
        conn.commit()
        conn.execute(text("INSERT INTO dse_model (name, arch, architecture, weights_sha256, "
                          "num_classes, created) VALUES ('m', 'a', '{}', :sha, 3, "
                          "'2026-01-01 00:00:00')"), {"sha": "f" * 64})
        conn.execute(text("INSERT INTO dse_device (name, fingerprint, fingerprint_sha256, "
                          "created) VALUES ('cpu', '{}', :sha, '2026-01-01 00:00:00')"),
                     {"sha": "0" * 64})
        conn.execute(text(
            "INSERT INTO dse_latency (model_id, device_id, kind, name, input_shape, batch, "
            "dtype, n, mean_ms, std_ms, min_ms, p50_ms, p90_ms, p99_ms, max_ms, samples_ms, "
            "gflops, params, created) VALUES (1, 1, 'final', 'final', '1x3x32x32', 1, "
            "'float32', 1, 1, 0, 1, 1, 1, 1, 1, x'00', 0, 0, '2026-01-01 00:00:00')"))
        conn.commit()
    engine.dispose()
    assert dbsession.upgrade(url) == ("0002", dbsession.head_revision())
    engine = open_store(url)
    with session_scope(engine) as s:
        noisy = s.execute(text("SELECT noisy, quality FROM dse_latency")).one()
        assert repo.list_profile_quality(s) == []
    engine.dispose()
    assert not noisy[0] and noisy[1] is None


def test_predicted_rows_are_never_returned_as_measured(engine) -> None:
    with session_scope(engine) as s:
        m, d = _model_device(s)
        for kind, source in (("segment", "measured"), ("head", "predicted")):
            repo.upsert_latency(s, model_id=m, device_id=d, kind=kind, name="a/h",
                                input_shape=SHAPE, batch=1, dtype="float32", samples_ms=[1.0],
                                gflops=0.0, params=0, source=source,
                                quality={"model": "scale(ref)"} if source == "predicted" else None)
        with pytest.raises(ValueError, match="source"):
            repo.upsert_latency(s, model_id=m, device_id=d, kind="path", name="final",
                                input_shape=SHAPE, batch=1, dtype="float32", samples_ms=[1.0],
                                gflops=0.0, params=0, predicted_ms=1.0, source="predicted")
    with session_scope(engine) as s:
        plain = repo.load_latency(s, model_id=m, device_id=d)
        both = repo.load_latency(s, model_id=m, device_id=d, include_predicted=True)
    assert [(r.kind, r.source) for r in plain] == [("segment", "measured")]
    assert {(r.kind, r.predicted) for r in both} == {("segment", False), ("head", True)}
    # a measurement under the same key replaces the prediction
    with session_scope(engine) as s:
        repo.upsert_latency(s, model_id=m, device_id=d, kind="head", name="a/h",
                            input_shape=SHAPE, batch=1, dtype="float32", samples_ms=[2.0],
                            gflops=0.0, params=0)
        rows = repo.load_latency(s, model_id=m, device_id=d, include_predicted=True)
    assert all(not r.predicted for r in rows) and len(rows) == 2
