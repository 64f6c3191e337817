"""Benchmark (not a test): leave-one-device-out for the few-shot profile (issue 20).

For every device of one model in a store that has a full measured latency profile, and for each
K, it holds the device out, measures nothing new: it takes the held-out device's own measured
latencies of the K components `choose_components` picks from the references (the other devices),
predicts every other component from the references' full profiles with the code `dse profile
--few-shot` runs (`profiling.fewshot_profile.plan_components` and `store_predictions`), and
searches the predicted device like any other (`dse.run.run_search`, exhaustive, `--max-exits`,
`--target speed --max-drop-pp 1`, no bootstrap). It prints, per held-out device and K, then over
all devices per K:

- the median and 90th-percentile component error |predicted / measured - 1| (predicted
  components only), and the leave-one-out estimate the profile would have stored;
- Spearman's rank correlation (scipy.stats.spearmanr) between the measured latencies of the
  fully measured device's front points and the latencies the predicted device gives the same
  configurations (HELP's metric: 0.932 at 10 samples), twice: over its whole front 1 (the
  constraint excluded most of it: stored with their unconstrained front-1 rank), which spans
  every exit from the earliest to the final one, and over the configurations within the
  constraint (fronts 1..`--max-front`), which differ by a few percent and decide the pick;
- the front overlap: configurations on both front-1 sets / on either (whole fronts: the
  constraint only filters the pick);
- whether `--target speed --max-drop-pp 1` picks the same configuration, and how far the
  prediction is off on the measured pick's latency.

Repeats are excluded as references: two devices with the same fingerprint (the same runtime,
threads and machine, e.g. `cpu-ort-1t` and `cpu-ort-1t-again`, or a probe import of the same
ONNX Runtime settings) measure the same thing, so predicting one from the other is the re-profile
noise, not a transfer; by default such devices never serve as each other's references (the
output lists the excluded pairs), and `--exclude-pairs A:B,...` adds pairs by name.
`--same-runtime` keeps only references of the held-out device's runtime (what `dse profile
--few-shot` does without `--allow-cross-runtime`).

The input store is only read: it is copied (SQLite online backup, read-only connection) into a
temporary folder, where the predicted devices and the searches are written.

    python benchmarks/fewshot_devices.py --db rt.db [--model camvid-lite0] [--k 5,10,20,40]
        [--max-exits 2] [--max-front 5] [--exclude-pairs A:B] [--same-runtime] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.1f}/{five:.1f}/{fifteen:.1f}"


def copy_store(source: Path, target: Path) -> None:
    """A consistent copy of a SQLite store, opened read-only. Without a write-ahead log beside
    it the file is opened immutable (SQLite then creates no -wal/-shm files next to it); with
    one (a store being written) read-only, which SQLite needs to read the log consistently."""
    if not source.is_file():
        sys.exit(f"error: {source} is not a SQLite file; give the store to read")
    wal = source.with_name(source.name + "-wal")
    mode = "mode=ro" if wal.exists() and wal.stat().st_size > 0 else "mode=ro&immutable=1"
    src = sqlite3.connect(f"file:{source.resolve()}?{mode}", uri=True)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()


@dataclass(frozen=True)
class Device:
    name: str
    id: int
    runtime: str
    fingerprint_sha: str
    fingerprint: dict
    latency_ms: dict  # (kind, name) -> estimate
    rows: dict  # (kind, name) -> LatencyRecord


def devices_of(s: Any, model_id: int) -> tuple[list[Device], tuple[int, ...], list[str]]:
    """Devices with a complete measured profile of the model at its most profiled shape."""
    from db import repository as repo

    found: dict[str, list] = {}
    for dev in repo.list_devices(s):
        rows = [r for r in repo.load_latency(s, model_id=model_id, device_id=dev.id)
                if r.kind != "path"]
        predicted = [r for r in repo.load_latency(s, model_id=model_id, device_id=dev.id,
                                                  include_predicted=True) if r.predicted]
        if rows and not predicted:
            found[dev.name] = [dev, rows]
    shapes: dict[tuple, int] = {}
    for _, rows in found.values():
        shape = (tuple(rows[0].input_shape), rows[0].batch, rows[0].dtype)
        shapes[shape] = shapes.get(shape, 0) + 1
    shape = max(shapes, key=lambda k: shapes[k])
    universe: set = set()
    for _, rows in found.values():
        universe |= {(r.kind, r.name) for r in rows if (tuple(r.input_shape), r.batch, r.dtype)
                     == shape}
    out, skipped = [], []
    for name, (dev, rows) in sorted(found.items()):
        mine = {(r.kind, r.name): r for r in rows
                if (tuple(r.input_shape), r.batch, r.dtype) == shape}
        if set(mine) != universe:
            skipped.append(f"{name} ({len(mine)} of {len(universe)} components)")
            continue
        out.append(Device(name=name, id=dev.id, runtime=str(dev.fingerprint.get("runtime", "torch")),
                          fingerprint_sha=dev.fingerprint_sha256, fingerprint=dict(dev.fingerprint),
                          latency_ms={k: float(r.estimate_ms) for k, r in mine.items()},
                          rows=mine))
    return out, shape[0], skipped


def search(engine: Any, url: str, device: str, model: str, args: argparse.Namespace) -> Any:
    from dse.constraints import Constraints
    from dse.run import SearchRequest, run_search

    return run_search(engine, url, SearchRequest(
        device=device, model=model, max_exits=args.max_exits, max_front=args.max_front,
        bootstrap=None, constraints=Constraints(max_drop_pp=1.0, target="speed")))


def config_key(cand: Any) -> tuple:
    return (tuple(cand.exits), tuple(round(t, 6) for t in cand.th_pix), round(cand.th_img, 6))


def configuration(cand: Any, mode: str) -> Any:
    from dse.space import Configuration

    exits = tuple(cand.exits) if mode == "budgeted" else tuple(cand.exits[:-1])
    return Configuration(exits=exits, th_pix=tuple(cand.th_pix), th_img=cand.th_img, mode=mode)


def _rho(problem: Any, points: list, mode: str, spearmanr: Any) -> float:
    """Spearman's rho of the points' measured latencies and the predicted device's."""
    if len(points) < 3:
        return float("nan")
    predicted = [problem.evaluator.evaluate(configuration(c, mode)).latency_ms for c in points]
    return float(spearmanr([c.latency_ms for c in points], predicted).statistic)


