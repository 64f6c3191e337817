"""Opening a store: URL checks, engine settings, schema revision, units of work.

A plain path (no `://`) is a SQLite file. SQLite connections use WAL, foreign keys and a busy
timeout, and every write transaction starts with `BEGIN IMMEDIATE`, so concurrent writers queue
for the lock instead of failing with "database is locked" when a reader upgrades to a writer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from db.errors import StorageError

VERSION_TABLE = "dse_alembic_version"
BUSY_TIMEOUT_S = 60.0
FILL_HINT = "`dse profile --checkpoint CKPT --device NAME` or `dse demo` fills a store"
_SQLITE_MAGIC = b"SQLite format 3\x00"
_READONLY = "dse_readonly"


def parse_url(url: str) -> URL:
    """Turn a `--db` value into a SQLAlchemy URL; a plain path means a SQLite file."""
    if not url or not url.strip():
        raise StorageError("the store URL is empty; pass --db URL or a SQLite file path")
    text = url.strip()
    if "://" not in text:
        return URL.create("sqlite", database=str(Path(text).expanduser()))
    try:
        return make_url(text)
    except (ArgumentError, ValueError) as e:
        raise StorageError(
            f"malformed store URL {text!r}; use e.g. sqlite:///mess.db, a file path, "
            "or postgresql+psycopg2://user@host/dbname"
        ) from e


def display_url(url: str | URL) -> str:
    """The URL without its password, for messages."""
    parsed = parse_url(url) if isinstance(url, str) else url
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        return parsed.database
    return parsed.render_as_string(hide_password=True)


def sqlite_path(url: URL) -> Path | None:
    """The file of a SQLite URL; None for other databases and in-memory SQLite."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database).expanduser().resolve()  # type: ignore[arg-type]


