"""Benchmark (not a test): does two-stage MESS training with PFD work on real data?

EfficientNet-Lite0 MESS network (ImageNet backbone), CamVid from ../shared at 240x180 (or
480x360 with --full-res), each training run limited to --minutes of wall clock:

    stage 1 (exit-aware backbone)                      --minutes
    (a) stage 2 with positive-filtering distillation   --minutes, from stage 1
    (a') the same, distilled pixels class-weighted     --minutes, from stage 1
    (b) IC-only: stage 2 with CE only                  --minutes, from stage 1
    (c) end-to-end: all exits and backbone jointly     2 x --minutes (same time as stage 1 + 2)
    (d) single-exit network (final exit only)          2 x --minutes

so a full run takes about 8 x --minutes plus evaluation. Prints per-exit val mIoU of (a), (a'), (b),
(c) and the final-exit mIoU of (d). Checkpoints go to --out (default /tmp/mess-bench); a run
that finds a finished checkpoint there reuses it and an interrupted one resumes it, so the
benchmark can be stopped and restarted. --quick: a few images, one epoch each, seconds.

--epochs S1,S2 trains by epochs instead of wall clock, so a busy machine changes only the times,
never the numbers: stage 1 S1 epochs, each stage 2 S2 epochs, end-to-end S1+S2, and the
single-exit network twice: S1 epochs (the same backbone training as the MESS final exit) and
S1+S2 epochs (the same number of passes over the data as stage 1 + stage 2). Wall time of every
run is printed.

    .venv/bin/python benchmarks/train_camvid.py --minutes 8
    .venv/bin/python benchmarks/train_camvid.py --epochs 3,2
    .venv/bin/python benchmarks/train_camvid.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from training.checkpoint import load_checkpoint, read_checkpoint
from training.data import build_dataset
from training.errors import TrainingError
from training.runner import TrainRequest, run_training
from training.train import EpochRecord, TrainConfig, evaluate_exits

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "camvid"
POSITIONS = "blocks.2,blocks.4,blocks.7,blocks.10,blocks.13"
HEAD_SPACE = "nocrm-b0-fcn,crm64-b1-rdi-fcn,crm64-b0-deeplabv3"
RUNS = ("stage1", "pfd", "ic_only", "pfd_cw", "single", "single_long", "e2e")
STAGE2_RUNS = ("pfd", "ic_only", "pfd_cw")


class _Log:
    """Progress on stderr: one line per epoch (the table goes to stdout)."""

    def epoch_started(self, mode: str, epoch: int, epochs: int, batches: int) -> None:
        self._start = time.perf_counter()
        print(
            f"  {mode} epoch {epoch}/{epochs} ({batches} batches)...", file=sys.stderr, flush=True
        )

    def batch_done(self, loss: float) -> None:
        pass

    def epoch_done(self, record: EpochRecord) -> None:
        final = record.val_miou.get("final", float("nan"))
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
        print(
            f"  {record.mode} epoch {record.epoch}: loss {record.train_loss:.3f}, "
            f"val final {100 * final:.1f}, {record.seconds:.0f} s, "
            f"{time.strftime('%H:%M:%S')}, load {load}",
            file=sys.stderr,
            flush=True,
        )


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=str(DEFAULT_DATA))
    p.add_argument("--out", default="/tmp/mess-bench")
    p.add_argument("--minutes", type=float, default=8.0, help="budget of each stage")
    p.add_argument(
        "--epochs", default=None, metavar="S1,S2",
        help="train by epochs (stage 1, stage 2) instead of --minutes; see the module docstring",
    )  # fmt: skip
    p.add_argument("--full-res", action="store_true", help="480x360 instead of 240x180")
    p.add_argument("--arch", default="fcn_efficientnet_lite0")
    p.add_argument("--positions", default=POSITIONS)
    p.add_argument("--head-space", default=HEAD_SPACE)
    p.add_argument("--optimizer", default="adamw", choices=("sgd", "adamw"))
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--class-weighting", default="enet", choices=("none", "enet", "median"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--scratch", action="store_true", help="no ImageNet backbone weights")
    p.add_argument(
        "--monitor-val", type=int, default=16,
        help="per-epoch validation on the first N val images only (progress, not selection); "
        "the full val split is evaluated once at the end",
    )  # fmt: skip
    p.add_argument(
        "--skip", default="", metavar="NAMES",
        help=f"comma-separated runs not to train: {', '.join(RUNS[1:])}",
    )  # fmt: skip
    p.add_argument(
        "--only", default="", metavar="NAMES",
        help="train only these runs (stage1 is trained too when a stage-2 run needs it); "
        "the table shows what exists",
    )  # fmt: skip
    p.add_argument(
        "--no-feature-cache", action="store_true",
        help="stage-2 runs recompute the frozen backbone every epoch (for timing comparisons)",
    )  # fmt: skip
    p.add_argument("--quick", action="store_true", help="smoke test: tiny data, 1 epoch each")
    return p.parse_args(argv)


def _epochs(a: argparse.Namespace) -> tuple[int, int] | None:
    """(stage 1, stage 2) epochs of --epochs, None in wall-clock mode."""
    if a.epochs is None:
        return None
    try:
        s1, s2 = (int(x) for x in a.epochs.split(","))
    except ValueError:
        raise SystemExit(f"error: --epochs wants two integers 'S1,S2', got {a.epochs!r}") from None
    if s1 < 1 or s2 < 1:
        raise SystemExit(f"error: --epochs wants positive counts, got {a.epochs!r}")
    return s1, s2


def _request(
    a: argparse.Namespace,
    stage: str,
    out: Path,
    minutes: float,
    init: Path | None,
    epochs: int | None = None,
    weighted_kd: bool = False,
) -> TrainRequest:
    size = (360, 480) if a.full_res else (180, 240)
    if a.quick:
        size = (48, 64)
    reuse = out.exists()
    base = TrainConfig(
        mode="stage1", epochs=1 if a.quick else (epochs or 1000), batch_size=a.batch_size,
        optimizer=a.optimizer, lr=a.lr, class_weighting=a.class_weighting,
        distill_class_weights=weighted_kd, device=a.device, threads=a.threads,
        feature_cache=not a.no_feature_cache,
        feature_cache_path=str(Path(a.out) / "stage1.features.pt"),
    )  # fmt: skip
    return TrainRequest(
        arch=a.arch, data="camvid", data_root=a.data_root, out=str(out), stage=stage,
        input_size=size, base=base,
        time_budget_s=None if a.quick or epochs else minutes * 60,
        resume=reuse, init=None if reuse else (str(init) if init else None),
        head_space=tuple(a.head_space.split(",")), positions=tuple(a.positions.split(",")),
        pretrained_backbone=not a.scratch,
        train_size=8 if a.quick else None, val_size=4 if a.quick else a.monitor_val,
    )  # fmt: skip


def _train(
    a: argparse.Namespace,
    name: str,
    stage: str,
    minutes: float,
    init: Path | None = None,
    epochs: int | None = None,
    weighted_kd: bool = False,
) -> Path:
    out = Path(a.out) / f"{name}.pt"
    if out.exists() and (read_checkpoint(out).get("train_state") or {}).get("finished"):
        print(f"{name}: reusing finished {out}", file=sys.stderr)
        return out
    budget = f"{epochs} epochs" if epochs else f"{minutes:g} min budget"
    print(f"{name}: training ({stage}, {budget})", file=sys.stderr, flush=True)
    run_training(_request(a, stage, out, minutes, init, epochs, weighted_kd), progress=_Log())
    return out


def _evaluate(a: argparse.Namespace, path: Path, *, exits: bool) -> dict[str, float]:
    """Full-val mIoU per exit; cached next to the checkpoint for as long as it is unchanged."""
    cache = path.with_suffix(".eval.json")
    key = f"{path.stat().st_mtime_ns}:{path.stat().st_size}:{exits}:{a.quick}"
    if cache.exists():
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            return dict(saved["miou"])
    miou = _evaluate_now(a, path, exits=exits)
    cache.write_text(json.dumps({"key": key, "miou": miou}))
    return miou


def _evaluate_now(a: argparse.Namespace, path: Path, *, exits: bool) -> dict[str, float]:
    network, meta = load_checkpoint(path)
    size = tuple(meta["input_size"])
    val = build_dataset(
        "camvid", root=a.data_root, split="val", input_size=(size[0], size[1]),
        size=4 if a.quick else None,
    )  # fmt: skip
    ids = list(network.exit_ids) if exits else []
    return evaluate_exits(network.to(a.device), val, exit_ids=ids, batch_size=8, device=a.device)


def _spent(path: Path) -> dict[str, float]:
    """Epochs and wall minutes the checkpoint's last mode trained (from its train_state)."""
    state = read_checkpoint(path).get("train_state") or {}
    return {"epochs": int(state.get("epoch", 0)), "minutes": float(state.get("elapsed_s", 0)) / 60}


