"""What profiling costs (a benchmark, not a test).

1. Accuracy pass: the bookkeeping (edge-corrected confidences, histograms, per-image TP/FP/FN)
   on top of one all-exits forward must stay cheap: the pass (store included) should cost at
   most 1.3x `network(x)` (every exit at input size) over the same images.
2. Latency pass: profiling `deeplabv3_resnet50` with the default head space on this CPU; prints
   the total time and how many components were timed.

    .venv/bin/python benchmarks/profile_cost.py accuracy --arch fcn_resnet18 --images 32
    .venv/bin/python benchmarks/profile_cost.py latency --input-size 128x128 --repeat 5
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def _network(arch: str, positions: list[str] | None, num_classes: int):
    from training.adapters import build_network
    from training.heads import default_head_space

    torch.manual_seed(0)
    return build_network(arch, num_classes=num_classes, head_space=list(default_head_space()),
                         positions=positions).eval()


def _model_row(engine, network) -> int:
    from db import repository
    from db.session import session_scope
    from training.checkpoint import describe_network, weights_sha256

    with session_scope(engine) as s:
        return repository.upsert_model(
            s, name=network.arch, arch=network.arch, architecture=describe_network(network),
            weights_sha256=weights_sha256(network), num_classes=network.num_classes,
        ).id


def bench_accuracy(args: argparse.Namespace) -> None:
    from db.session import open_store
    from profiling.accuracy import AccuracySettings, profile_accuracy
    from training.data import build_dataset

    h, w = (int(v) for v in args.input_size.split("x"))
    data = build_dataset("synthetic", split="val", input_size=(h, w), size=args.images)
    network = _network(args.arch, args.positions, data.num_classes)
    batches = [
        torch.stack([data[i][0] for i in range(lo, min(lo + args.batch, len(data)))])
        for lo in range(0, len(data), args.batch)
    ]
    # The machine is shared: alternate the two measurements and keep the best of each.
    forward_s, pass_s = float("inf"), float("inf")
    with torch.inference_mode():
        network(batches[0])  # warm-up
    for _ in range(args.rounds):
        with torch.inference_mode():
            start = time.perf_counter()
            for x in batches:
                network(x)
            forward_s = min(forward_s, time.perf_counter() - start)
        with tempfile.TemporaryDirectory() as tmp:
            engine = open_store(str(Path(tmp) / "bench.db"), create=True)
            model_id = _model_row(engine, network)
            start = time.perf_counter()
            result = profile_accuracy(engine, network, data, model_id=model_id,
                                      settings=AccuracySettings(batch_size=args.batch))
            pass_s = min(pass_s, time.perf_counter() - start)
            engine.dispose()
    exits = len(network.exits) + 1
    print(f"accuracy pass: {args.arch} {h}x{w}, {len(data)} images, {exits} exits, "
          f"batch {args.batch}, {torch.get_num_threads()} thread(s), best of {args.rounds}")
    print(f"  all-exits forward: {forward_s:.2f} s; accuracy pass (store included): "
          f"{pass_s:.2f} s; ratio {pass_s / forward_s:.2f}x (target <= 1.30x); "
          f"measured {result.measured_samples} images")


def bench_latency(args: argparse.Namespace) -> None:
    from db.session import open_store
    from profiling.latency import LatencySettings, profile_latency
    from profiling.timing import TimingSettings

    h, w = (int(v) for v in args.input_size.split("x"))
    network = _network(args.arch, args.positions, 21)
    settings = LatencySettings(threads=torch.get_num_threads(),
                               timing=TimingSettings(warmup=args.warmup, repeat=args.repeat))
    with tempfile.TemporaryDirectory() as tmp:
        engine = open_store(str(Path(tmp) / "bench.db"), create=True)
        model_id = _model_row(engine, network)
        start = time.perf_counter()
        result = profile_latency(engine, network, model_id=model_id, device_name="bench",
                                 input_size=(h, w), settings=settings)
        total_s = time.perf_counter() - start
        engine.dispose()
    kinds: dict[str, int] = {}
    for key in result.measured:
        kind = key.split(":", 1)[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    print(f"latency pass: {args.arch} {h}x{w}, {len(network.exits)} candidate exits, "
          f"{settings.threads} thread(s), warm-up {args.warmup}, repeat {args.repeat}")
    print(f"  total {total_s:.1f} s for {len(result.measured)} components "
          f"({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}) "
          f"+ {len(result.paths)} closed-loop paths")
    for check in result.paths:
        print(f"  path {check.name}: cascade {check.measured.mean_ms:.1f} ms, "
              f"sum of components {check.predicted_ms:.1f} ms ({100 * check.deviation:+.1f}%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    acc = sub.add_parser("accuracy")
    acc.add_argument("--arch", default="fcn_resnet18")
    acc.add_argument("--positions", nargs="*", default=None)
    acc.add_argument("--input-size", default="64x64")
    acc.add_argument("--images", type=int, default=32)
    acc.add_argument("--batch", type=int, default=8)
    acc.add_argument("--rounds", type=int, default=3)
    lat = sub.add_parser("latency")
    lat.add_argument("--arch", default="deeplabv3_resnet50")
    lat.add_argument("--positions", nargs="*", default=None)
    lat.add_argument("--input-size", default="128x128")
    lat.add_argument("--repeat", type=int, default=5)
    lat.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    bench_accuracy(args) if args.what == "accuracy" else bench_latency(args)


if __name__ == "__main__":
    main()
