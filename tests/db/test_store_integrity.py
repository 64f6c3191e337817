"""Damaged measurements are refused with one error naming the row, never used.

A count set to 10^15 once turned an exit's mIoU from 0.061 into 1.000; a flipped bit changed
another. Arrays carry a checksum; counts must be plausible; latency summaries must match samples.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from alembic import command
from sqlalchemy import select, text, update
from store_helpers import chunk, fill

from db import open_store, session_scope
from db import repository as repo
from db import session as dbsession
from db.arrays import MAGIC, from_bytes, npy_bytes, seal, to_bytes
from db.errors import StorageError
from db.models import AccuracyChunk, Latency


@pytest.fixture
def filled(tmp_path):
    url = str(tmp_path / "m.db")
    engine = open_store(url, create=True)
    ids = fill(engine)
    yield engine, ids
    engine.dispose()


def _set_chunk(engine, column: str, blob: bytes, row_id: int = 1) -> None:
    with session_scope(engine) as s:
        s.execute(update(AccuracyChunk).where(AccuracyChunk.id == row_id).values({column: blob}))


def _load(engine, profile_id: int) -> None:
    with session_scope(engine, readonly=True) as s:
        repo.load_accuracy(s, profile_id)


def _tp(engine, row_id: int = 1) -> np.ndarray:
    with session_scope(engine, readonly=True) as s:
        blob = s.scalars(select(AccuracyChunk.tp).where(AccuracyChunk.id == row_id)).one()
    return from_bytes(blob, np.int64)


def test_a_flipped_bit_fails_the_checksum_and_names_the_row(filled) -> None:
    engine, ids = filled
    with session_scope(engine, readonly=True) as s:
        blob = bytearray(s.scalars(select(AccuracyChunk.tp).where(AccuracyChunk.id == 1)).one())
    blob[-3] ^= 0x04
    _set_chunk(engine, "tp", bytes(blob))
    with pytest.raises(StorageError, match=r"dse_accuracy_chunk row 1 .* column tp is damaged "
                                           r"\(its checksum does not match"):
        _load(engine, ids["profile"])


@pytest.mark.parametrize("value", [10**15, -1])
def test_implausible_counts_with_a_valid_checksum_are_refused(filled, value: int) -> None:
    engine, ids = filled
    tp = _tp(engine)
    tp[0, 1] = value
    _set_chunk(engine, "tp", to_bytes(tp))
    with pytest.raises(StorageError, match=r"dse_accuracy_chunk row 1 \(accuracy profile 1, exit "
                                           r"'layer1.0/nocrm-b0-fcn', images 0-2\) holds implausible"):
        _load(engine, ids["profile"])


def test_a_count_moved_between_classes_is_caught_by_the_other_exit(filled) -> None:
    engine, ids = filled
    tp = _tp(engine)
    tp[1, 0] += 1  # still non-negative and small: only the ground truth check sees it
    _set_chunk(engine, "tp", to_bytes(tp))
    with pytest.raises(StorageError, match="ground truth"):
        _load(engine, ids["profile"])


def _npz() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, a=np.zeros(3, dtype=np.int64))
    return buf.getvalue()


def _npy(shape: str, data: bytes) -> bytes:
    """.npy bytes with any declared shape (a well-formed, padded version 1.0 header)."""
    header = ("{'descr': '<i8', 'fortran_order': False, 'shape': " + shape + ", }").encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + data


@pytest.mark.parametrize(("blob", "match"), [
    (seal(_npz()), "not .npy bytes"),
    (seal(b"1 2 3\n4 5 6\n"), "not .npy bytes"),
    (_npz(), "not a stored array"),
    (npy_bytes(np.zeros((3, 3), dtype=np.int64)), "bare .npy without checksum"),
    (seal(npy_bytes(np.zeros((3, 3), dtype=np.int64))[:-8]), "its data does not fit"),
    (MAGIC + b"\0" * 40, "checksum"),
    (b"", "not a stored array"),
])
def test_foreign_or_truncated_blobs_are_one_error(blob: bytes, match: str) -> None:
    with pytest.raises(StorageError, match=match):
        from_bytes(blob, np.int64, (3, 3), where="row 9")


def test_a_huge_header_is_refused_without_allocating() -> None:
    data = np.arange(2, dtype=np.int64).tobytes()
    assert from_bytes(seal(_npy("(2,)", data)), np.int64).tolist() == [0, 1]  # the helper is right
    for shape in ("(10000000000000,)", "(10000000000000, 10000000000000)", "(99999999999999999999,)"):
        with pytest.raises(StorageError, match="its data does not fit"):
            from_bytes(seal(_npy(shape, data)), np.int64, where="row 9")
    with pytest.raises(StorageError, match="a .npy header this store never writes"):
        from_bytes(seal(_npy("(-2,)", data)), np.int64, where="row 9")
    bomb = bytearray(_npy("(2,)", data))
    bomb[8:10] = (60000).to_bytes(2, "little")  # a header length far beyond any real one
    with pytest.raises(StorageError, match="header of 60000 bytes"):
        from_bytes(seal(bytes(bomb)), np.int64, where="row 9")


def test_latency_summary_columns_must_match_the_samples(filled) -> None:
    engine, ids = filled
    with session_scope(engine) as s:
        s.execute(update(Latency).where(Latency.id == 2).values(mean_ms=0.001))
    with session_scope(engine, readonly=True) as s, \
            pytest.raises(StorageError, match=r"dse_latency row 2 \(head .*summary columns"):
        repo.load_latency(s, model_id=ids["model"], device_id=ids["device"])


def test_writes_refuse_counts_no_network_produces(filled) -> None:
    engine, ids = filled
    rng = np.random.default_rng(1)
    arrays = chunk(rng, ["layer1.0/nocrm-b0-fcn", "final"], 3)
    arrays["final"].tp[0, 0] += 5
    with session_scope(engine) as s, pytest.raises(ValueError, match=r"image 0: tp \+ fn \(the ground truth\)"):
        repo.add_accuracy_chunk(s, ids["profile"], start=0, arrays=arrays)


def test_0002_store_upgrade_seals_its_arrays(tmp_path) -> None:
    url = str(tmp_path / "old.db")
    path = tmp_path / "old.db"
    dbsession._check_sqlite_file(path, create=True)
    engine = dbsession.make_engine(url)
    with engine.connect() as conn:
        command.upgrade(dbsession._alembic_config(conn), "0002")
        conn.commit()
        conn.execute(text("INSERT INTO dse_model (name, arch, architecture, weights_sha256, "
                          "num_classes, created) VALUES ('m', 'a', '{}', :sha, 3, "
                          "'2026-01-01 00:00:00')"), {"sha": "f" * 64})
        conn.execute(text("INSERT INTO dse_device (name, fingerprint, fingerprint_sha256, created) "
                          "VALUES ('cpu', '{}', :sha, '2026-01-01 00:00:00')"), {"sha": "e" * 64})
        samples = np.array([1.0, 2.0, 3.0])
        conn.execute(text(
            "INSERT INTO dse_latency (model_id, device_id, kind, name, input_shape, batch, dtype, n, "
            "mean_ms, std_ms, min_ms, p50_ms, p90_ms, p99_ms, max_ms, samples_ms, gflops, params, "
            "created) VALUES (1, 1, 'final', 'final', '1x3x8x8', 1, 'float32', 3, :mean, :std, 1.0, "
            "2.0, :p90, :p99, 3.0, :blob, 0.1, 1, '2026-01-01 00:00:00')"),
            {"mean": samples.mean(), "std": samples.std(), "p90": np.percentile(samples, 90),
             "p99": np.percentile(samples, 99), "blob": npy_bytes(samples)})
        conn.commit()
    engine.dispose()
    assert dbsession.upgrade(url)[0] == "0002"
    engine = open_store(url)
    with session_scope(engine, readonly=True) as s:
        (row,) = repo.load_latency(s, model_id=1, device_id=1)
        raw = s.scalars(select(Latency.samples_ms)).one()
    engine.dispose()
    assert raw.startswith(MAGIC)
    np.testing.assert_array_equal(row.samples_ms, [1.0, 2.0, 3.0])
