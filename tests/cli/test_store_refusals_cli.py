"""A store that is refused stays byte-identical; a store that refuses writes is one error line."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from test_pareto_cli import _fill

from db import session as dbsession
from dse.cli import main
from dse.synthetic import random_accuracy, random_costs


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_foreign_sqlite_file_is_refused_untouched(tmp_path: Path, capsys) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (x TEXT)")
    conn.execute("INSERT INTO notes VALUES ('mine')")
    conn.commit()
    conn.close()
    before = _digest(path)
    for argv in (["models"], ["devices"], ["db", "info"], ["pareto", "--device", "x"]):
        assert main([*argv, "--db", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert "not a mess-dse store" in err and len(err.splitlines()) == 1, err
    assert _digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]  # no -wal, no -shm


def test_a_new_store_still_uses_wal(tmp_path: Path) -> None:
    url = str(tmp_path / "m.db")
    dbsession.open_store(url, create=True).dispose()
    conn = sqlite3.connect(url)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_a_store_that_refuses_writes_is_one_line(tmp_path: Path, capsys,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    rng = np.random.default_rng(0)
    data = random_accuracy(rng, num_positions=2, heads=1, num_samples=6, num_classes=3)
    _fill(url, data, random_costs(rng, data))
    before = _digest(tmp_path / "m.db")
    listeners = dbsession._sqlite_listeners

    def read_only(engine) -> None:  # noqa: ANN001 - as a read-only file does (root ignores chmod)
        listeners(engine)

        @dbsession.event.listens_for(engine, "connect")
        def _query_only(dbapi_connection, _record) -> None:  # noqa: ANN001
            dbapi_connection.execute("PRAGMA query_only = ON")

    monkeypatch.setattr(dbsession, "_sqlite_listeners", read_only)
    for argv in (["pareto", "--device", "box", "--max-exits", "1"],
                 ["pareto", "--device", "box", "--max-exits", "1", "--method", "optuna",
                  "--trials", "2", "--study", "s"]):
        assert main([*argv, "--db", url]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "readonly" in err, err
    assert _digest(tmp_path / "m.db") == before
