"""Alembic environment of the store.

Run by `db.session.upgrade()` with an open connection in `config.attributes["connection"]`, so the
migration uses the store's own engine settings (SQLite: `BEGIN IMMEDIATE`, busy timeout). Our
version table is `dse_alembic_version`: Optuna keeps its own `alembic_version` in the same database.
"""

from alembic import context
from sqlalchemy import create_engine

from db.models import Base

VERSION_TABLE = "dse_alembic_version"
target_metadata = Base.metadata


def _ours(obj, name, type_, reflected, compare_to):  # noqa: ANN001 - alembic hook signature
    """Autogenerate looks only at our tables, never at Optuna's."""
    return type_ != "table" or name.startswith("dse_")


def _configure(connection) -> None:  # noqa: ANN001
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        include_object=_ours,
        render_as_batch=connection.dialect.name == "sqlite",
        # One transaction for every step, SQLite included (its DDL is transactional; Alembic
        # assumes not and would commit per step): a process creating or upgrading the store
        # holds the write lock until the schema is current, so a racing process never sees an
        # intermediate revision nor runs a step twice.
        transactional_ddl=True,
    )


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    # Command-line use (`alembic -c db/alembic.ini -x url=...`), for writing new revisions.
    url = context.get_x_argument(as_dictionary=True).get("url", "sqlite:///mess.db")
    engine = create_engine(url)
    with engine.connect() as connection:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; use `dse db upgrade`")
run_migrations_online()
