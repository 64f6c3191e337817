"""Opening stores: URLs, missing and foreign files, schema revisions, SQLite settings, rollback."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, inspect, select, text
from store_helpers import SHA_A, fill

from db import StorageError, open_store, session_scope, upgrade
from db import repository as repo
from db import session as dbsession
from db.models import Model
from db.session import VERSION_TABLE, head_revision


def test_new_store_is_created_at_head(store_url: str) -> None:
    engine = open_store(store_url, create=True)
    try:
        assert dbsession.current_revision(engine) == head_revision()
        tables = set(inspect(engine).get_table_names())
        assert VERSION_TABLE in tables
        assert "alembic_version" not in tables  # that name belongs to Optuna
        assert {"dse_model", "dse_latency", "dse_accuracy_chunk", "dse_candidate"} <= tables
    finally:
        engine.dispose()
    # Re-opening an existing store neither needs nor repeats creation.
    engine = open_store(store_url)
    engine.dispose()


def test_missing_file_is_refused_and_not_created(tmp_path) -> None:
    path = tmp_path / "missing.db"
    with pytest.raises(StorageError, match="no store at .*dse profile"):
        open_store(str(path))
    assert not path.exists()
    with pytest.raises(StorageError, match="folder .* is missing"):
        open_store(str(tmp_path / "nodir" / "x.db"), create=True)


def test_file_that_is_not_sqlite_is_refused_unchanged(tmp_path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("hello, not a database\n")
    with pytest.raises(StorageError, match="not a mess-dse store"):
        open_store(str(path), create=True)
    assert path.read_text() == "hello, not a database\n"


def test_sqlite_file_of_another_program_is_refused(tmp_path) -> None:
    path = tmp_path / "other.db"
    eng = create_engine(f"sqlite:///{path}")
    with eng.begin() as conn:
        conn.execute(text("CREATE TABLE things (x INTEGER)"))
    eng.dispose()
    with pytest.raises(StorageError, match="not a mess-dse store"):
        open_store(str(path))
    eng = create_engine(f"sqlite:///{path}")
    assert inspect(eng).get_table_names() == ["things"]
    eng.dispose()


@pytest.mark.parametrize(
    ("url", "pattern"),
    [
        ("postgresql://user@host:notaport/db", "malformed store URL"),
        ("nosuchdb://host/x", "unsupported database"),
        ("   ", "empty"),
    ],
)
def test_bad_urls_give_one_clear_line(url: str, pattern: str) -> None:
    with pytest.raises(StorageError, match=pattern) as info:
        open_store(url)
    assert "\n" not in str(info.value)


def test_unreachable_server_is_a_storage_error() -> None:
    pytest.importorskip("psycopg2")
    with pytest.raises(StorageError, match="cannot open the store"):
        open_store("postgresql+psycopg2://nobody@127.0.0.1:1/none?connect_timeout=2")


def test_older_schema_names_the_upgrade_command(store_url: str, monkeypatch) -> None:
    open_store(store_url, create=True).dispose()
    # Pretend this mess-dse ships a newer revision after the store's (the current head).
    shipped = head_revision()
    monkeypatch.setattr(dbsession, "_revisions", lambda: ("9998", ("9998", shipped)))
    with pytest.raises(StorageError, match="older schema .*dse db upgrade"):
        open_store(store_url)


def test_newer_schema_asks_to_upgrade_mess_dse(store_url: str) -> None:
    open_store(store_url, create=True).dispose()
    eng = dbsession.make_engine(store_url)
    with eng.begin() as conn:
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '9999'"))
    eng.dispose()
    with pytest.raises(StorageError, match="newer than this mess-dse .*upgrade mess-dse"):
        open_store(store_url)
    with pytest.raises(StorageError, match="newer"):
        upgrade(store_url)


def test_upgrade_creates_and_is_idempotent(store_url: str) -> None:
    assert upgrade(store_url) == (None, head_revision())
    assert upgrade(store_url) == (head_revision(), head_revision())


def test_optuna_shares_the_database(tmp_path) -> None:
    optuna = pytest.importorskip("optuna")
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(storage=url, study_name="before")
    engine = open_store(url, create=True)
    fill(engine)
    engine.dispose()
    study = optuna.create_study(storage=url, study_name="after")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    engine = open_store(url)
    with session_scope(engine) as s:
        assert [m.weights_sha256 for m in repo.list_models(s)] == [SHA_A]
    tables = set(inspect(engine).get_table_names())
    assert {"alembic_version", VERSION_TABLE, "studies"} <= tables
    engine.dispose()


def test_sqlite_settings(tmp_path) -> None:
    engine = open_store(str(tmp_path / "s.db"), create=True)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 10_000
    engine.dispose()


def test_exception_inside_a_unit_of_work_leaves_no_rows(engine) -> None:
    class Boom(RuntimeError):
        pass

    with pytest.raises(Boom), session_scope(engine) as s:
        m = repo.upsert_model(
            s, name="m", arch="tiny", architecture={}, weights_sha256=SHA_A, num_classes=3
        )
        d = repo.upsert_device(s, name="cpu", fingerprint={"a": 1})
        repo.upsert_latency(
            s, model_id=m.id, device_id=d.id, kind="segment", name="layer1", input_shape=(1, 3, 8, 8),
            batch=1, dtype="float32", samples_ms=[1.0, 2.0], gflops=0.0, params=0,
        )
        raise Boom("power cut")
    with session_scope(engine) as s:
        assert all(n == 0 for n in repo.row_counts(s).values())
        assert s.scalars(select(Model)).first() is None


def test_readonly_scope_reads_while_a_writer_holds_the_lock(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(dbsession, "BUSY_TIMEOUT_S", 0.5)
    path = str(tmp_path / "s.db")
    writer_engine = open_store(path, create=True)
    reader_engine = open_store(path)
    with session_scope(writer_engine) as w:
        repo.upsert_device(w, name="cpu", fingerprint={})  # holds the write lock until commit
        with session_scope(reader_engine, readonly=True) as r:
            assert repo.list_devices(r) == []  # sees the last commit, does not wait
        with pytest.raises(StorageError, match="locked"), session_scope(reader_engine) as r2:
            repo.list_devices(r2)  # a write transaction queues behind the writer
    with session_scope(reader_engine, readonly=True) as r:
        assert [d.name for d in repo.list_devices(r)] == ["cpu"]
    writer_engine.dispose()
    reader_engine.dispose()


def test_display_url_hides_passwords() -> None:
    shown = dbsession.display_url("postgresql+psycopg2://me:s3cret@db.example:5432/mess")
    assert "s3cret" not in shown and "db.example" in shown
    assert dbsession.display_url("/tmp/x.db") == "/tmp/x.db"
