"""Search throughput benchmark (not a test): exhaustive engine vs reference, Optuna hypervolume.

Synthetic profile: 500 images, 21 classes, 16 positions x 8 heads, up to 3 early exits,
4 th_pix x 5 th_img = 20 threshold pairs. Prints configurations per second, peak memory, the
speed-up over a per-image reference evaluator, and the hypervolume Optuna reaches after a time
budget and after a trial budget as a share of the exhaustive front's.

    .venv/bin/python benchmarks/search_throughput.py [--jobs 2] [--optuna-seconds 60]
        [--optuna-trials 10000] [--dtype float32|float64] [--skip-optuna]
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np

from dse.constraints import Bounds
from dse.evaluate import Evaluator
from dse.exhaustive import ExhaustiveSearcher
from dse.optuna_search import OptunaSearcher
from dse.pareto import hypervolume_2d
from dse.space import Configuration, build_space, count_configurations
from dse.synthetic import random_accuracy, random_costs
from dse.uncertainty import Bootstrap, BootstrapSettings


def reference_seconds_per_config(ev: Evaluator, configs: list[Configuration]) -> float:
    """Per-image Python loop, as in tests/dse/test_evaluate.py."""
    data, cost = ev.data, ev.cost
    started = time.perf_counter()
    for c in configs:
        rows = [ev.index[e] for e in c.exits]
        edge = [data.edge_index(t) for t in c.th_pix]
        tp = np.zeros(data.num_classes)
        union = np.zeros(data.num_classes)
        lat = []
        for s in range(data.num_samples):
            ms, taken = 0.0, len(rows)
            for slot, r in enumerate(rows):
                ms += cost.head_ms[c.exits[slot]] + cost.decision_ms[c.exits[slot]]
                h = data.hist[r, s]
                if h[edge[slot]:].sum() / h.sum() >= c.th_img:
                    taken = slot
                    break
            row = rows[taken] if taken < len(rows) else len(data.exit_ids)
            ms += ev.leave_ms[row] if taken < len(rows) else ev.final_ms
            tp += data.tp[row, s]
            union += data.tp[row, s] + data.fp[row, s] + data.fn[row, s]
            lat.append(ms)
        _ = (tp[union > 0] / union[union > 0]).mean(), np.mean(lat)
    return (time.perf_counter() - started) / len(configs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--optuna-seconds", type=float, default=60.0)
    parser.add_argument("--optuna-trials", type=int, default=10_000)
    parser.add_argument("--skip-optuna", action="store_true")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    data = random_accuracy(rng, num_positions=16, heads=8, num_samples=500, num_classes=21,
                           pixels=64 * 64, num_bins=20)
    ev = Evaluator(data, random_costs(rng, data))
    space = build_space(data, max_exits=3, th_pix=[0.5, 0.6, 0.7, 0.8],
                        th_img=[0.5, 0.6, 0.7, 0.8, 0.9])
    n = count_configurations(data, space)
    print(f"profile built in {time.perf_counter() - t0:.1f} s; {n:,} configurations")

    objectives = ["miou", "latency"]
    started, cpu_started = time.perf_counter(), time.process_time()
    result = ExhaustiveSearcher(n_jobs=args.jobs, dtype=args.dtype).search(
        ev, space, objectives=objectives, bounds=Bounds())
    wall = time.perf_counter() - started
    peak_mib = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                   resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    print(f"exhaustive ({args.jobs} jobs, dtype {args.dtype or 'auto'}): {wall:.2f} s, "
          f"{result.n_evaluated / wall:,.0f} configurations/s, peak RSS {peak_mib:.0f} MiB "
          f"(largest process), front 1: {result.fronts.count(1)} candidates")
    if args.jobs == 1:  # CPU time of this process: what the search costs when the CPU is not shared
        print(f"  CPU time {time.process_time() - cpu_started:.2f} s "
              f"(load average while running: {os.getloadavg()[0]:.1f})")

    # what `dse pareto` adds after the search: bootstrap intervals of front 1 (default settings)
    front1 = [e.config for e, f in zip(result.candidates, result.fronts, strict=True) if f == 1]
    started = time.perf_counter()
    boot = Bootstrap(ev, BootstrapSettings())
    boot.intervals_batch(front1, confidence=0.9)
    boot_s = time.perf_counter() - started
    print(f"bootstrap intervals of front 1 ({len(front1)} candidates, "
          f"{boot.settings.resamples} resamples, {boot.dtype}): {boot_s:.2f} s = "
          f"{100 * boot_s / wall:.1f}% of the search (search + intervals / search = "
          f"{(wall + boot_s) / wall:.3f})")

    sample = [e.config for e in result.candidates[:20]] or [Configuration(exits=())]
    ref = reference_seconds_per_config(ev, sample)
    print(f"reference evaluator: {1 / ref:,.0f} configurations/s -> speed-up "
          f"{result.n_evaluated / wall * ref:,.0f}x")
    if args.skip_optuna:
        return

    front = np.array([[-e.miou, e.latency_ms] for e, f in
                      zip(result.candidates, result.fronts, strict=True) if f == 1])
    base = ev.baseline()
    reference = np.array([0.0, 2 * base.latency_ms])
    hv_exhaustive = hypervolume_2d(front, reference)
    for label, kwargs in ((f"after {args.optuna_seconds:.0f} s",
                           {"n_trials": 10**9, "timeout_s": args.optuna_seconds}),
                          (f"after {args.optuna_trials:,} trials",
                           {"n_trials": args.optuna_trials})):
        started = time.perf_counter()
        r = OptunaSearcher(seed=0, max_front=1, **kwargs).search(  # type: ignore[arg-type]
            ev, space, objectives=objectives, bounds=Bounds())
        pts = np.array([[-e.miou, e.latency_ms] for e in r.candidates])
        share = hypervolume_2d(pts, reference) / hv_exhaustive
        print(f"optuna NSGA-II {label}: {r.n_evaluated:,} trials in "
              f"{time.perf_counter() - started:.0f} s, hypervolume {share:.1%} of exhaustive")


if __name__ == "__main__":
    main()