def _check_sqlite_file(path: Path, *, create: bool) -> None:
    if path.is_dir():
        raise StorageError(f"{path} is a directory, not a store; pass --db FILE.db")
    if not path.exists():
        if not create:
            raise StorageError(f"no store at {path}; {FILL_HINT}, or pass --db URL")
        if not path.parent.is_dir():
            raise StorageError(f"cannot create a store at {path}: folder {path.parent} is missing")
        return
    try:
        with path.open("rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except OSError as e:
        raise StorageError(f"cannot read {path}: {e.strerror}") from e
    # Judge by the bytes read, not a later stat: another process creating the same store may
    # write its header between the two, which made a racing creator refuse a good store.
    if head != _SQLITE_MAGIC and not (create and head == b""):
        raise StorageError(f"{path} is not a mess-dse store (not a SQLite file); pass --db URL")


def _sqlite_listeners(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, emit BEGIN (the documented pysqlite recipe).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        readonly = conn.get_execution_options().get(_READONLY, False)
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


def _use_wal(engine: Engine) -> None:
    """Switch a recognised SQLite store to WAL (kept in the file, so once is enough).

    Not done on connect: a file that turns out not to be a store must be left byte-identical,
    and the journal mode lives in its header.
    """
    if engine.dialect.name != "sqlite" or sqlite_path(engine.url) is None:
        return
    raw = engine.raw_connection()  # autocommit DBAPI connection: the pragma needs no transaction
    try:
        cursor = raw.cursor()
        mode = cursor.execute("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() != "wal":
            cursor.execute("PRAGMA journal_mode = WAL")
        cursor.close()
    finally:
        raw.close()


def make_engine(url: str | URL) -> Engine:
    """An engine with the store's connection settings, without any schema check."""
    parsed = parse_url(url) if isinstance(url, str) else url
    try:
        if parsed.get_backend_name() == "sqlite":
            engine = create_engine(parsed, connect_args={"timeout": BUSY_TIMEOUT_S})
            _sqlite_listeners(engine)
        else:
            engine = create_engine(parsed, pool_pre_ping=True)
    except NoSuchModuleError as e:
        raise StorageError(
            f"unsupported database in {display_url(parsed)!r}; use sqlite:///FILE or postgresql+psycopg2://..."
        ) from e
    except ImportError as e:
        raise StorageError(
            f"cannot use store URL {display_url(parsed)!r}: its database driver is not installed "
            f"({e}); use sqlite:///FILE, a file path, or postgresql+psycopg2://user@host/dbname "
            "(pip install 'mess-dse[postgres]')"
        ) from e
    except ArgumentError as e:
        raise StorageError(f"cannot use store URL {display_url(parsed)!r}: {e}") from e
    return engine


# ----------------------------------------------------------------------------- migrations


def _alembic_config(connection: Any = None) -> Any:
    from alembic.config import Config

    here = Path(__file__).resolve().parent
    cfg = Config(str(here / "alembic.ini"))
    cfg.set_main_option("script_location", str(here / "migrations"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@lru_cache(maxsize=1)
def _revisions() -> tuple[str, tuple[str, ...]]:
    """(head revision, every known revision) of the shipped migrations."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config())
    head = script.get_current_head()
    assert head is not None, "the package ships no migrations"
    return head, tuple(r.revision for r in script.walk_revisions())


def head_revision() -> str:
    """The schema revision this version of mess-dse writes."""
    return _revisions()[0]


def current_revision(engine: Engine) -> str | None:
    """The store's schema revision; None when it has no mess-dse tables yet."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect().execution_options(**{_READONLY: True}) as conn:
        if not inspect(conn).has_table(VERSION_TABLE):
            return None
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return ctx.get_current_revision()


# Any constants: PostgreSQL processes that create or upgrade one store take turns on it; those
# that set up a library's own tables in it (Optuna's) take turns on the second.
_PG_MIGRATION_LOCK = 0x6D657373
_PG_EXCLUSIVE_LOCK = 0x6D657374


def _migrate(engine: Engine) -> None:
    """Run the migrations; safe when several processes create the same new store at once.

    SQLite serialises them through `BEGIN IMMEDIATE`, PostgreSQL through an advisory lock. Either
    way Alembic reads the version table only once it holds the lock, so latecomers find the
    schema current and do nothing.
    """
    from alembic import command

    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.begin()
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        command.upgrade(_alembic_config(conn), "head")
        conn.commit()


def _connect_error(engine: Engine, e: Exception) -> StorageError:
    return StorageError(
        f"cannot open the store {display_url(engine.url)}: {str(e).splitlines()[0]}"
    )


def upgrade(url: str) -> tuple[str | None, str]:
    """Bring a store to the newest schema, creating it when missing (`dse db upgrade`).

    Returns:
        (revision before, revision after).
    """
    parsed = parse_url(url)
    path = sqlite_path(parsed)
    if path is not None:
        _check_sqlite_file(path, create=True)
    engine = make_engine(parsed)
    try:
        before = _check_revision(engine, allow_old=True)
        if before != head_revision():
            _migrate(engine)
        _use_wal(engine)
        return before, head_revision()
    except (OperationalError, SQLAlchemyError) as e:
        if isinstance(e, StorageError):
            raise
        raise _connect_error(engine, e) from e
    finally:
        engine.dispose()


def _check_revision(engine: Engine, *, allow_old: bool) -> str | None:
    rev = current_revision(engine)
    head, known = _revisions()
    if rev is None or rev == head:
        return rev
    if rev not in known:
        raise StorageError(
            f"the store {display_url(engine.url)} has schema revision {rev}, newer than this "
            f"mess-dse ({head}); upgrade mess-dse to use it"
        )
    if not allow_old:
        raise StorageError(
            f"the store {display_url(engine.url)} has an older schema ({rev}, current {head}); "
            f"run `dse db upgrade --db {display_url(engine.url)}` first"
        )
    return rev


def open_store(url: str, *, create: bool = False) -> Engine:
    """Open a store and check its schema revision.

    Args:
        url: SQLAlchemy URL or SQLite file path.
        create: create the store (SQLite file and tables) when it does not exist yet; commands
            that only read pass False.

    Raises:
        StorageError: bad URL, missing or foreign file, unreachable server, or a schema revision
            other than this version's.
    """
    parsed = parse_url(url)
    path = sqlite_path(parsed)
    if path is not None:
        _check_sqlite_file(path, create=create)
    engine = make_engine(parsed)
    try:
        rev = _check_revision(engine, allow_old=False)
        if rev is None:
            if not create:
                raise StorageError(
                    f"{display_url(parsed)} is not a mess-dse store (no {VERSION_TABLE} table); "
                    f"{FILL_HINT}"
                )
            _migrate(engine)
        _use_wal(engine)
    except StorageError:
        engine.dispose()
        raise
    except SQLAlchemyError as e:
        engine.dispose()
        if path is not None and "file is not a database" in str(e):
            raise StorageError(f"{path} is not a mess-dse store (not a SQLite file)") from e
        raise _connect_error(engine, e) from e
    return engine


@contextmanager
def exclusive(url: str) -> Iterator[None]:
    """Hold a lock on the store that other processes taking it wait for, while the block runs.

    For work another library does on its own connections and does not serialise itself:
    Optuna creates its tables with a plain `create_all`, so several workers starting one study on
    a new database race (duplicate tables or enum types). PostgreSQL: a transaction-scoped
    advisory lock on a connection of our own. SQLite: `flock` on the database file, which
    SQLite's own (fcntl) locks ignore, so the library's connections still write freely; nothing
    is locked for an in-memory database or where `flock` does not exist.
    """
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = sqlite_path(parsed)
        try:
            import fcntl
        except ImportError:  # not POSIX: no cross-process lock to take
            path = None
        if path is None or not path.is_file():
            yield
            return
        with path.open("rb") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return
    engine = make_engine(parsed)
    try:
        try:
            conn = engine.connect()
            if conn.dialect.name == "postgresql":
                conn.begin()
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_EXCLUSIVE_LOCK})
        except SQLAlchemyError as e:
            raise _connect_error(engine, e) from e
        try:
            yield
        finally:
            conn.close()  # ends the transaction, and with it the lock
    finally:
        engine.dispose()


@contextmanager
def session_scope(engine: Engine, *, readonly: bool = False) -> Iterator[Session]:
    """One unit of work: commit at the end, roll everything back on any exception.

    `readonly=True` takes no write lock on SQLite (plain `BEGIN`), for long reads.
    """
    session = Session(engine, expire_on_commit=False)
    try:
        if readonly:
            session.connection(execution_options={_READONLY: True})
        yield session
        session.commit()
    except OperationalError as e:
        # The database refused the work (a read-only file, a full disk, a lost server): one line.
        session.rollback()
        raise StorageError(
            f"the store {display_url(engine.url)} refused the operation: "
            f"{str(e.orig or e).splitlines()[0]}; nothing of it was written"
        ) from e
    except OverflowError as e:
        # An id or count beyond the database's 64-bit integers (`--run 99999...`): no such row.
        session.rollback()
        raise StorageError(
            f"a number is beyond what the store {display_url(engine.url)} holds ({e}): no row has "
            "that id; `dse pareto` and `dse models` print the ids"
        ) from e
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
