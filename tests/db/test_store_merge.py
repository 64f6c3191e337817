"""`dse db merge`: rows come back by natural keys, nothing duplicated, conflicts reported."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import text
from store_helpers import SHA_A, SHA_B, chunk, fill

from db import CandidateInput, StorageError, open_store, session_scope
from db import repository as repo
from db.merge import merge_stores
from db.session import VERSION_TABLE, make_engine


def test_merge_copies_new_rows_and_skips_identical(
    store_url: str, tmp_path, store_counts
) -> None:
    target = open_store(store_url, create=True)
    fill(target)  # model A on cpu-box
    target.dispose()
    other = str(tmp_path / "other.db")
    source = open_store(other, create=True)
    fill(source)  # the same rows, measured identically (same seed)...
    ids_b = fill(source, sha=SHA_B, device="jetson", seed=1)  # ...plus model B on a new device
    with session_scope(source) as s:
        repo.add_candidates(s, ids_b["run"], [CandidateInput(
            index=0, front=1, exits=["final"], th_pix=[], th_img=0.5, miou=0.5, latency_ms=1.0,
            latency_p95_ms=1.0, gflops=0.1, exit_rates={"final": 1.0}, feasible=True,
        )])
        repo.add_verification(
            s, run_id=ids_b["run"], candidate_index=0, device_id=ids_b["device"], dataset="d",
            split="val", predicted={"miou": 0.5}, measured={"miou": 0.5},
        )
    source.dispose()
    before = store_counts(store_url)
    report = merge_stores(other, store_url)
    after = store_counts(store_url)
    assert report.conflicts == []
    assert report.copied["dse_model"] == 1 and report.skipped["dse_model"] == 1
    assert report.copied["dse_latency"] == 3 and report.skipped["dse_latency"] == 3
    assert report.copied["dse_accuracy_chunk"] == 4 and report.skipped["dse_accuracy_chunk"] == 4
    # The search run of the first fill has its own uid in each store: both are kept.
    assert report.copied["dse_search_run"] == 2
    assert report.copied["dse_candidate"] == 1 and report.copied["dse_verification"] == 1
    for table, n in after.items():
        assert n == before[table] + report.copied.get(table, 0), table
    assert after == store_counts(other) | {"dse_search_run": 3}
    # Merging again copies nothing.
    again = merge_stores(other, store_url)
    assert sum(again.copied.values()) == 0 and again.conflicts == []
    assert store_counts(store_url) == after
    # The merged measurements are usable: ids remapped, arrays intact.
    engine = open_store(store_url)
    with session_scope(engine) as s:
        model = repo.get_model(s, SHA_B[:8])
        device = repo.get_device(s, "jetson")
        assert len(repo.load_latency(s, model_id=model.id, device_id=device.id)) == 3
        prof = repo.find_accuracy_profiles(s, model.id)[0]
        assert prof.complete and repo.load_accuracy(s, prof.id).tp.shape == (2, 6, 3)
    engine.dispose()


def test_conflicting_measurements_are_reported_not_copied(store_url: str, tmp_path) -> None:
    target = open_store(store_url, create=True)
    ids = fill(target)
    target.dispose()
    other = str(tmp_path / "other.db")
    source = open_store(other, create=True)
    fill(source, seed=0)
    with session_scope(source) as s:  # same key, other numbers
        repo.upsert_latency(
            s, model_id=ids["model"], device_id=ids["device"], kind="segment", name="layer1.0",
            input_shape=(1, 3, 32, 32), batch=1, dtype="float32", samples_ms=[99.0], gflops=0.01,
            params=10,
        )
    source.dispose()
    report = merge_stores(other, store_url)
    assert report.conflict_counts == {"dse_latency": 1}
    assert "latency of segment layer1.0" in report.conflicts[0]
    engine = open_store(store_url)
    with session_scope(engine) as s:
        lat = repo.load_latency(s, model_id=ids["model"], device_id=ids["device"])
        assert all(rec.max_ms < 99 for rec in lat) and len(lat) == 3
    engine.dispose()


def test_a_model_named_otherwise_is_the_same_model(store_url: str, tmp_path) -> None:
    """Names default to the checkpoint's file name: another name is no conflict."""
    from sqlalchemy import update

    from db.models import Model

    target = open_store(store_url, create=True)
    fill(target)
    target.dispose()
    other = str(tmp_path / "other.db")
    source = open_store(other, create=True)
    fill(source)
    with session_scope(source) as s:
        s.execute(update(Model).values(name="lite0-copied-to-the-jetson.pt"))
    source.dispose()
    report = merge_stores(other, store_url)
    assert report.conflicts == [] and report.conflict_counts == {}
    assert report.skipped["dse_model"] == 1 and report.copied.get("dse_model", 0) == 0
    engine = open_store(store_url)
    with session_scope(engine) as s:
        assert [m.name for m in repo.list_models(s)] == [f"tiny-{SHA_A[:4]}"]  # ours is kept
    engine.dispose()
    source = open_store(other)
    with session_scope(source) as s:  # a real difference of the same weights still is one
        s.execute(update(Model).values(num_classes=5))
    source.dispose()
    assert merge_stores(other, store_url).conflict_counts == {"dse_model": 1}


