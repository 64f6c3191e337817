"""Benchmark (not a test): where does PFD lose to IC-only? Per-class IoU at every exit.

Two stage-2 checkpoints trained from the same stage-1 network (benchmarks/train_camvid.py
`pfd.pt` and `ic_only.pt`, optionally `pfd_cw.pt`: PFD with class-weighted distillation) are
evaluated on CamVid val per class and per exit. The question it answers with a measurement:
the CE term is class-weighted (ENet weights, 1/ln(1.02 + p)), the distillation term is not,
so PFD may pull the heads toward the frequent classes. If so, PFD's losses concentrate on the
rare classes (train pixel share < 2%: Pole, SignSymbol, Fence, Pedestrian, Bicyclist) and the
class-weighted variant recovers them.

    python benchmarks/pfd_diagnosis.py --a /tmp/mess-bench/conv/pfd.pt \\
        --b /tmp/mess-bench/conv/ic_only.pt [--c /tmp/mess-bench/conv/pfd_cw.pt]

Prints, per exit, mIoU of each checkpoint and the mean IoU difference (a - b) over the rare
and over the frequent classes; then the same averaged over all early exits.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from training.checkpoint import load_checkpoint
from training.data import build_dataset
from training.heads import FINAL_EXIT
from training.train import evaluate_exit_scores

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
           "Pedestrian", "Bicyclist")
RARE = {2, 6, 7, 9, 10}  # < 2% of train pixels (data README)


def per_class(path: str, root: str) -> dict[str, tuple[float, ...]]:
    """IoU per class (NaN where a class is absent) at every exit of the checkpoint, on val."""
    network, meta = load_checkpoint(path)
    size = tuple(meta["input_size"])
    val = build_dataset("camvid", root=root, split="val", input_size=(size[0], size[1]))
    scores = evaluate_exit_scores(network, val, exit_ids=list(network.exit_ids))
    return {e: score.iou for e, score in scores.items()}


def mean(values: list[float]) -> float:
    kept = [v for v in values if v == v]
    return statistics.fmean(kept) if kept else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", required=True, help="checkpoint a (e.g. PFD)")
    parser.add_argument("--b", required=True, help="checkpoint b (e.g. IC-only)")
    parser.add_argument("--c", default=None, help="optional checkpoint c (e.g. PFD, weighted KD)")
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "camvid"))
    args = parser.parse_args(argv)
    names = {"a": args.a, "b": args.b, **({"c": args.c} if args.c else {})}
    ious = {k: per_class(v, args.data_root) for k, v in names.items()}
    for k, v in names.items():
        print(f"{k}: {v}")
    print(f"[load {' / '.join(f'{x:.1f}' for x in os.getloadavg())}]")
    others = [k for k in names if k != "a"]
    head = "| exit | " + " | ".join(f"mIoU {k}" for k in names) + " | " + " | ".join(
        f"rare a-{k} | frequent a-{k}" for k in others) + " |"
    print(head)
    print("|---|" + "---:|" * (len(names) + 2 * len(others)))
    rare_sum: dict[str, list[float]] = {k: [] for k in others}
    freq_sum: dict[str, list[float]] = {k: [] for k in others}
    per_class_diff: dict[str, list[list[float]]] = {k: [[] for _ in CLASSES] for k in others}
    for exit_id in ious["a"]:
        cells = [f"{100 * mean(list(ious[k][exit_id])):.1f}" for k in names]
        for k in others:
            diff = [ious["a"][exit_id][c] - ious[k][exit_id][c] for c in range(len(CLASSES))]
            rare = mean([diff[c] for c in RARE])
            freq = mean([diff[c] for c in range(len(CLASSES)) if c not in RARE])
            cells += [f"{100 * rare:+.1f}", f"{100 * freq:+.1f}"]
            if exit_id != FINAL_EXIT:
                rare_sum[k].append(rare)
                freq_sum[k].append(freq)
                for c in range(len(CLASSES)):
                    per_class_diff[k][c].append(diff[c])
        print(f"| {exit_id} | " + " | ".join(cells) + " |")
    for k in others:
        print(f"\nover the early exits, a - {k} (IoU pp): rare classes "
              f"{100 * mean(rare_sum[k]):+.2f}, frequent classes {100 * mean(freq_sum[k]):+.2f}")
        print("  per class: " + ", ".join(f"{name} {100 * mean(per_class_diff[k][c]):+.1f}"
                                          for c, name in enumerate(CLASSES)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
