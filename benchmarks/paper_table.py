"""Benchmark (not a test): the MESS paper's table for one trained network, measured on this CPU.

Selection and report use different images of one split (CamVid's test split is withheld):

1. `dse profile` on the selection part (`val[::2]`: every other image of the one-drive val
   split, so selection and report see the same scenes; consecutive halves differ): accuracy profile, then the latency
   profile of this machine (`--device`, batch 1).
2. `dse pareto` three times, the paper's targets against the baseline (the final exit alone):
   max mIoU at a latency no higher than the baseline's (`--target accuracy`), min latency within
   0.1 and 1 pp of the baseline's mIoU (`--target speed --max-drop-pp 0.1|1`).
3. `dse verify` of each chosen candidate and of the baseline on the held-out part
   (`val[1::2]`): the real cascade image by image, measured mIoU and measured latency.

Prints one row per target: mIoU predicted on the selection images, mIoU measured on the held-out
images, GFLOPs, predicted and measured mean latency, speed-up over the baseline (measured and
predicted). Every step is the library call the CLI makes (`run_profile`, `run_search`,
`run_verify`), so the store `--db` holds the profiles, runs and verifications afterwards
(`dse report --runs ...` plots them).

`scale`: the search at the paper's scale, `deeplabv3_resnet50` with the default head space
(16 positions x 20 heads = 320 candidate exits) and RANDOM weights (seeded; no pretrained weights
offline), so its mIoU means nothing: an accuracy profile on a few CamVid images at a small size,
a latency profile on this CPU, then the search (`dse pareto --max-exits K`); prints how many configurations
were evaluated and how long each step took.

    .venv/bin/python benchmarks/paper_table.py table --checkpoint /tmp/mess-bench/camvid/pfd.pt \\
        --db /tmp/mess-bench/paper.db --device cpu-2t --threads 2
    .venv/bin/python benchmarks/paper_table.py scale --db /tmp/mess-bench/scale.db \\
        --input-size 96x128 --images 8 --max-exits 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

from db.errors import StorageError
from dse.constraints import Constraints
from dse.errors import DseError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "camvid"
TARGETS = (
    ("max mIoU, latency <= baseline", Constraints(target="accuracy")),
    ("min latency, drop <= 0.1 pp", Constraints(target="speed", max_drop_pp=0.1)),
    ("min latency, drop <= 1 pp", Constraints(target="speed", max_drop_pp=1.0)),
)
T = TypeVar("T")


class BenchmarkError(Exception):
    """A step failed; the message is the library's one-line error."""


