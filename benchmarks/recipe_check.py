"""Benchmark (not a test): the CamVid recipe's learning rate, chosen on a split of *train*.

CamVid val reports results, so nothing may be tuned on it. This trains the single-exit
EfficientNet-Lite0 network (the backbone training every MESS stage 1 shares) on train[0:N] with
each candidate learning rate and poly schedule for a few epochs and scores it on the held-out
rest of train, train[N:]. Short runs only rank the settings at this budget; the README says so.

    .venv/bin/python benchmarks/recipe_check.py --lrs 0.0005,0.001,0.002 --epochs 3
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from training.adapters import build_network
from training.data import build_dataset
from training.errors import TrainingError
from training.train import TrainConfig, evaluate_exits, train_network

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "camvid"))
    p.add_argument("--lrs", default="0.001,0.002", help="comma-separated AdamW learning rates")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--split", type=int, default=280, help="train on train[0:N], score train[N:]")
    p.add_argument("--input-size", default="180x240")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    h, w = (int(x) for x in a.input_size.split("x"))
    try:
        fit = build_dataset(
            "camvid", root=a.data_root, split=f"train[0:{a.split}]", input_size=(h, w),
            augment=True,
        )  # fmt: skip
        held = build_dataset("camvid", root=a.data_root, split=f"train[{a.split}:]", input_size=(h, w))
        rows = []
        for lr in (float(x) for x in a.lrs.split(",")):
            torch.manual_seed(0)
            net = build_network("fcn_efficientnet_lite0", num_classes=11, pretrained_backbone=True,
                                head_space=["nocrm-b0-fcn"], positions=["blocks.13"])  # fmt: skip
            config = TrainConfig(
                mode="final-only", epochs=a.epochs, optimizer="adamw", lr=lr,
                class_weighting="enet", threads=a.threads,
            )  # fmt: skip
            began = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                train_network(net, fit, None, config, out=f"{tmp}/c.pt",
                              meta={"input_size": [h, w], "dataset": "camvid"})  # fmt: skip
            minutes = (time.perf_counter() - began) / 60
            miou = evaluate_exits(net, held, exit_ids=[])["final"]
            load = os.getloadavg()[0]
            rows.append((lr, miou, minutes, load))
            print(f"lr {lr:g}: held-out train mIoU {100 * miou:.1f} after {a.epochs} epochs "
                  f"({minutes:.1f} min, load {load:.1f})", file=sys.stderr, flush=True)  # fmt: skip
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"AdamW + poly, {a.epochs} epochs on train[0:{a.split}], mIoU on train[{a.split}:] "
          f"({len(held)} images), {h}x{w}:")  # fmt: skip
    for lr, miou, minutes, load in rows:
        print(f"  lr {lr:g}: {100 * miou:.1f} ({minutes:.1f} min, load {load:.1f})")
    best = max(rows, key=lambda r: r[1])
    print(f"best: lr {best[0]:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
