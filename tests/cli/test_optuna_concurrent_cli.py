"""Four `dse pareto --method optuna --study t1` started together on a new database all succeed.

Optuna creates its own tables without a lock; the first start of a shared study used to crash
3 of 4 workers on PostgreSQL (duplicate enum type) and 2 of 4 on SQLite (table exists).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, text
from test_pareto_cli import _fill

from dse.synthetic import random_accuracy, random_costs

WORKERS = 4
TRIALS = 5
ROOT = Path(__file__).resolve().parents[2]


def _fresh_postgres(url: str) -> None:
    """Drop everything, Optuna's tables and enum types included."""
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'team.db'}"
        return
    url = os.environ.get("DSE_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("DSE_TEST_POSTGRES_URL is not set")
    _fresh_postgres(url)
    yield url
    _fresh_postgres(url)


@pytest.mark.slow
def test_four_workers_start_one_study_on_a_new_database(fresh_url: str) -> None:
    rng = np.random.default_rng(0)
    data = random_accuracy(rng, num_positions=2, heads=1, num_samples=6, num_classes=3)
    _fill(fresh_url, data, random_costs(rng, data))  # the store exists; Optuna's tables do not
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    args = [sys.executable, "-m", "dse", "pareto", "--device", "box", "--db", fresh_url,
            "--method", "optuna", "--study", "t1", "--trials", str(TRIALS), "--max-exits", "2",
            "--json"]
    procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(WORKERS)]
    results = [(p.wait(timeout=240), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    for p in procs:
        p.stdout.close()  # type: ignore[union-attr]
        p.stderr.close()  # type: ignore[union-attr]
    assert [code for code, _ in results] == [0] * WORKERS, results
    import optuna

    study = optuna.load_study(study_name="t1", storage=fresh_url)
    assert len(study.trials) == WORKERS * TRIALS
