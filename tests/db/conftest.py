"""Store fixtures: every store test runs on a SQLite file and, when configured, on PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

from db import open_store
from db.models import Base
from db.session import VERSION_TABLE

PG_ENV = "DSE_TEST_POSTGRES_URL"


def _reset_postgres(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        Base.metadata.drop_all(conn)
        conn.execute(text(f"DROP TABLE IF EXISTS {VERSION_TABLE}"))
    engine.dispose()


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def store_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """URL of an empty place for a store (the store itself is created by the test)."""
    if request.param == "sqlite":
        yield str(tmp_path / "store.db")
        return
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"{PG_ENV} is not set (.ci/run starts a PostgreSQL server and sets it)")
    _reset_postgres(url)
    yield url
    _reset_postgres(url)


@pytest.fixture
def engine(store_url: str):
    eng = open_store(store_url, create=True)
    yield eng
    eng.dispose()