def _table(results: dict[str, dict[str, float]], exit_ids: list[str]) -> str:
    cols = [("pfd", "MESS two-stage + PFD"), ("pfd_cw", "PFD, class-weighted KD"),
            ("ic_only", "IC-only"), ("e2e", "end-to-end"), ("single", "single-exit")]  # fmt: skip
    if "single_long" in results:
        cols.append(("single_long", "single-exit, S1+S2 epochs"))
    width = max(len(e) for e in [*exit_ids, "final"]) + 2
    lines = ["| exit | " + " | ".join(title for _, title in cols) + " |",
             "|---|" + "---:|" * len(cols)]  # fmt: skip
    for exit_id in [*exit_ids, "final"]:
        cells = []
        for key, _ in cols:
            value = results.get(key, {}).get(exit_id)
            cells.append("—" if value is None else f"{100 * value:.1f}")
        lines.append(f"| {exit_id:<{width}} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _verdicts(results: dict[str, dict[str, float]], exit_ids: list[str]) -> list[str]:
    """The issue's two expectations, counted: PFD >= IC-only per early exit; final vs single."""
    lines = []
    ic = results.get("ic_only", {})
    for name in ("pfd", "pfd_cw"):
        if name in results and ic:
            wins = sum(results[name][e] >= ic[e] for e in exit_ids)
            gaps = [100 * (results[name][e] - ic[e]) for e in exit_ids]
            lines.append(
                f"{name} >= IC-only at {wins}/{len(exit_ids)} early exits "
                f"(difference {min(gaps):+.1f} to {max(gaps):+.1f}, mean {sum(gaps) / len(gaps):+.1f})"
            )
    final = results.get("stage1", {}).get("final")
    for name in ("single", "single_long"):
        if name in results and final is not None:
            lines.append(
                f"MESS final {100 * final:.1f} vs {name} {100 * results[name]['final']:.1f} "
                f"({100 * (final - results[name]['final']):+.1f})"
            )
    return lines


def _wanted(a: argparse.Namespace) -> list[str]:
    """Runs to train, in order: --only (plus stage1 when a stage-2 run needs it) minus --skip."""
    only = [n for n in a.only.split(",") if n]
    skip = [n for n in a.skip.split(",") if n]
    for name in [*only, *skip]:
        if name not in RUNS:
            raise SystemExit(f"error: unknown run {name!r}; choose from {', '.join(RUNS)}")
    wanted = [n for n in RUNS if (not only or n in only) and n not in skip]
    if a.epochs is None:
        wanted = [n for n in wanted if n != "single_long"]  # by epochs only
    if any(n in STAGE2_RUNS for n in wanted) and "stage1" not in wanted:
        wanted.insert(0, "stage1")
    return wanted


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        epochs = _epochs(a)
        s1, s2 = epochs if epochs else (None, None)
        both = s1 + s2 if s1 and s2 else None
        m = a.minutes
        plan = {
            "stage1": lambda: _train(a, "stage1", "1", m, epochs=s1),
            "pfd": lambda: _train(a, "pfd", "2", m, init=runs["stage1"], epochs=s2),
            "ic_only": lambda: _train(a, "ic_only", "ic-only", m, init=runs["stage1"], epochs=s2),
            "pfd_cw": lambda: _train(
                a, "pfd_cw", "2", m, init=runs["stage1"], epochs=s2, weighted_kd=True
            ),
            "single": lambda: _train(a, "single", "final-only", 2 * m, epochs=s1),
            "single_long": lambda: _train(a, "single_long", "final-only", 0, epochs=both),
            "e2e": lambda: _train(a, "e2e", "end-to-end", 2 * m, epochs=both),
        }
        runs: dict[str, Path] = {}
        for name in _wanted(a):
            runs[name] = plan[name]()
        results = {
            name: _evaluate(a, path, exits=name in (*STAGE2_RUNS, "e2e"))
            for name, path in runs.items()
        }
        spent = {name: _spent(path) for name, path in runs.items()}
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with_exits = [r for r in ("pfd", "ic_only", "pfd_cw", "e2e") if r in results]
    exit_ids = [e for e in results[with_exits[0]] if e != "final"] if with_exits else []
    size = "480x360" if a.full_res else "240x180"
    budget = f"epochs {a.epochs} (stage 1, stage 2)" if a.epochs else f"{a.minutes:g} min per stage"
    print(f"CamVid val mIoU (%), {a.arch}, {size}, {budget}"
          f"{' (QUICK smoke test: meaningless numbers)' if a.quick else ''}")  # fmt: skip
    print(_table(results, exit_ids))
    if "stage1" in results:
        print(f"stage-1 network alone: final {100 * results['stage1']['final']:.1f}")
    for line in _verdicts(results, exit_ids):
        print(line)
    for name, used in spent.items():
        print(f"{name}: {used['epochs']} epochs in {used['minutes']:.1f} min")
    print(f"total wall time {(time.perf_counter() - started) / 60:.1f} min; checkpoints in {out}")
    saved = out / "results.json"
    previous = json.loads(saved.read_text()) if saved.exists() else {}
    merged = {**previous, **results, "spent": {**previous.get("spent", {}), **spent}}
    saved.write_text(json.dumps(merged, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