def picked(stored: Any) -> Any | None:
    return next((c for c in stored.candidates if c.index == stored.chosen), None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True, help="SQLite store to read (not written)")
    parser.add_argument("--model", default=None, help="model name or id (default: the only one)")
    parser.add_argument("--k", default="5,10,20,40", help="comma-separated K values")
    parser.add_argument("--max-exits", type=int, default=2)
    parser.add_argument("--max-front", type=int, default=5,
                        help="fronts stored per search: the points Spearman's rho is taken over")
    parser.add_argument("--exclude-pairs", default="",
                        help="A:B,... devices never used as each other's reference")
    parser.add_argument("--same-runtime", action="store_true",
                        help="only references of the held-out device's runtime")
    parser.add_argument("--keep", type=Path, default=None,
                        help="folder for the working copy (default: a temporary one, removed)")
    args = parser.parse_args(argv)
    ks = [int(k) for k in args.k.split(",")]
    if any(k < 1 for k in ks):
        sys.exit("error: --k values must be >= 1")
    pairs = set()
    for pair in filter(None, (p.strip() for p in args.exclude_pairs.split(","))):
        a, sep, b = pair.partition(":")
        if not sep or not a or not b:
            sys.exit(f"error: --exclude-pairs {pair!r} is not A:B")
        pairs |= {(a, b), (b, a)}

    work = args.keep or Path(tempfile.mkdtemp(prefix="fewshot-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    copy = work / "copy.db"
    if copy.exists():
        sys.exit(f"error: {copy} exists; give another --keep folder")
    copy_store(args.db, copy)
    try:
        return run(args, copy, ks, pairs)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, copy: Path, ks: list[int], pairs: set) -> int:
    from scipy.stats import spearmanr

    from db import repository as repo
    from db.session import open_store, parse_url, session_scope
    from dse.run import load_problem
    from profiling.fewshot_profile import References, plan_components, store_predictions

    engine = open_store(str(copy))
    url = parse_url(str(copy)).render_as_string(hide_password=False)
    with session_scope(engine, readonly=True) as s:
        models = repo.list_models(s)
        model = (repo.get_model(s, args.model) if args.model is not None else
                 models[0] if len(models) == 1 else None)
        if model is None:
            sys.exit(f"error: the store holds {len(models)} models; pass --model")
        devices, shape, skipped = devices_of(s, model.id)
    print(f"# few-shot leave-one-device-out: model {model.name} (id {model.id}), input "
          f"{'x'.join(map(str, shape))}, {len(devices)} fully measured device(s)"
          f"{'; skipped (incomplete): ' + ', '.join(skipped) if skipped else ''}; [{load()}]")
    same_fp = {(a.name, b.name) for a in devices for b in devices
               if a.name != b.name and a.fingerprint_sha == b.fingerprint_sha}
    excluded = same_fp | pairs
    shown = sorted({tuple(sorted(p)) for p in excluded})
    print(f"# repeats never used as each other's reference ({'same fingerprint' if same_fp else 'none by fingerprint'}"
          f"{', plus --exclude-pairs' if pairs else ''}): "
          f"{', '.join(f'{a}~{b}' for a, b in shown) or 'none'}")
    print(f"# references: {'same runtime only' if args.same_runtime else 'every other device, any runtime'};"
          f" search: exhaustive, --max-exits {args.max_exits}, --target speed --max-drop-pp 1, "
          f"fronts 1..{args.max_front} stored")
    header = (f"{'held out':<18} {'K':>3} {'refs':>4} {'model':<28} {'med err':>7} "
              f"{'p90 err':>7} {'LOO med':>7} {'rho':>6} {'n':>3} {'rho1pp':>6} {'n':>3} "
              f"{'overlap':>7} {'pick':>5} "
              f"{'pick gap':>8}")
    print(header)
    summary: dict[int, list[dict]] = {k: [] for k in ks}
    for held in devices:
        refs = [d for d in devices if d.name != held.name and (held.name, d.name) not in excluded
                and (not args.same_runtime or d.runtime == held.runtime)]
        if not refs:
            print(f"{held.name:<18} no reference left (all repeats or another runtime); skipped")
            continue
        print(f"# {held.name} ({held.runtime}): references {', '.join(d.name for d in refs)}")
        full = search(engine, url, held.name, model.name, args)
        # the whole front: the constraint only filters the pick (infeasible candidates are
        # stored with their front-1 rank among the unconstrained space)
        whole = [c for c in full.candidates if c.front == 1]
        near = [c for c in full.candidates if c.feasible]
        front = {config_key(c) for c in whole}
        full_pick = picked(full)
        references = References(devices=(), latency_ms={d.name: d.latency_ms for d in refs},
                                rows=refs[0].rows)
        for k in ks:
            chosen = plan_components(references, k)
            name = f"{held.name}@k{k}"
            with session_scope(engine) as s:
                dev = repo.upsert_device(s, name=name, fingerprint={
                    **held.fingerprint, "fewshot_benchmark": name})
                for key in chosen:
                    r = held.rows[key]
                    repo.upsert_latency(
                        s, model_id=model.id, device_id=dev.id, kind=r.kind, name=r.name,
                        input_shape=r.input_shape, batch=r.batch, dtype=r.dtype,
                        samples_ms=r.samples_ms, gflops=r.gflops, params=r.params)
                result = store_predictions(s, references, model_id=model.id, device_id=dev.id,
                                           input_shape=shape, batch=held.rows[chosen[0]].batch,
                                           dtype=held.rows[chosen[0]].dtype)
                problem = load_problem(s, device=name, model=model.name)
                predicted_ms = {k2: float(r.estimate_ms) for k2, r in (
                    ((r.kind, r.name), r) for r in repo.load_latency(
                        s, model_id=model.id, device_id=dev.id, include_predicted=True))}
            errors = [abs(predicted_ms[c] / held.latency_ms[c] - 1) for c in result.predicted]
            pred = search(engine, url, name, model.name, args)
            pred_front = {config_key(c) for c in pred.candidates if c.front == 1}
            mode = full.run.mode
            rho = _rho(problem, whole, mode, spearmanr)
            rho_near = _rho(problem, near, mode, spearmanr)
            overlap = len(front & pred_front) / len(front | pred_front)
            pred_pick = picked(pred)
            same = (full_pick is not None and pred_pick is not None
                    and config_key(full_pick) == config_key(pred_pick))
            gap = (problem.evaluator.evaluate(configuration(full_pick, mode)).latency_ms
                   / full_pick.latency_ms - 1) if full_pick is not None else float("nan")
            m = result.model
            row = {"med": float(np.median(errors)) if errors else 0.0,
                   "p90": float(np.percentile(errors, 90)) if errors else 0.0,
                   "loo": m.cv_error if m is not None else None, "rho": rho,
                   "rho_near": rho_near,
                   "overlap": overlap, "same": same, "gap": gap, "errors": errors}
            summary[k].append(row)
            loo = "-" if row["loo"] is None else f"{row['loo']:.1%}"
            print(f"{held.name:<18} {k:>3} {len(refs):>4} "
                  f"{(m.name if m else 'all measured')[:28]:<28} {row['med']:>7.1%} "
                  f"{row['p90']:>7.1%} {loo:>7} {rho:>6.3f} {len(whole):>3} {rho_near:>6.3f} "
                  f"{len(near):>3} {overlap:>7.2f} "
                  f"{'same' if same else 'diff':>5} {gap:>+8.1%}", flush=True)
    print(f"# overall (per K, over held-out devices; component errors pooled) [{load()}]")
    print(f"{'K':>3} {'devices':>7} {'med err':>7} {'p90 err':>7} {'rho med':>7} {'rho min':>7} "
          f"{'1pp med':>7} {'1pp min':>7} {'overlap':>7} {'same pick':>9}")
    for k, rows in summary.items():
        if not rows:
            continue
        pooled = [e for r in rows for e in r["errors"]]
        rhos = [r["rho"] for r in rows if not np.isnan(r["rho"])]
        nears = [r["rho_near"] for r in rows if not np.isnan(r["rho_near"])]
        print(f"{k:>3} {len(rows):>7} {float(np.median(pooled)) if pooled else 0.0:>7.1%} "
              f"{float(np.percentile(pooled, 90)) if pooled else 0.0:>7.1%} "
              f"{statistics.median(rhos) if rhos else float('nan'):>7.3f} "
              f"{min(rhos) if rhos else float('nan'):>7.3f} "
              f"{statistics.median(nears) if nears else float('nan'):>7.3f} "
              f"{min(nears) if nears else float('nan'):>7.3f} "
              f"{statistics.mean(r['overlap'] for r in rows):>7.2f} "
              f"{str(sum(r['same'] for r in rows)) + '/' + str(len(rows)):>9}")
    engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
