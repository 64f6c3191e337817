"""Closed-loop path checks in the latency table, and the 0001 -> 0002 migration that made room."""

from __future__ import annotations

import numpy as np
import pytest
from alembic import command
from sqlalchemy import text

from db import open_store, session_scope
from db import repository as repo
from db import session as dbsession
from db.merge import merge_stores
from db.records import LATENCY_KINDS

SHAPE = (1, 3, 32, 32)


def _model_device(s) -> tuple[int, int]:
    m = repo.upsert_model(s, name="m", arch="fcn_resnet18", architecture={"positions": ["a"]},
                          weights_sha256="e" * 64, num_classes=3)
    d = repo.upsert_device(s, name="cpu", fingerprint={"cpu": "x"})
    return m.id, d.id


def _put(s, model_id, device_id, kind, name, ms, predicted_ms=None):
    return repo.upsert_latency(s, model_id=model_id, device_id=device_id, kind=kind, name=name,
                               input_shape=SHAPE, batch=1, dtype="float32",
                               samples_ms=np.full(4, ms), gflops=0.0, params=0,
                               predicted_ms=predicted_ms)


def test_path_rows_keep_the_prediction_and_components_do_not(engine) -> None:
    assert "upsample" in LATENCY_KINDS and "path" in LATENCY_KINDS
    with session_scope(engine) as s:
        m, d = _model_device(s)
        up = _put(s, m, d, "upsample", "final", 0.2)
        path = _put(s, m, d, "path", "final", 2.0, predicted_ms=1.5)
        assert up.predicted_ms is None and up.deviation is None
        assert path.predicted_ms == 1.5 and path.deviation == pytest.approx(0.25)
        with pytest.raises(ValueError, match="predicted_ms"):
            _put(s, m, d, "path", "x", 1.0)
        with pytest.raises(ValueError, match="predicted_ms"):
            _put(s, m, d, "head", "x", 1.0, predicted_ms=1.0)
        with pytest.raises(ValueError, match="predicted_ms"):
            _put(s, m, d, "path", "x", 1.0, predicted_ms=float("nan"))
        _put(s, m, d, "path", "final", 3.0, predicted_ms=1.5)  # a new check replaces the old
    with session_scope(engine) as s:
        rows = {(r.kind, r.name): r for r in repo.load_latency(s, model_id=m, device_id=d)}
    assert set(rows) == {("upsample", "final"), ("path", "final")}
    assert rows[("path", "final")].mean_ms == 3.0
    assert rows[("path", "final")].deviation == pytest.approx(0.5)


def test_merge_copies_the_prediction(tmp_path) -> None:
    src, dst = str(tmp_path / "a.db"), str(tmp_path / "b.db")
    for url in (src, dst):
        open_store(url, create=True).dispose()
    engine = open_store(src)
    with session_scope(engine) as s:
        m, d = _model_device(s)
        _put(s, m, d, "path", "final", 2.0, predicted_ms=1.5)
    engine.dispose()
    merge_stores(src, dst)
    merge_stores(src, dst)  # identical rows: skipped, not conflicting
    engine = open_store(dst)
    with session_scope(engine) as s:
        (row,) = repo.load_latency(s, model_id=1, device_id=1)
    engine.dispose()
    assert row.kind == "path" and row.predicted_ms == 1.5


def test_a_0001_store_upgrades_and_keeps_its_rows(tmp_path) -> None:
    url = str(tmp_path / "old.db")
    dbsession._check_sqlite_file(tmp_path / "old.db", create=True)
    engine = dbsession.make_engine(url)
    with engine.connect() as conn:
        command.upgrade(dbsession._alembic_config(conn), "0001")
        conn.commit()
        conn.execute(text("INSERT INTO dse_model (name, arch, architecture, weights_sha256, "
                          "num_classes, created) VALUES ('m', 'a', '{}', :sha, 3, "
                          "'2026-01-01 00:00:00')"), {"sha": "f" * 64})
        conn.commit()
    assert dbsession.current_revision(engine) == "0001"
    engine.dispose()
    assert dbsession.upgrade(url) == ("0001", dbsession.head_revision())
    engine = open_store(url)
    with session_scope(engine) as s:
        assert [m.name for m in repo.list_models(s)] == ["m"]
        d = repo.upsert_device(s, name="cpu", fingerprint={"cpu": "x"})
        row = _put(s, 1, d.id, "path", "final", 2.0, predicted_ms=1.0)
    engine.dispose()
    assert row.predicted_ms == 1.0