def _step(name: str, call: Callable[[], T]) -> T:
    """Run one library call, timed; a user-facing error becomes a BenchmarkError."""
    from profiling.errors import ProfilingError
    from training.errors import TrainingError

    started = time.perf_counter()
    try:
        result = call()
    except (DseError, StorageError, ProfilingError, TrainingError) as exc:
        raise BenchmarkError(f"{name} failed: {exc}") from exc
    print(f"  {name}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return result


def _candidate_row(cand: Any, chosen: int | None) -> dict[str, Any]:
    """A stored candidate as the dict `dse pareto --json` prints."""
    return {"run": cand.run_id, "candidate": cand.index, "front": cand.front,
            "exits": list(cand.exits), "th_pix": list(cand.th_pix), "th_img": cand.th_img,
            "miou": cand.miou, "latency_ms": cand.latency_ms, "gflops": cand.gflops,
            "exit_rates": dict(cand.exit_rates), "chosen": cand.index == chosen}


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("table", help="the paper's table for a trained checkpoint")
    p.add_argument("--checkpoint", required=True, help="trained MESS checkpoint (e.g. pfd.pt)")
    q = sub.add_parser("scale", help="search scale: deeplabv3_resnet50, random weights")
    q.add_argument("--arch", default="deeplabv3_resnet50")
    q.add_argument("--input-size", default="96x128", help="HxW of both profiles")
    q.add_argument("--images", type=int, default=8, help="CamVid val images profiled")
    q.add_argument("--warmup", type=int, default=1)
    for r in (p, q):
        r.add_argument("--db", required=True, help="store (SQLite file or URL); created if missing")
        r.add_argument("--device", default="cpu-2t", help="name of this machine in the store")
        r.add_argument("--data", default="camvid")
        r.add_argument("--data-root", default=str(DEFAULT_DATA))
        r.add_argument("--keep-noisy", action="store_true",
                       help="store a latency profile that fails its checks, marked noisy (the "
                       "table's measured columns come from dse verify and do not depend on it)")
        r.add_argument("--threads", type=int, default=2)
    q.add_argument("--repeat", type=int, default=3, help="latency profile: timed runs")
    q.add_argument("--max-exits", type=int, default=2)
    q.add_argument("--accuracy-only", action="store_true", help="stop after the accuracy profile")
    p.add_argument(
        "--select", default="val[::2]",
        help="selection to profile and select on (default every other val image: CamVid val is "
        "one drive in order, so consecutive halves differ)",
    )  # fmt: skip
    p.add_argument("--held-out", default="val[1::2]", help="the other images, reported on")
    p.add_argument("--repeat", type=int, default=20, help="latency profile: timed runs")
    p.add_argument("--verify-repeat", type=int, default=3, help="dse verify: timed runs/image")
    p.add_argument("--max-exits", type=int, default=3)
    p.add_argument("--json-out", default=None, help="also write the rows to this JSON file")
    return parser.parse_args(argv)


def _search(a: argparse.Namespace, constraints: Constraints, model: str | None = None
            ) -> tuple[int, dict[str, Any], list[dict]]:
    """One search (what `dse pareto` runs): (run id, chosen candidate, all stored candidates)."""
    from db.session import open_store, parse_url
    from dse.run import SearchRequest, run_search

    request = SearchRequest(device=a.device, model=model, max_exits=a.max_exits,
                            constraints=constraints)
    engine = open_store(a.db)
    try:
        url = parse_url(a.db).render_as_string(hide_password=False)
        stored = _step("search", lambda: run_search(engine, url, request))
    finally:
        engine.dispose()
    rows = [_candidate_row(c, stored.chosen) for c in stored.candidates]
    chosen = [r for r in rows if r["chosen"]]
    if constraints.target is not None and not chosen:
        raise BenchmarkError(f"the search ({constraints}) stored no chosen candidate")
    return stored.run.id, (chosen or rows)[0], rows


def _verify(a: argparse.Namespace, run: int, candidate: int) -> dict[str, Any]:
    """What `dse verify --json` prints for one candidate on the held-out images."""
    from profiling.deploy import VerifyRequest, run_verify

    request = VerifyRequest(run=run, candidate=candidate, checkpoint=Path(a.checkpoint),
                            data=a.data, data_root=Path(a.data_root), split=a.held_out,
                            repeat=a.verify_repeat)
    return _step("verify", lambda: run_verify(a.db, request)).comparison.to_dict()


def _baseline(a: argparse.Namespace, run_id: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(prediction, measurement) of the final exit alone on the held-out images, as dse verify."""
    import torch

    from db import repository
    from db.session import open_store, session_scope
    from profiling.timing import TimingSettings
    from profiling.verify import measure_cascade
    from training.cascade import build_cascade_module
    from training.checkpoint import load_checkpoint
    from training.data import build_dataset

    engine = open_store(a.db)
    try:
        with session_scope(engine, readonly=True) as s:
            run = repository.get_search_run(s, run_id)
    finally:
        engine.dispose()
    network, _ = load_checkpoint(a.checkpoint)
    h, w = (int(v) for v in run.input_shape[-2:])
    data = build_dataset(a.data, root=a.data_root, split=a.held_out, input_size=(h, w))
    module = build_cascade_module(network, exits=["final"], th_pix=[], th_img=1.0,
                                  input_size=(h, w))  # fmt: skip
    previous = torch.get_num_threads()
    torch.set_num_threads(int(run.device_fingerprint.get("threads") or 1))
    try:
        measured = measure_cascade(
            module, cast(Any, data), exit_ids=module.exit_ids, num_classes=network.num_classes,
            device=torch.device("cpu"), dataset_name=data.name, split=data.split,
            device_name=run.device_name, timing=TimingSettings(warmup=0, repeat=a.verify_repeat),
        )  # fmt: skip
    finally:
        torch.set_num_threads(previous)
    print(f"  baseline measured with the library ({measured.n_images} images)", file=sys.stderr)
    prediction = {"run": run.id, "candidate": "-", "exits": ["final"], "th_pix": [], "th_img": 1.0,
                  **run.baseline}  # fmt: skip
    return prediction, {"measured_miou": measured.miou, "measured_latency_ms": measured.latency_ms,
                        "measured_exit_rates": measured.exit_rates}  # fmt: skip


def _row(title: str, cand: dict[str, Any], verified: dict[str, Any]) -> dict[str, Any]:
    return {
        "target": title, "run": cand["run"], "candidate": cand["candidate"],
        "exits": cand["exits"], "th_pix": cand["th_pix"], "th_img": cand["th_img"],
        "miou_selection_predicted": cand["miou"], "miou_heldout_measured": verified["measured_miou"],
        "gflops": cand["gflops"], "latency_predicted_ms": cand["latency_ms"],
        "latency_measured_ms": verified["measured_latency_ms"],
        "exit_rates_selection": cand.get("exit_rates", {"final": 1.0}),
        "exit_rates_heldout": verified.get("measured_exit_rates"),
    }  # fmt: skip


def _print(rows: list[dict[str, Any]]) -> None:
    base = rows[0]
    print("| config target | exits (th_pix, th_img) | mIoU selection, predicted | "
          "mIoU held-out, measured | GFLOPs | latency predicted ms | latency measured ms | "
          "speed-up measured (predicted) |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        early = [e for e in r["exits"] if e != "final"]
        exits = (
            "final only"
            if not early
            else (
                ", ".join(early) + f" ({'/'.join(f'{t:g}' for t in r['th_pix'])}, {r['th_img']:g})"
            )
        )
        speed_m = base["latency_measured_ms"] / r["latency_measured_ms"]
        speed_p = base["latency_predicted_ms"] / r["latency_predicted_ms"]
        print(f"| {r['target']} | {exits} | {100 * r['miou_selection_predicted']:.2f} | "
              f"{100 * r['miou_heldout_measured']:.2f} | {r['gflops']:.3f} | "
              f"{r['latency_predicted_ms']:.2f} | {r['latency_measured_ms']:.2f} | "
              f"{speed_m:.2f}x ({speed_p:.2f}x) |")  # fmt: skip
    print("exit rates, selection (predicted) -> held-out (measured):")
    for r in rows:
        rates = ", ".join(
            f"{e}: {100 * r['exit_rates_selection'].get(e, 0.0):.0f}% -> "
            f"{100 * (r['exit_rates_heldout'] or {}).get(e, 0.0):.0f}%"
            for e in r["exits"]
        )
        print(f"  {r['target']}: {rates}")


def scale(a: argparse.Namespace) -> int:
    """Profile a random-weight paper-scale network, then search (library calls only)."""
    import torch

    from db import repository
    from db.session import open_store, session_scope
    from profiling.accuracy import profile_accuracy
    from profiling.latency import LatencySettings, profile_latency
    from profiling.run import register_model
    from profiling.timing import TimingSettings
    from training.adapters import build_network
    from training.data import build_dataset
    from training.heads import default_head_space

    torch.set_num_threads(a.threads)
    h, w = (int(v) for v in a.input_size.lower().split("x"))
    data = build_dataset(a.data, root=a.data_root, split="val", input_size=(h, w), size=a.images)
    torch.manual_seed(0)
    network = build_network(a.arch, num_classes=data.num_classes,
                            head_space=list(default_head_space())).eval()  # fmt: skip
    params = sum(p.numel() for p in network.parameters())
    print(f"{a.arch}, RANDOM weights (seed 0): {len(network.positions)} positions, "
          f"{len(network.exits)} candidate exits, {params / 1e9:.2f} G parameters; "
          f"{a.input_size}, {len(data)} {a.data} val images, {a.threads} threads")  # fmt: skip
    engine = open_store(a.db, create=True)
    try:
        model_id, _ = register_model(engine, network, f"{a.arch}-random", (h, w))
        started = time.perf_counter()
        acc = profile_accuracy(engine, network, data, model_id=model_id)
        acc_s = time.perf_counter() - started
        print(f"accuracy profile: {acc.measured_samples} images x {len(network.exits) + 1} "
              f"exits in {acc_s:.1f} s")  # fmt: skip
        if a.accuracy_only:
            return 0
        started = time.perf_counter()
        timing = TimingSettings(warmup=a.warmup, repeat=a.repeat)
        lat = profile_latency(
            engine, network, model_id=model_id, device_name=a.device, input_size=(h, w),
            settings=LatencySettings(threads=a.threads, timing=timing),
        )  # fmt: skip
        lat_s = time.perf_counter() - started
        print(f"latency profile: {len(lat.measured)} components measured "
              f"({len(lat.skipped)} already stored), {len(lat.paths)} closed-loop paths, "
              f"warm-up {a.warmup}, repeat {a.repeat}: {lat_s:.1f} s")  # fmt: skip
        del network
        try:
            run_id, _, rows = _search(a, Constraints(), model=str(model_id))
        except BenchmarkError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        with session_scope(engine, readonly=True) as s:
            run = repository.get_search_run(s, run_id)
        front1 = sum(r["front"] == 1 for r in rows)
        print(f"dse pareto --max-exits {a.max_exits} (run {run.id}): {run.n_evaluated:,} "
              f"configurations in {run.duration_s:.1f} s "
              f"({run.n_evaluated / max(run.duration_s, 1e-9):,.0f}/s); "
              f"{len(rows)} candidates stored, {front1} on front 1")  # fmt: skip
    finally:
        engine.dispose()
    return 0


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    if a.what == "scale":
        return scale(a)
    started = time.perf_counter()
    from profiling.run import ProfileRequest, run_profile
    from profiling.timing import TimingSettings

    profile = ProfileRequest(checkpoint=Path(a.checkpoint), device=a.device, data=a.data,
                             data_root=a.data_root, split=a.select, threads=a.threads,
                             timing=TimingSettings(repeat=a.repeat), batch=1,
                             keep_noisy=a.keep_noisy)
    try:
        _step("profile", lambda: run_profile(a.db, profile))
        searches = [(title, *_search(a, constraints)) for title, constraints in TARGETS]
        # The baseline is the final exit alone: verify its stored candidate when a run kept it on
        # a front, else measure it the same way (batch 1, the run's threads) with the library.
        base = next(
            (c for _, _, _, rows in searches for c in rows if c["exits"] == ["final"]), None
        )
        if base is not None:
            verified = _verify(a, base["run"], base["candidate"])
        else:
            base, verified = _baseline(a, searches[0][1])
        rows = [_row("baseline (final exit only)", base, verified)]
        done: dict[str, dict[str, Any]] = {}  # one verification per configuration
        for title, run, chosen, _ in searches:
            key = json.dumps([chosen["exits"], chosen["th_pix"], chosen["th_img"]])
            if key not in done:
                done[key] = _verify(a, run, chosen["candidate"])
            rows.append(_row(title, chosen, done[key]))
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{a.checkpoint} on {a.device} ({a.threads} threads, batch 1): selected on "
          f"{a.data} {a.select}, measured on {a.held_out}; runs "
          f"{', '.join(str(run) for _, run, _, _ in searches)} in {a.db}")  # fmt: skip
    _print(rows)
    print(f"total {(time.perf_counter() - started) / 60:.1f} min")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
