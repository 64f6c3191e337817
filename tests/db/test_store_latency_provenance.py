"""Where imported latency samples came from (`dse_latency.provenance`): stored, read, merged."""

from __future__ import annotations

import numpy as np

from db import open_store, session_scope
from db import repository as repo
from db.merge import merge_stores

SOURCE = {"via": "probe", "pack_sha256": "a" * 64, "results_sha256": "b" * 64,
          "load_before": [0.5, 0.4, 0.3]}


def _fill(url: str) -> None:
    engine = open_store(url)
    with session_scope(engine) as s:
        m = repo.upsert_model(s, name="m", arch="fcn_resnet18", architecture={}, num_classes=3,
                              weights_sha256="e" * 64)
        d = repo.upsert_device(s, name="pi", fingerprint={"runtime": "onnxruntime"})
        for name, source in (("layer1", SOURCE), ("tail", None)):
            repo.upsert_latency(s, model_id=m.id, device_id=d.id, kind="segment", name=name,
                                input_shape=(1, 3, 8, 8), batch=1, dtype="float32",
                                samples_ms=np.ones(3), gflops=0.0, params=0, provenance=source)
    engine.dispose()


def _sources(url: str) -> dict[str, dict | None]:
    engine = open_store(url)
    with session_scope(engine) as s:
        rows = repo.load_latency(s, model_id=1, device_id=1)
    engine.dispose()
    return {r.name: r.provenance for r in rows}


def test_provenance_is_kept_and_merged(store_url, tmp_path) -> None:
    open_store(store_url, create=True).dispose()
    _fill(store_url)
    assert _sources(store_url) == {"layer1": SOURCE, "tail": None}
    other = str(tmp_path / "other.db")
    open_store(other, create=True).dispose()
    merge_stores(store_url, other)
    assert _sources(other) == {"layer1": SOURCE, "tail": None}
