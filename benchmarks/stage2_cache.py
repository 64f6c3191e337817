"""Benchmark (not a test): a stage-2 epoch with the feature cache vs without, same run.

From one stage-1 checkpoint, trains stage 2 (PFD, every head) twice with identical settings and
fixed views: once recomputing the frozen backbone every batch, once from the feature cache
(`training.feature_cache`, built in memory first). Prints the seconds of every epoch, the cache
build time, the per-epoch ratio, the number of epochs after which the cache has paid for itself,
and the largest difference between the two runs' head weights (they should agree to float
tolerance: the cache changes where the backbone's outputs come from, not what they are).

    .venv/bin/python benchmarks/stage2_cache.py --checkpoint /tmp/mess-bench/conv/stage1.pt
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from training.checkpoint import load_checkpoint
from training.data import build_dataset
from training.errors import TrainingError
from training.train import EpochRecord, TrainConfig, train_network

ROOT = Path(__file__).resolve().parents[1]


class _Times:
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def epoch_started(self, mode: str, epoch: int, epochs: int, batches: int) -> None:
        pass

    def batch_done(self, loss: float) -> None:
        pass

    def epoch_done(self, record: EpochRecord) -> None:
        self.seconds.append(record.seconds)
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"  epoch {record.epoch}: {record.seconds:.1f} s (load {load})", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a stage-1 checkpoint")
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "camvid"))
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--train-size", type=int, default=None, help="first N training images")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    try:
        start, meta = load_checkpoint(a.checkpoint)
        size = tuple(meta["input_size"])
        data = build_dataset(
            "camvid", root=a.data_root, split="train", input_size=(size[0], size[1]),
            augment=True, size=a.train_size,
        )  # fmt: skip
        for index in range(len(data)):
            data.raw(index)  # decode once, outside both timings
        trained, times = {}, {}
        with tempfile.TemporaryDirectory() as tmp:
            for cached in (False, True):
                name = "cache" if cached else "no cache"
                print(f"stage 2 (PFD, {len(start.exit_ids)} heads), {name}:", file=sys.stderr)
                net, progress = copy.deepcopy(start), _Times()
                config = TrainConfig(
                    mode="stage2", epochs=a.epochs, optimizer="adamw", lr=1e-3,
                    class_weighting="enet", stage2_views=a.views, feature_cache=cached,
                    threads=a.threads,
                )  # fmt: skip
                began = time.perf_counter()
                train_network(
                    net, data, None, config, out=str(Path(tmp) / f"{cached}.pt"),
                    meta={"input_size": list(size), "dataset": "camvid"}, progress=progress,
                )  # fmt: skip
                total = time.perf_counter() - began
                trained[cached], times[cached] = net, (total, progress.seconds)
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    plain_total, plain = times[False]
    cache_total, cached_epochs = times[True]
    build = cache_total - sum(cached_epochs)
    per_plain, per_cached = sum(plain) / len(plain), sum(cached_epochs) / len(cached_epochs)
    heads = [k for k in trained[True].state_dict() if k.startswith("heads.")]
    diff = max(
        float((trained[True].state_dict()[k].float() - trained[False].state_dict()[k].float())
              .abs().max())
        for k in heads
    )  # fmt: skip
    moved = max(
        float((trained[True].state_dict()[k].float() - start.state_dict()[k].float()).abs().max())
        for k in heads
    )  # fmt: skip
    saved = per_plain - per_cached
    print(f"stage-2 epoch (PFD, {len(start.exit_ids)} heads, {len(data)} images, "
          f"{a.views} fixed views, {a.threads} threads, load {os.getloadavg()[0]:.1f}):")  # fmt: skip
    print(f"  without cache: {' '.join(f'{s:.1f}' for s in plain)} s per epoch")
    print(f"  with cache:    {' '.join(f'{s:.1f}' for s in cached_epochs)} s per epoch, "
          f"built once in {build:.1f} s")  # fmt: skip
    print(f"  ratio {per_plain / per_cached:.2f}x per epoch; the cache pays for itself after "
          f"{build / saved:.1f} epochs" if saved > 0 else "  the cache saves nothing per epoch")
    print(f"  largest head-weight difference between the two runs: {diff:.2e} "
          f"(largest change by training: {moved:.2e})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
