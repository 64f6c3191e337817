"""Hand-made search records for the report tests, and a real SQLite store filled with them.

Not a test module: imported by tests/dse/test_report_*.py and tests/browser/.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from db.records import CandidateInput, CandidateRecord, SearchRunRecord, VerificationRecord

EARLY = ("layer2.0/nocrm-b0-fcn", "layer3.1/crm64-b1-rdi-fcn", "layer4.0/nocrm-b1-deeplabv3")
EVIL = "<script>alert(1)</script>"
WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def make_run(run_id: int = 1, *, device: str = "cpu-a", model: str = "tiny-r18",
             constraints: dict | None = None, baseline: dict | None = None,
             fingerprint: dict | None = None) -> SearchRunRecord:
    return SearchRunRecord(
        id=run_id, model_id=1, model_name=model, device_id=run_id, device_name=device,
        device_fingerprint=fingerprint or {"cpu": "Test CPU", "threads": 1, "torch": "2.14.1"},
        accuracy_profile_id=1, method="exhaustive", mode="input-dependent",
        space={"max_exits": 2}, constraints=constraints or {},
        objectives=["miou", "latency_ms"],
        baseline=baseline if baseline is not None else
        {"miou": 0.60, "latency_ms": 40.0, "latency_p95_ms": 44.0, "gflops": 10.0},
        input_shape=[1, 3, 64, 64], duration_s=1.5, n_evaluated=123, created=WHEN,
    )


def cand_input(index: int, *, front: int, exits: tuple[str, ...], miou: float,
               latency_ms: float, th: float = 0.9, feasible: bool = True,
               rates: dict[str, float] | None = None) -> CandidateInput:
    early = [e for e in exits if e != "final"]
    if rates is None:
        share = 1.0 / len(exits)
        rates = {e: share for e in exits}
    return CandidateInput(
        index=index, front=front, exits=list(exits), th_pix=[th] * len(early), th_img=0.8,
        miou=miou, latency_ms=latency_ms, latency_p95_ms=latency_ms * 1.2,
        gflops=latency_ms / 4.0, exit_rates=rates, feasible=feasible,
    )


def candidate_inputs(scale: float = 1.0) -> list[CandidateInput]:
    """Eight candidates: a front of four, two on front 2, one far behind, one infeasible.

    `scale` multiplies the latencies (another device runs the same configurations slower).
    """
    a, b, c = EARLY
    specs = [
        dict(front=1, exits=(a, "final"), miou=0.55, latency_ms=12.0,
             rates={a: 0.7, "final": 0.3}),
        dict(front=1, exits=(b, "final"), miou=0.595, latency_ms=20.0,
             rates={b: 0.6, "final": 0.4}),
        dict(front=1, exits=(a, c, "final"), miou=0.6005, latency_ms=30.0,
             rates={a: 0.2, c: 0.5, "final": 0.3}),
        dict(front=1, exits=(c, "final"), miou=0.63, latency_ms=39.0,
             rates={c: 0.1, "final": 0.9}),
        dict(front=2, exits=(b, c, "final"), miou=0.58, latency_ms=25.0),
        dict(front=2, exits=(a, b, "final"), miou=0.54, latency_ms=14.0),
        dict(front=5, exits=(a, b, c, "final"), miou=0.50, latency_ms=35.0),
        dict(front=1, exits=(b, "final"), miou=0.62, latency_ms=50.0, th=0.99, feasible=False),
    ]
    out = []
    for i, spec in enumerate(specs):
        spec = dict(spec)
        spec["latency_ms"] = float(spec["latency_ms"]) * scale  # type: ignore[arg-type]
        out.append(cand_input(i, **spec))  # type: ignore[arg-type]
    return out


def records(run_id: int = 1, scale: float = 1.0) -> list[CandidateRecord]:
    return [CandidateRecord(run_id=run_id, **vars(c)) for c in candidate_inputs(scale)]


def verification(run_id: int = 1, index: int = 1, *, device: str = "cpu-a") -> VerificationRecord:
    return VerificationRecord(
        id=1, run_id=run_id, candidate_index=index, device_id=run_id, device_name=device,
        dataset="synthetic", split="val",
        predicted={"miou": 0.595, "latency_ms": 20.0, "latency_p95_ms": 24.0, "gflops": 5.0,
                   "exit_rates": {EARLY[1]: 0.6, "final": 0.4}},
        measured={"miou": 0.59, "latency_ms": 22.0, "latency_p95_ms": 25.0, "n_images": 10,
                  "exit_rates": {EARLY[1]: 0.6, "final": 0.4},
                  "latency_samples_ms": [22.0] * 10, "dataset": "synthetic", "split": "val"},
        created=WHEN,
    )


def edges() -> np.ndarray:
    """The profiler's default: 0.00..0.90 by 0.01, then by 0.001 to 1.0 (191 edges)."""
    return np.round(np.concatenate([np.arange(0, 90) / 100, np.arange(900, 1001) / 1000]), 6)


