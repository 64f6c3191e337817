"""Helpers that fill a small store (imported by the store and CLI tests)."""

from __future__ import annotations

import numpy as np

from db import ExitArrays, ExitInput, session_scope
from db import repository as repo

SHA_A = "a" * 64
SHA_B = "b" * 64


def chunk(rng: np.random.Generator, exit_ids, n: int, classes: int = 3, bins: int = 4,
          pixels: int = 64):
    """Random but plausible counts for `n` images of every exit: one ground truth per image
    (tp + fn the same at every exit), misses counted again as false positives elsewhere, and
    histograms over `pixels` pixels (the store refuses counts no network could produce)."""
    truth = rng.multinomial(pixels, np.full(classes, 1 / classes), size=n)
    out = {}
    for e in exit_ids:
        tp = rng.binomial(truth, rng.uniform(0.2, 0.9))
        fn = truth - tp
        fp = np.stack([rng.multinomial(int(m), np.full(classes, 1 / classes)) for m in fn.sum(axis=1)])
        hist = rng.multinomial(pixels, np.full(bins, 1 / bins), size=n)
        out[e] = ExitArrays(tp=tp, fp=fp, fn=fn, hist=hist)
    return out


def fill(engine, *, sha: str = SHA_A, device: str = "cpu-box", seed: int = 0) -> dict[str, int]:
    """A small but complete store: model, exits, calibration set, profile, device, latency, run."""
    rng = np.random.default_rng(seed)
    exit_ids = ["layer1.0/nocrm-b0-fcn", "final"]
    with session_scope(engine) as s:
        m = repo.upsert_model(
            s, name=f"tiny-{sha[:4]}", arch="tiny_resnet", architecture={"width": 8},
            weights_sha256=sha, num_classes=3,
        )
        repo.upsert_exits(s, m.id, [
            ExitInput(exit_id=e, position="layer1.0" if i == 0 else "tail", position_index=i,
                      head={"kind": "fcn"}, params=100 * (i + 1), gflops=0.01 * (i + 1),
                      input_shape=(1, 3, 32, 32))
            for i, e in enumerate(exit_ids)
        ])
        c = repo.upsert_calibration_set(
            s, dataset="synthetic", split="val", content_hash=f"calib-{seed}",
            sample_ids=[f"img{i}" for i in range(6)],
        )
        p = repo.upsert_accuracy_profile(
            s, model_id=m.id, calibration_set_id=c.id, settings={"edge_correction": True},
            edges=np.linspace(0, 1, 5), exit_ids=exit_ids, num_classes=3,
        )
        for start in (0, 3):
            repo.add_accuracy_chunk(s, p.id, start=start, arrays=chunk(rng, exit_ids, 3))
        repo.finish_accuracy_profile(s, p.id)
        d = repo.upsert_device(s, name=device, fingerprint={"cpu": "test", "threads": 1})
        for kind, name in (("segment", "layer1.0"), ("head", exit_ids[0]), ("final", "final")):
            repo.upsert_latency(
                s, model_id=m.id, device_id=d.id, kind=kind, name=name, input_shape=(1, 3, 32, 32),
                batch=1, dtype="float32", samples_ms=rng.uniform(1, 2, 10), gflops=0.01, params=10,
            )
        run = repo.create_search_run(
            s, model_id=m.id, device_id=d.id, accuracy_profile_id=p.id, method="exhaustive",
            mode="input-dependent", space={"max_exits": 1}, constraints={},
            objectives=["miou", "latency_ms"], baseline={"miou": 0.5}, input_shape=[1, 3, 32, 32],
        )
    return {"model": m.id, "device": d.id, "profile": p.id, "run": run.id, "calib": c.id}
