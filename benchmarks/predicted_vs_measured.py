"""Benchmark (not a test): how well does the search's latency prediction hold on this CPU?

For every point of the first Pareto front of a stored search run, run the real early-exit network
(training.cascade's pruned cascade, or for a device profiled with `--runtime onnxruntime` the
ONNX export of it run by its numpy runner under the profile's ONNX Runtime settings) over the
calibration images, image by image, and compare the measured mean latency with the predicted one. Target: median |error| <= 5%, every point within
10% (nn-Meter's bar: 99% of models within +/-10% on a mobile CPU).

    # once: a trained checkpoint, profiled and searched on this machine
    dse profile --checkpoint ckpt.pt --device this-cpu --threads 1 --db bench.db
    dse pareto --device this-cpu --db bench.db --json
    python benchmarks/predicted_vs_measured.py --db bench.db --run 1 --checkpoint ckpt.pt

Run it on a quiet machine: the error mixes prediction error and the machine's noise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any, cast


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="store URL or SQLite file")
    parser.add_argument("--run", type=int, required=True, help="search run id")
    parser.add_argument("--checkpoint", required=True, help="the run's model checkpoint")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per image")
    parser.add_argument("--limit", type=int, default=None, help="first N calibration images")
    parser.add_argument("--whole-front", action="store_true",
                        help="every front-1 point, also those outside the run's constraints")
    parser.add_argument("--data-root", default=None, help="folder of a folder dataset (camvid...)")
    args = parser.parse_args(argv)

    import torch

    from db import repository
    from db.session import open_store, session_scope
    from profiling.deploy import DeployTarget, candidate_network, read_candidate
    from profiling.errors import ProfilingError
    from profiling.timing import TimingSettings
    from profiling.verify import Prediction, compare, measure_cascade
    from training.data import build_dataset

    engine = open_store(args.db)
    try:
        with session_scope(engine, readonly=True) as s:
            front = [c for c in repository.list_candidates(s, args.run, front=1)
                     if c.feasible or args.whole_front]
        stored = [read_candidate(engine, args.run, cand.index) for cand in front]
    finally:
        engine.dispose()
    if not stored:
        print("the run has no front points")
        return 1
    run, calib = stored[0].run, stored[0].calibration
    try:
        network = candidate_network(stored[0], Path(args.checkpoint))
    except ProfilingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # The run's device's runtime (torch eager or ONNX Runtime) and settings, as `dse verify`.
    target = DeployTarget.of(stored[0])
    threads = target.threads
    torch.set_num_threads(threads)
    size = args.limit or calib.num_samples
    dataset = build_dataset(calib.dataset, root=args.data_root, split=calib.split,
                            input_size=stored[0].input_size, size=size)
    same = list(dataset.sample_ids) == list(calib.sample_ids)
    if not same:
        print(f"note: the predictions average over the run's {calib.num_samples} calibration "
              f"images, the measurement over {len(dataset)} images; their exit rates differ, and "
              "that difference shows up as latency error. To test the latency model alone, "
              "search on a calibration selection of the measured images (e.g. `dse profile "
              "--split 'val[0:50]' --no-latency`, then `dse pareto --calibration 'val[0:50]'`).",
              file=sys.stderr)

    rows = []
    for one in stored:
        module = target.module(network, one)
        measured = measure_cascade(
            module, cast(Any, dataset), exit_ids=module.exit_ids, num_classes=network.num_classes,
            device=target.device, dtype=target.dtype, dataset_name=calib.dataset,
            split=calib.split, device_name=run.device_name,
            timing=TimingSettings(warmup=0, repeat=args.repeat),
        )
        target.close(module)
        rows.append((one.candidate, compare(Prediction.from_candidate(one.candidate), measured,
                                            same_images=same)))

    print(f"run {args.run} ({run.device_name}, {target.runtime}, {threads} thread(s)), "
          f"{len(rows)} front points, "
          f"{dataset.__len__()} images{' (calibration set)' if same else ''}")
    print(f"{'cand':>4} {'exits':>5} {'pred ms':>9} {'meas ms':>9} {'error':>8} "
          f"{'pred mIoU':>9} {'meas mIoU':>9}")
    for cand, cmp in rows:
        print(f"{cand.index:>4} {len(cand.exits) - 1:>5} {cmp.predicted.latency_ms:>9.3f} "
              f"{cmp.measured.latency_ms:>9.3f} {cmp.latency_error * 100:>+7.1f}% "
              f"{cmp.predicted.miou * 100:>9.3f} {cmp.measured.miou * 100:>9.3f}")
    errors = [abs(cmp.latency_error) for _, cmp in rows]
    median, worst = statistics.median(errors), max(errors)
    within = sum(e <= 0.10 for e in errors)
    print(f"median |error| {median * 100:.1f}% (target <= 5%), max {worst * 100:.1f}%, "
          f"{within}/{len(errors)} within 10% (target: all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