def _device(s, name: str, fingerprint: dict):  # noqa: ANN001, ANN202 - test helper
    """A device row; a name the store now refuses (an XSS attempt) is written as an older
    mess-dse or a merged store could have left it, so the report must still escape it."""
    from db import repository as repo
    from db._common import sha256_json
    from db.models import Device
    from db.records import check_name

    try:
        check_name(name, field="name")
    except ValueError:
        row = Device(name=name, fingerprint=fingerprint, fingerprint_sha256=sha256_json(fingerprint, field="fingerprint"))
        s.add(row)
        s.flush()
        return repo.get_device(s, row.id)
    return repo.upsert_device(s, name=name, fingerprint=fingerprint)


def fill_store(path: Path, *, devices: tuple[str, ...] = ("cpu-a", "cpu-b"),
               verify: bool = True) -> list[int]:
    """A real SQLite store with one accuracy profile and one search run per device.

    Returns the run ids. Device i's latencies are (1 + i) times device 0's.
    """
    from db import repository as repo
    from db.records import ExitArrays
    from db.session import open_store, session_scope

    engine = open_store(f"sqlite:///{path}", create=True)
    exit_ids = [*EARLY, "final"]
    e = edges()
    bins = len(e) - 1
    rng = np.random.default_rng(0)
    run_ids = []
    try:
        with session_scope(engine) as s:
            model = repo.upsert_model(s, name="tiny-r18", arch="resnet18_tiny",
                                      architecture={"positions": 3}, weights_sha256="ab" * 32,
                                      num_classes=3)
            calib = repo.upsert_calibration_set(s, dataset="synthetic", split="val",
                                                content_hash="h" * 16,
                                                sample_ids=[f"s{i}" for i in range(6)])
            prof = repo.upsert_accuracy_profile(
                s, model_id=model.id, calibration_set_id=calib.id, settings={"edge": True},
                edges=e, exit_ids=exit_ids, num_classes=3)
            arrays = {}
            truth = rng.integers(0, 50, size=(6, 3))
            for k, exit_id in enumerate(exit_ids):
                tp = truth - truth // (2 + k)  # one ground truth; later exits miss less
                hist = np.zeros((6, bins), dtype=np.int64)
                # Later exits are more confident: mass shifts towards the top bins.
                hist[:, 40 + 30 * k: 60 + 30 * k] = rng.multinomial(400, np.full(20, 0.05), size=6)
                arrays[exit_id] = ExitArrays(tp=tp, fp=np.roll(truth - tp, 1, axis=1),
                                             fn=truth - tp, hist=hist)
            repo.add_accuracy_chunk(s, prof.id, start=0, arrays=arrays)
            for i, name in enumerate(devices):
                dev = _device(s, name, {"cpu": f"cpu {i}"})
                run = repo.create_search_run(
                    s, model_id=model.id, device_id=dev.id, accuracy_profile_id=prof.id,
                    method="exhaustive", mode="input-dependent", space={"max_exits": 2},
                    constraints={"max_latency_ms": 45.0 * (1 + i), "max_drop_pp": 1.0},
                    objectives=["miou", "latency_ms"],
                    baseline={"miou": 0.60, "latency_ms": 40.0 * (1 + i),
                              "latency_p95_ms": 44.0 * (1 + i), "gflops": 10.0},
                    input_shape=[1, 3, 64, 64], duration_s=1.0, n_evaluated=8)
                repo.add_candidates(s, run.id, candidate_inputs(scale=1.0 + i))
                if verify:
                    v = verification(run.id, 1, device=name)
                    repo.add_verification(s, run_id=run.id, candidate_index=1, device_id=dev.id,
                                          dataset="synthetic", split="val",
                                          predicted=v.predicted, measured=v.measured)
                run_ids.append(run.id)
    finally:
        engine.dispose()
    return run_ids
