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

Profiles go through `dse profile` (a subprocess, as the paper-table benchmark); the searches are
library calls. The store keeps everything (`dse report --runs ...` plots any run).

    .venv/bin/python benchmarks/heldout_camvid.py --checkpoint CKPT --db /tmp/heldout.db \\
        [--device cpu-1t --threads 1] [--drops 0.5,1,2,3] [--confidence 0.9] [--max-exits 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
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


def _profile(a: argparse.Namespace, split: str, *, latency: bool) -> None:
    args = [sys.executable, "-m", "dse", "profile", "--checkpoint", a.checkpoint,
            "--device", a.device, "--data", "camvid", "--data-root", a.data_root,
            "--split", split, "--db", a.db, "--threads", str(a.threads), "--json",
            "--latency" if latency else "--no-latency", "--repeat", str(a.repeat)]
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        raise SystemExit(f"dse profile --split {split} failed: {done.stderr.strip()}")
    print(f"  profiled {split}{' + latency' if latency else ''} in "
          f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)


def _search(a: argparse.Namespace, select: str, check: str, *, drop: float | None) -> Any:
    from db.session import open_store, parse_url
    from dse.constraints import Constraints
    from dse.run import SearchRequest, run_search
    from dse.uncertainty import BootstrapSettings

    constraints = (Constraints() if drop is None
                   else Constraints(target="speed", max_drop_pp=drop))
    request = SearchRequest(device=a.device, max_exits=a.max_exits, calibration=select,
                            check_on=check, constraints=constraints,
                            bootstrap=BootstrapSettings(resamples=a.resamples, level=a.level),
                            confidence=None if drop is None else a.confidence)
    engine = open_store(a.db)
    try:
        return run_search(engine, parse_url(a.db).render_as_string(hide_password=False), request)
    finally:
        engine.dispose()


def _covered(interval: list[float], value: float) -> bool:
    return interval[0] - 1e-12 <= value <= interval[1] + 1e-12


def coverage(stored: Any) -> dict[str, list[bool]]:
    """Per quantity, whether each front-1 interval (selection set) holds the check-set value."""
    by_index = {c.index: c for c in stored.candidates}
    out: dict[str, list[bool]] = defaultdict(list)
    for check in stored.held_out.checks:
        iv = by_index[check.candidate].intervals
        if not iv:
            continue
        for key in ("miou", "drop_pp", "latency_ms"):
            out[key].append(_covered(iv[key], check.observed[key]))
        for exit_id, rate in check.observed["exit_rates"].items():
            out["exit rates"].append(_covered(iv["exit_rates"][exit_id], rate))
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
    p.add_argument("--max-exits", type=int, default=2)
    p.add_argument("--drops", default="0.5,1,2,3", help="--max-drop-pp values, comma-separated")
    p.add_argument("--confidence", type=float, default=0.9)
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--level", type=float, default=0.9, help="central probability of intervals")
    p.add_argument("--json-out", default=None)
    a = p.parse_args(argv)
    print(f"load average at start: {os.getloadavg()[0]:.1f}", flush=True)
    for k, split in enumerate(("val[::2]", "val[1::2]", "val[0:50]", "val[50:]")):
        _profile(a, split, latency=k == 0)
    drops = [float(v) for v in a.drops.split(",") if v.strip()]
    cover: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for kind, select, check in PAIRS:
        for key, hits in coverage(_search(a, select, check, drop=None)).items():
            cover[kind][key] += hits
        for drop in drops:
            rows[kind].append({"select": select, "check": check,
                               **picks(_search(a, select, check, drop=drop), drop)})
    print(f"\ncoverage of {100 * a.level:g}% bootstrap intervals (front 1 on the selection set, "
          "value on the check set):")
    for kind, per in cover.items():
        print(f"  {kind}: " + ", ".join(f"{key} {sum(h)}/{len(h)} ({100 * sum(h) / len(h):.0f}%)"
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
        Path(a.json_out).write_text(json.dumps({"coverage": cover, "picks": rows}, indent=1))


if __name__ == "__main__":
    main()
