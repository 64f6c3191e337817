"""Benchmark (not a test): torch eager vs ONNX Runtime on this CPU, and a probe pack vs a direct
ONNX Runtime profile.

Profiles one checkpoint on this machine as several devices (torch eager and ONNX Runtime, 1 and
2 threads; ONNX Runtime 1 thread twice, to see the noise of a re-profile; ONNX Runtime without
graph optimisation at 1 and 2 threads, for benchmarks/fewshot_devices.py; and a probe pack run
by `probe.py` and imported), searches each (exhaustive, up to 2 early exits, `--target speed
--max-drop-pp 1`), then prints:

- the fronts per device, the configuration `--target speed` picks and whether it differs
  between the runtimes;
- the measured latency (mean over calibration images, each image timed `--verify-repeat` times)
  of the final-exit network and of two front configurations under torch eager and ONNX Runtime
  at 1 and 2 threads;
- the probe's front against the direct ONNX Runtime front: shared configurations and their
  latency gap, next to the gap between two direct profiles (the timing noise).

Every figure comes with the load average while it ran: this machine is shared.

    python benchmarks/runtimes.py --checkpoint demo.pt --db /tmp/rt.db --out /tmp/rt \\
        [--calib 200] [--limit 50] [--repeat 20] [--probe-python VENV/bin/python]

Every step is a library call (run_profile, run_search, write_pack/import_results); the probe
runs as its own process (by default with this Python; `--probe-python` names one that has only
numpy and onnxruntime).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

DEVICES = (  # name, runtime, threads, ONNX Runtime graph optimisation
    ("cpu-torch-1t", "torch", 1, "all"),
    ("cpu-torch-2t", "torch", 2, "all"),
    ("cpu-ort-1t", "onnxruntime", 1, "all"),
    ("cpu-ort-2t", "onnxruntime", 2, "all"),
    ("cpu-ort-1t-again", "onnxruntime", 1, "all"),
    # not compared below; more device configurations for benchmarks/fewshot_devices.py
    ("cpu-ort-1t-noopt", "onnxruntime", 1, "disable"),
    ("cpu-ort-2t-noopt", "onnxruntime", 2, "disable"),
)
PROBE_DEVICE = "cpu-probe-1t"


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.1f}/{five:.1f}/{fifteen:.1f}"


def key(cand: Any) -> tuple:
    return (tuple(cand.exits), tuple(round(t, 6) for t in cand.th_pix), round(cand.th_img, 6))


def profile(args: argparse.Namespace, name: str, runtime: str, threads: int, optimization: str,
            *, accuracy: bool) -> None:
    from profiling.run import ProfileRequest, run_profile
    from profiling.timing import TimingSettings

    before = load()
    outcome = run_profile(args.db, ProfileRequest(
        checkpoint=Path(args.checkpoint), device=name, data=args.data, data_root=args.data_root,
        split=args.split,
        limit=args.calib, accuracy=accuracy, threads=threads, runtime=runtime, name=args.name,
        timing=TimingSettings(warmup=3, repeat=args.repeat), keep_noisy=True,
        optimization=optimization))
    lat = outcome.latency
    gaps = ", ".join(f"{c.name.split('/')[0]} {c.deviation * 100:+.0f}%" for c in lat.paths) \
        if lat else ""
    verdict = lat.verdict.line() if lat and lat.verdict else "no verdict"
    print(f"profiled {name} ({runtime}, {threads} thread(s)): "
          f"{len(lat.measured) if lat else 0} components; closed loop {gaps}; {verdict} "
          f"[{before} -> {load()}]", flush=True)


def probe(args: argparse.Namespace, network: Any, size: tuple[int, int]) -> None:
    import shutil

    from db.session import open_store
    from profiling.probe_pack import import_results, read_results, write_pack

    pack = Path(args.out) / "pack"
    if pack.exists():
        shutil.rmtree(pack)
    info = write_pack(network, pack, model_name=args.name, input_size=size)
    before = load()
    python = args.probe_python or sys.executable
    run = subprocess.run([python, str(pack / "probe.py"), str(pack), "--threads", "1",
                          "--rounds", str(args.repeat), "--warmup", "3"],
                         capture_output=True, text=True, cwd=args.out,
                         env={"PATH": os.environ.get("PATH", ""), "HOME": str(args.out)})
    if run.returncode != 0:
        raise SystemExit(f"probe failed: {run.stderr.strip()}")
    engine = open_store(args.db)
    try:
        imported = import_results(engine, read_results(pack / "results.json"),
                                  device_name=PROBE_DEVICE, keep_noisy=True)
    finally:
        engine.dispose()
    verdict = imported.verdict.line(what="probe results") if imported.verdict else ""
    print(f"probe ({python}): {run.stdout.strip()}; imported {len(imported.stored)} rows as "
          f"{PROBE_DEVICE} from pack {info.sha256[:12]}; {verdict} [{before} -> {load()}]",
          flush=True)


def search(args: argparse.Namespace, name: str) -> Any:
    from db.session import open_store, parse_url
    from dse.constraints import Constraints
    from dse.run import SearchRequest, run_search

    engine = open_store(args.db)
    try:
        url = parse_url(args.db).render_as_string(hide_password=False)
        return run_search(engine, url, SearchRequest(
            device=name, model=args.name, max_exits=2,
            constraints=Constraints(max_drop_pp=1.0, target="speed")))
    finally:
        engine.dispose()


def front(stored: Any) -> list[Any]:
    """Front 1 of every configuration searched (the --max-drop-pp constraint only marks the
    pick), fastest first."""
    return sorted((c for c in stored.candidates if c.front == 1), key=lambda c: c.latency_ms)


def describe(cand: Any) -> str:
    chain = " -> ".join(cand.exits)
    return f"{chain} (th_pix {list(cand.th_pix)}, th_img {cand.th_img})"


def measure(args: argparse.Namespace, network: Any, stored_cand: Any, runtime: str,
            threads: int) -> float:
    """Mean latency over the first --limit calibration images, as `dse verify` measures."""
    import torch

    from profiling.deploy import DeployTarget
    from profiling.timing import TimingSettings
    from profiling.verify import measure_cascade
    from training.data import build_dataset

    target = DeployTarget.of(stored_cand)
    if target.runtime != runtime or target.threads != threads:
        from dataclasses import replace

        from profiling.onnxruntime_backend import runtime_settings

        ort = runtime_settings(threads=threads) if runtime == "onnxruntime" else None
        target = replace(target, runtime=runtime, threads=threads, ort=ort,
                         device=torch.device("cpu"), dtype=torch.float32)
    dataset = build_dataset(args.data, split=args.split, input_size=stored_cand.input_size,
                            size=args.limit, root=args.data_root)
    module = target.module(network, stored_cand)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        measured = measure_cascade(
            module, dataset, exit_ids=module.exit_ids, num_classes=int(network.num_classes),
            device=target.device, dtype=target.dtype, dataset_name=args.data, split=args.split,
            device_name="here", timing=TimingSettings(warmup=0, repeat=args.verify_repeat))
    finally:
        torch.set_num_threads(previous)
        target.close(module)
    return measured.latency_ms


def compare_fronts(a: Any, b: Any) -> str:
    fa, fb = {key(c): c for c in front(a)}, {key(c): c for c in front(b)}
    shared = set(fa) & set(fb)
    gaps = [abs(fb[k].latency_ms - fa[k].latency_ms) / fa[k].latency_ms for k in shared]
    union = len(set(fa) | set(fb))
    gap = f"median latency gap {statistics.median(gaps) * 100:.1f}%, max " \
          f"{max(gaps) * 100:.1f}%" if gaps else "no shared point"
    return f"{len(shared)} of {union} front-1 configurations shared; {gap}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--db", required=True, help="store file (created)")
    parser.add_argument("--out", required=True, help="folder for the probe pack")
    parser.add_argument("--name", default="runtimes-bench", help="model name in the store")
    parser.add_argument("--data", default="synthetic", help="calibration data (synthetic, camvid)")
    parser.add_argument("--data-root", default=None, help="folder of --data camvid")
    parser.add_argument("--split", default="calib", help="calibration split (camvid: val)")
    parser.add_argument("--calib", type=int, default=200, help="calibration images")
    parser.add_argument("--limit", type=int, default=50, help="images per latency measurement")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs per component")
    parser.add_argument("--verify-repeat", type=int, default=5, help="timed runs per image")
    parser.add_argument("--probe-python", default=None)
    args = parser.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)

    from db.session import open_store
    from profiling.deploy import read_candidate
    from training.checkpoint import load_checkpoint

    network, meta = load_checkpoint(args.checkpoint)
    network.eval()
    size = (int(meta["input_size"][0]), int(meta["input_size"][1]))
    print(f"{args.checkpoint}: {network.arch}, {len(network.exits)} candidate exits, "
          f"{size[0]}x{size[1]}, {os.cpu_count()} CPUs [{load()}]", flush=True)
    for i, (name, runtime, threads, optimization) in enumerate(DEVICES):
        profile(args, name, runtime, threads, optimization, accuracy=i == 0)
    probe(args, network, size)

    runs = {}
    for name in [d[0] for d in DEVICES] + [PROBE_DEVICE]:
        runs[name] = search(args, name)
        stored = runs[name]
        pick = next(c for c in stored.candidates if c.index == stored.chosen)
        print(f"\n{name}: run {stored.run.id}, {len(front(stored))} front-1 points, "
              f"baseline {stored.run.baseline['latency_ms']:.2f} ms; --target speed picks "
              f"{describe(pick)}: {pick.latency_ms:.2f} ms, mIoU {pick.miou * 100:.2f}%")
        for c in front(stored):
            mark = "" if c.feasible else "  (drop > 1 pp)"
            print(f"  {c.latency_ms:8.2f} ms  {c.miou * 100:6.2f}%  {describe(c)}{mark}")

    def chosen(name: str) -> Any:
        return next(c for c in runs[name].candidates if c.index == runs[name].chosen)

    print()
    for t in (1, 2):
        a, b = chosen(f"cpu-torch-{t}t"), chosen(f"cpu-ort-{t}t")
        same = key(a) == key(b)
        print(f"{t} thread(s): torch picks {describe(a)}; onnxruntime picks {describe(b)}: "
              f"{'the same' if same else 'different'}")
    print(f"probe vs direct onnxruntime (1 thread): "
          f"{compare_fronts(runs['cpu-ort-1t'], runs[PROBE_DEVICE])}")
    print(f"direct vs direct again (the noise): "
          f"{compare_fronts(runs['cpu-ort-1t'], runs['cpu-ort-1t-again'])}")

    engine = open_store(args.db)
    try:
        torch_run, ort_run = runs["cpu-torch-1t"], runs["cpu-ort-1t"]
        final_only = next(c for c in torch_run.candidates if list(c.exits) == ["final"])
        configs = {"final exit only": read_candidate(engine, torch_run.run.id, final_only.index),
                   "torch pick": read_candidate(engine, torch_run.run.id, torch_run.chosen)}
        ort_pick = chosen("cpu-ort-1t")
        if key(ort_pick) != key(chosen("cpu-torch-1t")):
            configs["onnxruntime pick"] = read_candidate(engine, ort_run.run.id, ort_pick.index)
        # and a real trade-off: the fastest onnxruntime front point within 5 pp of the final exit
        baseline = ort_run.run.baseline["miou"]
        fast = next(c for c in front(ort_run) if c.miou >= baseline - 0.05)
        configs["fastest ort front point, <=5 pp"] = read_candidate(engine, ort_run.run.id,
                                                                     fast.index)
    finally:
        engine.dispose()
    print(f"\nmeasured mean latency over {args.limit} calibration images "
          f"({args.verify_repeat} runs each), ms:")
    print(f"{'configuration':<34} {'torch 1t':>9} {'torch 2t':>9} {'ort 1t':>9} {'ort 2t':>9}")
    for label, stored_cand in configs.items():
        before = load()
        cells = [measure(args, network, stored_cand, rt, t)
                 for rt in ("torch", "onnxruntime") for t in (1, 2)]
        print(f"{label:<34} " + " ".join(f"{v:9.2f}" for v in cells)
              + f"   {describe(stored_cand.candidate)} [{before} -> {load()}]", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
