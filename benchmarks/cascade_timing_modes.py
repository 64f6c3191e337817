"""Benchmark (not a test): does the way a deployed cascade is timed change its latency?

The profile's closed loop times each forced path twice in a row on one random input and keeps the
second run (warm, `ProtocolSettings.burst = 2`); `dse verify` and `predicted_vs_measured.py` time
a stream of real images, each once. If those two differed, predictions calibrated on the closed
loop would be off for every deployed stream. Here one candidate's cascade (under its device's
runtime, as `dse verify` runs it) is timed five ways in the same rounds, so the machine's change of
speed hits all five alike, and each way's median round is shown as a ratio to the closed loop's:

    burst2-random   the closed loop's way: run, then time a second run, on one random input
    burst2-image    the same on one real image
    stream-images   every image once, in order (what a deployment and `dse verify` do)
    stream-random   the random input once per image slot (a stream without new data)
    burst2-stream   every image twice in a row, the second timed

    python benchmarks/cascade_timing_modes.py --db bench.db --run 12 --candidate 3 \
        --checkpoint ckpt.pt --data-root ../shared/data/camvid --limit 50 --rounds 10
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="store URL or SQLite file")
    parser.add_argument("--run", type=int, required=True, help="search run id")
    parser.add_argument("--candidate", type=int, required=True, help="candidate index")
    parser.add_argument("--checkpoint", required=True, help="the run's model checkpoint")
    parser.add_argument("--data-root", default=None, help="folder of a folder dataset (camvid...)")
    parser.add_argument("--limit", type=int, default=50, help="first N calibration images")
    parser.add_argument("--rounds", type=int, default=10, help="rounds (every way once each)")
    parser.add_argument("--burst-repeat", type=int, default=10,
                        help="timed runs per round for the burst ways")
    args = parser.parse_args(argv)

    import torch

    from db.session import open_store
    from profiling.deploy import DeployTarget, candidate_network, read_candidate
    from profiling.errors import ProfilingError
    from training.data import build_dataset

    engine = open_store(args.db)
    try:
        one = read_candidate(engine, args.run, args.candidate)
    finally:
        engine.dispose()
    try:
        network = candidate_network(one, Path(args.checkpoint))
    except ProfilingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    target = DeployTarget.of(one)
    torch.set_num_threads(target.threads)
    calib = one.calibration
    dataset = build_dataset(calib.dataset, root=args.data_root, split=calib.split,
                            input_size=one.input_size, size=args.limit)
    images = [dataset[i][0].unsqueeze(0).to(dtype=target.dtype) for i in range(len(dataset))]
    torch.manual_seed(0)
    noise = torch.randn(1, 3, *one.input_size, dtype=target.dtype)
    module = target.module(network, one)

    def timed(x: Any) -> float:
        start = time.perf_counter()
        module(x)
        return (time.perf_counter() - start) * 1e3

    def burst(x: Any) -> float:
        module(x)
        return timed(x)

    ways: dict[str, Callable[[], float]] = {
        "burst2-random": lambda: statistics.median(
            burst(noise) for _ in range(args.burst_repeat)),
        "burst2-image": lambda: statistics.median(
            burst(images[0]) for _ in range(args.burst_repeat)),
        "stream-images": lambda: statistics.mean(timed(x) for x in images),
        "stream-random": lambda: statistics.mean(timed(noise) for _ in images),
        "burst2-stream": lambda: statistics.mean(burst(x) for x in images),
    }
    rounds: dict[str, list[float]] = {name: [] for name in ways}
    try:
        with torch.inference_mode():
            for _ in range(3):
                module(noise)
            for _ in range(args.rounds):
                for name, way in ways.items():
                    rounds[name].append(way())
    finally:
        target.close(module)
    base = statistics.median(rounds["burst2-random"])
    print(f"run {args.run} candidate {args.candidate} ({target.runtime}, {target.threads} "
          f"thread(s)), {len(images)} images, {args.rounds} rounds")
    for name, values in rounds.items():
        mid = statistics.median(values)
        print(f"{name:>14}: median round {mid:8.3f} ms ({mid / base:.3f}x the closed loop's way),"
              f" rounds {min(values):.3f}-{max(values):.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
