"""Benchmark (not a test): do the search's intervals and robust picks hold on images it never saw?

One trained CamVid network, four calibration sets of its val split, each profiled once:

- an i.i.d. pair, the interleaved halves ``val[::2]`` / ``val[1::2]`` (the same drive sampled
  alike: what a representative calibration set looks like);
- a shifted pair, the consecutive halves ``val[0:50]`` / ``val[50:]`` (other stretches of road:
  what a calibration set of the wrong kind looks like).

For each ordered pair (select on A, check on B) it runs `dse.run.run_search` with `check_on=B`:
once without constraints (front 1 with its bootstrap intervals, for coverage) and once per
`--max-drop-pp` value with `--target speed --confidence P` (which stores both the plain pick on
the point estimates and the robust pick on the bootstrap bound). It prints

- coverage: the share of front-1 candidates whose interval on A contains the value observed on B,
  for mIoU, drop versus the baseline, mean latency and the exit rates;
- robust vs plain: how often each pick still meets its drop constraint on B, and what the robust
  pick costs in latency.

Accuracy profiling is the costly part on a CPU, and the four sets are two cuts of the same 101
images, so `val` is profiled once (`profiling.run.run_profile`, what `dse profile` calls, with the
latency profile) and each half is stored as its own calibration set (its own content
hash, from `training.data.dataset_content_hash`) with the per-image rows of its images copied
from the `val` profile: per-image counts do not depend on which other images are profiled, so
this is what `dse profile --split HALF` would store, without running the network again.
`--heads` first cuts the checkpoint down to a few heads per position (same backbone, the chosen
heads' weights), which keeps the profile small; `--positions` narrows the search. The searches are
library calls; the store keeps everything (`dse report --runs ...` plots any run).

    .venv/bin/python benchmarks/heldout_camvid.py --checkpoint CKPT --db /tmp/heldout.db \\
        [--device cpu-1t --threads 1] [--drops 0.5,1,2,3] [--confidence 0.9] [--max-exits 2] \\
        [--heads crm64-b1-fcn,nocrm-b0-fcn] [--positions blocks.4,blocks.7,blocks.10]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "camvid"
PAIRS = (("i.i.d. (interleaved halves)", "val[::2]", "val[1::2]"),
         ("i.i.d. (interleaved halves)", "val[1::2]", "val[::2]"),
         ("shifted (consecutive halves)", "val[0:50]", "val[50:]"),
         ("shifted (consecutive halves)", "val[50:]", "val[0:50]"))


def _profile(a: argparse.Namespace, checkpoint: str, split: str) -> None:
    from profiling.run import ProfileRequest, run_profile
    from profiling.timing import TimingSettings

    started = time.perf_counter()
    run_profile(a.db, ProfileRequest(
        checkpoint=Path(checkpoint), device=a.device, data="camvid", data_root=a.data_root,
        split=split, threads=a.threads, timing=TimingSettings(repeat=a.repeat),
        keep_noisy=True))  # a shared machine fails the spread checks; the rows say so
    print(f"  profiled {split} (accuracy + latency) in {time.perf_counter() - started:.0f} s",
          file=sys.stderr, flush=True)


def reduce_checkpoint(source: str, out: Path, *, heads: list[str] | None) -> str:
    """A checkpoint with the same weights but only the chosen heads (fewer exits to profile).

    Positions stay (the backbone's segments are cut at them); `--positions` narrows the search.
    """
    if heads is None:
        return source
    from training.adapters import build_network
    from training.checkpoint import load_checkpoint, save_checkpoint

    network, meta = load_checkpoint(source)
    small = build_network(network.arch, num_classes=network.num_classes,
                          head_space=heads, positions=[p.name for p in network.positions])
    state = network.state_dict()
    missing = [k for k in small.state_dict() if k not in state]
    if missing:
        raise SystemExit(f"{source} has no weights for {missing[0]} (and {len(missing) - 1} "
                         "more); choose heads and positions the checkpoint was trained with")
    small.load_state_dict({k: state[k] for k in small.state_dict()})
    save_checkpoint(out, small, meta={k: meta[k] for k in ("input_size", "dataset")
                                      if k in meta} | {"reduced_from": str(source)})
    return str(out)


def derive_halves(a: argparse.Namespace, splits: list[str]) -> None:
    """Store each half of `val` as its own calibration set, rows copied from the `val` profile."""
    import numpy as np

    from db import ExitArrays, open_store, session_scope
    from db import repository as repo
    from training.data import build_dataset, dataset_content_hash

    engine = open_store(a.db)
    try:
        with session_scope(engine) as s:
            calib = next(c for c in repo.list_calibration_sets(s) if c.split == "val")
            model = repo.list_models(s)[-1]
            prof = next(p for p in repo.find_accuracy_profiles(s, model.id, complete_only=True)
                        if p.calibration_set_id == calib.id)
            arrays = repo.load_accuracy(s, prof.id)
        size = _input_size(a)
        for split in splits:
            half = build_dataset("camvid", root=a.data_root, split=split, input_size=size)
            rows = np.array([list(arrays.sample_ids).index(i) for i in half.sample_ids])
            with session_scope(engine) as s:
                c = repo.upsert_calibration_set(
                    s, dataset="camvid", split=split, content_hash=dataset_content_hash(half),
                    sample_ids=list(half.sample_ids))
                p = repo.upsert_accuracy_profile(
                    s, model_id=model.id, calibration_set_id=c.id, settings=prof.settings,
                    edges=arrays.edges, exit_ids=list(arrays.exit_ids),
                    num_classes=arrays.num_classes)
                if not repo.get_accuracy_profile(s, p.id).complete:
                    repo.add_accuracy_chunk(s, p.id, start=0, arrays={
                        e: ExitArrays(tp=arrays.tp[k][rows], fp=arrays.fp[k][rows],
                                      fn=arrays.fn[k][rows], hist=arrays.hist[k][rows])
                        for k, e in enumerate(arrays.exit_ids)})
                    repo.finish_accuracy_profile(s, p.id)
    finally:
        engine.dispose()


def split_list(text: str | None) -> list[str] | None:
    return None if text is None else [v.strip() for v in text.split(",") if v.strip()]


def _input_size(a: argparse.Namespace) -> tuple[int, int]:
    from training.checkpoint import read_checkpoint

    h, w = read_checkpoint(a.checkpoint)["input_size"]  # the reduced one keeps it
    return int(h), int(w)


def _search(a: argparse.Namespace, select: str, check: str, *, drop: float | None) -> Any:
    from db.session import open_store, parse_url
    from dse.constraints import Constraints
    from dse.run import SearchRequest, run_search
    from dse.uncertainty import BootstrapSettings

    constraints = (Constraints() if drop is None
                   else Constraints(target="speed", max_drop_pp=drop))
    request = SearchRequest(device=a.device, max_exits=a.max_exits, calibration=select,
                            positions=None if a.positions is None
                            else tuple(split_list(a.positions) or ()),
                            check_on=check, constraints=constraints,
                            bootstrap=BootstrapSettings(resamples=a.resamples, level=a.level),
                            confidence=None if drop is None else a.confidence)
    engine = open_store(a.db)
    try:
        return run_search(engine, parse_url(a.db).render_as_string(hide_password=False), request)
    finally:
        engine.dispose()


def _covered(interval: list[float], value: float, point: float, widen: float) -> bool:
    low = point - widen * (point - interval[0])
    high = point + widen * (interval[1] - point)
    return low - 1e-12 <= value <= high + 1e-12


def coverage(stored: Any, *, widen: float = 1.0) -> dict[str, list[bool]]:
    """Per quantity, whether each front-1 interval (selection set) holds the check-set value.

    `widen` stretches each interval about its point: sqrt(2) turns an interval for the value on
    the population into one for the value on another set of the same size (the difference of
    two independent draws has twice the variance of one).
    """
    by_index = {c.index: c for c in stored.candidates}
    out: dict[str, list[bool]] = defaultdict(list)
    for check in stored.held_out.checks:
        iv = by_index[check.candidate].intervals
        if not iv:
            continue
        for key in ("miou", "drop_pp", "latency_ms"):
            out[key].append(_covered(iv[key], check.observed[key], check.predicted[key], widen))
        for exit_id, rate in check.observed["exit_rates"].items():
            out["exit rates"].append(_covered(iv["exit_rates"][exit_id], rate,
                                              check.predicted["exit_rates"][exit_id], widen))
    return out


def picks(stored: Any, drop: float) -> dict[str, Any]:
    """Whether the plain and the robust pick keep `drop` on the check set."""
    observed = {k.candidate: k.observed for k in stored.held_out.checks}
    by_index = {c.index: c for c in stored.candidates}
    row: dict[str, Any] = {"drop": drop}
    for name, index in (("plain", stored.plain), ("robust", stored.chosen)):
        if index is None or index not in observed:
            row[name] = None
            continue
        row[name] = {"candidate": index, "latency_ms": by_index[index].latency_ms,
                     "predicted_drop_pp": 100 * (stored.run.baseline["miou"]
                                                 - by_index[index].miou),
                     "observed_drop_pp": observed[index]["drop_pp"],
                     "kept": observed[index]["drop_pp"] <= drop + 1e-9}
    return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--db", required=True, help="store (SQLite file); created if missing")
    p.add_argument("--device", default="cpu-1t")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-root", default=str(DEFAULT_DATA))
    p.add_argument("--repeat", type=int, default=10, help="latency profile: timed runs")
    p.add_argument("--skip-profile", action="store_true", help="the store already holds them")
    p.add_argument("--max-exits", type=int, default=2)
    p.add_argument("--drops", default="0.5,1,2,3", help="--max-drop-pp values, comma-separated")
    p.add_argument("--confidence", type=float, default=0.9)
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--level", type=float, default=0.9, help="central probability of intervals")
    p.add_argument("--heads", default=None, help="keep only these head ids (comma-separated)")
    p.add_argument("--positions", default=None, help="search only these positions")
    p.add_argument("--json-out", default=None)
    a = p.parse_args(argv)
    print(f"load average at start: {os.getloadavg()[0]:.1f}", flush=True)
    checkpoint = reduce_checkpoint(a.checkpoint, Path(a.db).with_suffix(".reduced.pt"),
                                   heads=split_list(a.heads))
    if not a.skip_profile:
        _profile(a, checkpoint, "val")
    derive_halves(a, ["val[::2]", "val[1::2]", "val[0:50]", "val[50:]"])
    drops = [float(v) for v in a.drops.split(",") if v.strip()]
    cover: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    wide: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for kind, select, check in PAIRS:
        stored = _search(a, select, check, drop=None)
        for key, hits in coverage(stored).items():
            cover[kind][key] += hits
        for key, hits in coverage(stored, widen=2 ** 0.5).items():
            wide[kind][key] += hits
        for drop in drops:
            rows[kind].append({"select": select, "check": check,
                               **picks(_search(a, select, check, drop=drop), drop)})
    for title, table in (("", cover), (", widened by sqrt(2) (another set of this size)", wide)):
        print(f"\ncoverage of {100 * a.level:g}% bootstrap intervals{title} (front 1 on the "
              "selection set, value on the check set):")
        for kind, per in table.items():
            print(f"  {kind}: " + ", ".join(
                f"{key} {sum(h)}/{len(h)} ({100 * sum(h) / len(h):.0f}%)"
                for key, h in per.items() if h))
    print(f"\nconstraint kept on the check set (--target speed --max-drop-pp D), plain pick vs "
          f"--confidence {a.confidence:g} pick:")
    for kind, found in rows.items():
        plain = [r["plain"]["kept"] for r in found if r["plain"]]
        robust = [r["robust"]["kept"] for r in found if r["robust"]]
        none = sum(r["robust"] is None for r in found)
        print(f"  {kind}: plain {sum(plain)}/{len(plain)}, robust {sum(robust)}/{len(robust)}"
              f" ({none} case(s) without a robust pick)")
        for r in found:
            cells = []
            for name in ("plain", "robust"):
                x = r[name]
                cells.append(f"{name} -" if x is None else
                             f"{name} #{x['candidate']} {x['latency_ms']:.2f} ms drop "
                             f"{x['predicted_drop_pp']:+.2f}->{x['observed_drop_pp']:+.2f} pp "
                             f"{'kept' if x['kept'] else 'BROKEN'}")
            print(f"    {r['select']} -> {r['check']}, D={r['drop']:g}: " + "; ".join(cells))
    print(f"\nload average at end: {os.getloadavg()[0]:.1f}", flush=True)
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(
            {"coverage": cover, "coverage_sqrt2": wide, "picks": rows}, indent=1))


if __name__ == "__main__":
    main()