def test_partial_profile_is_completed_by_merge(tmp_path) -> None:
    exit_ids = ["layer1.0/nocrm-b0-fcn", "final"]
    rng = np.random.default_rng(3)
    halves = [chunk(rng, exit_ids, 3), chunk(rng, exit_ids, 3)]
    urls = [str(tmp_path / "a.db"), str(tmp_path / "b.db")]
    for url, starts in zip(urls, [(0,), (0, 3)], strict=True):
        engine = open_store(url, create=True)
        with session_scope(engine) as s:
            m = repo.upsert_model(s, name="m", arch="a", architecture={}, weights_sha256=SHA_B,
                                  num_classes=3)
            c = repo.upsert_calibration_set(s, dataset="d", split="val", content_hash="h",
                                            sample_ids=[str(i) for i in range(6)])
            p = repo.upsert_accuracy_profile(s, model_id=m.id, calibration_set_id=c.id, settings={},
                                             edges=np.linspace(0, 1, 5), exit_ids=exit_ids,
                                             num_classes=3)
            for start in starts:
                repo.add_accuracy_chunk(s, p.id, start=start, arrays=halves[start // 3])
            if len(starts) == 2:
                repo.finish_accuracy_profile(s, p.id)
        engine.dispose()
    report = merge_stores(urls[1], urls[0])
    assert report.copied["dse_accuracy_chunk"] == 2 and report.skipped["dse_accuracy_chunk"] == 2
    engine = open_store(urls[0])
    with session_scope(engine) as s:
        prof = repo.find_accuracy_profiles(s, 1)[0]
        assert prof.complete and set(prof.summaries) == set(exit_ids)
        np.testing.assert_array_equal(repo.load_accuracy(s, prof.id).fp[1, 3:], halves[1]["final"].fp)
    engine.dispose()


def test_self_merge_is_refused(tmp_path) -> None:
    path = tmp_path / "a.db"
    open_store(str(path), create=True).dispose()
    for same in (str(path), f"sqlite:///{path}", str(tmp_path / "." / "a.db")):
        with pytest.raises(StorageError, match="into itself"):
            merge_stores(same, str(path))


def test_newer_source_missing_source_are_refused(tmp_path, store_counts) -> None:
    target, source = str(tmp_path / "t.db"), str(tmp_path / "s.db")
    engine = open_store(target, create=True)
    fill(engine)
    engine.dispose()
    before = store_counts(target)
    with pytest.raises(StorageError, match="merge source: no store at"):
        merge_stores(source, target)
    fill_engine = open_store(source, create=True)
    fill(fill_engine, sha=SHA_B)
    fill_engine.dispose()
    eng = make_engine(source)
    with eng.begin() as conn:
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = 'ffff'"))
    eng.dispose()
    with pytest.raises(StorageError, match="merge source: .*newer than this mess-dse"):
        merge_stores(source, target)
    assert store_counts(target) == before
