"""Shared test settings: keep torch to one thread so parallel work on 2 cores stays predictable."""

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def store_counts():
    """`counts(db) -> {table: rows}`: what a refused command must leave unchanged."""
    from db import repository
    from db.session import open_store, session_scope

    def counts(db: str) -> dict[str, int]:
        engine = open_store(db)
        try:
            with session_scope(engine, readonly=True) as s:
                return repository.row_counts(s)
        finally:
            engine.dispose()

    return counts
