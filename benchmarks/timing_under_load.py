"""Latency profiles under load: the older protocol against the interleaved one (a benchmark).

One network (the demo's: fcn_resnet18 at 64x64, 5 positions x 4 heads, 68 components) is
profiled on this CPU by the real latency pass (`profiling.latency.profile_latency`, into a
temporary SQLite store):
1. a reference profile without this benchmark's own load (the interleaved protocol; the machine
   may still be busy with other work: its verdict and load are printed, and a shared machine's
   reference is only as good as they say);
2. for each trial, the older protocol (each component timed to completion in turn, mean
   estimate: what the search used before) and the interleaved protocol (median estimate, spread
   and load checks, bounded re-measurement, closed-loop verdict) while N busy processes that
   this script starts and stops itself run alongside.
Per component: the relative error of each loaded profile's estimate against the reference; per
front point (the reference's front 1 on a synthetic accuracy profile of the same exits, exhaustive
search up to 2 exits): the error of the predicted latency. The interleaved runs that refuse to
store count as detections; the target is that every run either refuses or stores components
within 10% of the reference.

    nice -n 10 .venv/bin/python benchmarks/timing_under_load.py --threads 1 --busy 1 --trials 3

Print `uptime` with the figures: the load average says how quiet "quiet" was.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

HEADS = ("crm64-b0-fcn", "crm64-b1-fcn", "nocrm-b0-fcn", "crm64-b1-rdi-deeplabv3")
POSITIONS = ("layer2.*", "layer3.*", "layer4.0")


def _spin(until: float) -> None:
    x = 0
    while time.time() < until:
        x += 1


@contextmanager
def background_load(n: int, *, max_s: float) -> Iterator[None]:
    """`n` busy processes (pure-Python loops), stopped on exit or after `max_s` seconds."""
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_spin, args=(time.time() + max_s,), daemon=True)
             for _ in range(n)]
    for p in procs:
        p.start()
    try:
        time.sleep(0.2 if n else 0.0)  # let the scheduler see them
        yield
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.join(timeout=5)


def _network():
    from training.adapters import build_network

    torch.manual_seed(0)
    return build_network("fcn_resnet18", num_classes=6, head_space=list(HEADS),
                         positions=list(POSITIONS)).eval()


def _profile(engine, network, model_id: int, name: str, *, protocol: str, threads: int,
             repeat: int):
    from profiling.backends import InSequence, Interleaved
    from profiling.latency import LatencySettings, profile_latency
    from profiling.timing import TimingSettings

    timing = TimingSettings(warmup=3, repeat=repeat)
    settings = LatencySettings(threads=threads, timing=timing, keep_noisy=True)
    proto = Interleaved(timing) if protocol == "new" else InSequence(timing)
    started = time.perf_counter()
    result = profile_latency(engine, network, model_id=model_id, device_name=name,
                             input_size=(64, 64), settings=settings, protocol=proto)
    return result, time.perf_counter() - started


def _estimates(engine, model_id: int, device_id: int, protocol: str) -> dict:
    """What the search would add up: the mean before this change, the median after it."""
    from db import repository
    from db.session import session_scope

    with session_scope(engine) as s:
        rows = repository.load_latency(s, model_id=model_id, device_id=device_id)
    return {(r.kind, r.name): (r.mean_ms if protocol == "old" else r.p50_ms)
            for r in rows if r.kind != "path"}


def _front(network, reference: dict):
    """Front 1 of a synthetic accuracy profile of the network's exits, on the reference costs."""
    from dse.constraints import Constraints
    from dse.data import AccuracyData, cost_from_records
    from dse.evaluate import Evaluator
    from dse.exhaustive import ExhaustiveSearcher
    from dse.space import build_space
    from dse.synthetic import random_accuracy

    names = [p.name for p in network.positions]
    heads = len(HEADS)
    acc = random_accuracy(np.random.default_rng(0), num_positions=len(names), heads=heads,
                          num_samples=64, num_classes=6)
    ids = tuple(f"{names[p]}/{h}" for p in range(len(names)) for h in HEADS)
    data = AccuracyData(exit_ids=ids, position_index=acc.position_index,
                        num_positions=acc.num_positions, edges=acc.edges, tp=acc.tp, fp=acc.fp,
                        fn=acc.fn, hist=acc.hist)

    def evaluator(est: dict) -> Evaluator:
        rows = [SimpleNamespace(kind=k, name=n, estimate_ms=v, gflops=0.0)
                for (k, n), v in est.items()]
        return Evaluator(data, cost_from_records(rows, names))

    ev = evaluator(reference)
    space = build_space(ev.data, max_exits=2)
    result = ExhaustiveSearcher(n_jobs=1, max_front=1).search(
        ev, space, objectives=["miou", "latency"],
        bounds=Constraints().resolve(ev.baseline()))
    configs = [c.config for c, f in zip(result.candidates, result.fronts, strict=True) if f == 1]
    return configs, evaluator


