"""Four processes writing to one store at once: every row arrives, nothing is locked out.

On SQLite this is the "database is locked" test; on PostgreSQL it checks that racing creators of
a new store and racing upserts of the same model/device rows all succeed.
"""

from __future__ import annotations

import multiprocessing as mp
import traceback

import numpy as np
import pytest

from db import open_store, session_scope
from db import repository as repo

WORKERS = 4
ROWS = 15
SHA = "c" * 64


def _worker(url: str, worker: int, queue) -> None:  # noqa: ANN001 - mp.Queue
    try:
        # Every worker opens (and, if first, creates) the store itself, like `dse profile` does.
        engine = open_store(url, create=True)
        rng = np.random.default_rng(worker)
        for i in range(ROWS):
            with session_scope(engine) as s:
                # All workers race for the same model and device rows, then each adds its own
                # latency rows: reads followed by writes in one transaction.
                m = repo.upsert_model(s, name="shared", arch="tiny", architecture={},
                                      weights_sha256=SHA, num_classes=2)
                d = repo.upsert_device(s, name=f"dev{worker % 2}", fingerprint={"w": worker % 2})
                repo.upsert_latency(
                    s, model_id=m.id, device_id=d.id, kind="segment", name=f"w{worker}-{i}",
                    input_shape=(1, 3, 32, 32), batch=1, dtype="float32",
                    samples_ms=rng.uniform(1, 2, 20), gflops=0.1, params=1,
                )
        engine.dispose()
        queue.put((worker, None))
    except BaseException:  # noqa: BLE001 - reported to the parent
        queue.put((worker, traceback.format_exc()))


@pytest.mark.slow
def test_four_writers_on_one_store(store_url: str) -> None:
    url = store_url
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(url, w, queue)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    errors = {w: err for w, err in results.items() if err}
    assert not errors, errors
    engine = open_store(url)
    with session_scope(engine) as s:
        counts = repo.row_counts(s)
        names = {
            rec.name
            for d in repo.list_devices(s)
            for rec in repo.load_latency(s, model_id=1, device_id=d.id)
        }
    engine.dispose()
    assert counts["dse_model"] == 1 and counts["dse_device"] == 2
    assert counts["dse_latency"] == WORKERS * ROWS
    assert names == {f"w{w}-{i}" for w in range(WORKERS) for i in range(ROWS)}