def _errors(est: dict, reference: dict) -> np.ndarray:
    return np.array([abs(est[k] / reference[k] - 1.0) for k in reference])


def _fmt(errs: np.ndarray) -> str:
    return (f"median {np.median(errs):6.1%}  p90 {np.percentile(errs, 90):6.1%}  "
            f"max {errs.max():7.1%}  >10%: {int((errs > 0.10).sum()):3d}/{errs.size}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--busy", type=int, default=1, help="background busy processes")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--max-load-s", type=float, default=120.0,
                    help="a busy process stops itself after this long, whatever happens")
    args = ap.parse_args()

    from db import repository
    from db.session import open_store, session_scope
    from training.checkpoint import describe_network, weights_sha256

    print(f"uptime at start: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
          f"{os.getloadavg()[2]:.2f}; {os.cpu_count()} cores; {args.threads} thread(s); "
          f"{args.busy} busy process(es) in loaded runs; {args.trials} trial(s)")
    network = _network()
    with tempfile.TemporaryDirectory() as tmp:
        engine = open_store(str(Path(tmp) / "bench.db"), create=True)
        with session_scope(engine) as s:
            model_id = repository.upsert_model(
                s, name="bench", arch=network.arch, architecture=describe_network(network),
                weights_sha256=weights_sha256(network), num_classes=network.num_classes).id
        ref_result, secs = _profile(engine, network, model_id, "reference", protocol="new",
                                    threads=args.threads, repeat=args.repeat)
        reference = _estimates(engine, model_id, ref_result.device.id, "new")
        print(f"reference (interleaved, no own load, {secs:.1f} s): "
              f"{ref_result.verdict.line()}")
        configs, evaluator = _front(network, reference)
        ref_lat = [evaluator(reference).evaluate(c).latency_ms for c in configs]
        print(f"front 1 of the reference: {len(configs)} points, "
              f"{min(ref_lat):.2f}-{max(ref_lat):.2f} ms")
        detected = stored_ok = stored_bad = 0
        for trial in range(args.trials):
            for protocol in ("old", "new"):
                name = f"{protocol}-t{trial}"
                with background_load(args.busy, max_s=args.max_load_s):
                    load = os.getloadavg()[0]
                    result, secs = _profile(engine, network, model_id, name, protocol=protocol,
                                            threads=args.threads, repeat=args.repeat)
                est = _estimates(engine, model_id, result.device.id, protocol)
                comp = _errors(est, reference)
                front = np.array([abs(evaluator(est).evaluate(c).latency_ms / r - 1.0)
                                  for c, r in zip(configs, ref_lat, strict=True)])
                verdict = result.verdict
                label = "old (in turn, mean)" if protocol == "old" else "new (interleaved)"
                print(f"trial {trial} {label:20s} load {load:5.2f}  {secs:5.1f} s")
                print(f"   components  {_fmt(comp)}")
                print(f"   front pts   {_fmt(front)}")
                if protocol == "new":
                    if not verdict.ok:
                        detected += 1
                        print(f"   refused: {verdict.line()}")
                    elif comp.max() <= 0.10:
                        stored_ok += 1
                    else:
                        stored_bad += 1
                        print(f"   stored although off: {verdict.line()}")
        engine.dispose()
    print(f"interleaved under load: refused {detected}/{args.trials}, stored within 10% "
          f"{stored_ok}/{args.trials}, stored beyond 10% {stored_bad}/{args.trials}")
    print(f"uptime at end: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
          f"{os.getloadavg()[2]:.2f}")


if __name__ == "__main__":
    main()
