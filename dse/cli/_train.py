"""`dse train`: two-stage MESS training (and its ablations) with a progress bar per epoch."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from db.records import FINAL_EXIT
from dse.cli._app import JsonOption, app, console, err_console, parse_input_size, plain_column
from dse.errors import DseError

if TYPE_CHECKING:
    from training.train import EpochRecord

STAGE_HELP = (
    "1: exit-aware backbone; 2: every candidate head on the frozen backbone (CE + positive-filtering "
    "distillation); both: 1 then 2. Ablations: ic-only, end-to-end, final-only."
)


def _split_list(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    items = tuple(t.strip() for t in text.split(",") if t.strip())
    return items or None


class TrainBars:
    """TrainProgress for humans: one bar per epoch with loss and ETA, a line per finished epoch."""

    def __init__(self, *, json_lines: bool) -> None:
        self.json_lines = json_lines
        self.bar = Progress(
            plain_column("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=err_console,
            transient=True,
        )
        self.task: Any = None
        self._loss_sum = 0.0
        self._count = 0
        self._epochs: dict[str, int] = {}  # planned epochs per mode, for "epoch 3/8"

    def __enter__(self) -> TrainBars:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def epoch_started(self, mode: str, epoch: int, epochs: int, batches: int) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
        self._loss_sum, self._count = 0.0, 0
        self._epochs[mode] = epochs
        self.task = self.bar.add_task(f"{mode} epoch {epoch}/{epochs}", total=batches, loss=0.0)

    def note(self, text: str) -> None:
        """A one-line notice (budget plan, a rebuilt feature cache) above the bar."""
        if self.json_lines:
            typer.echo(json.dumps({"event": "note", "text": text}, sort_keys=True))
            return
        self.bar.console.print(text, highlight=False, markup=False)

    def batch_done(self, loss: float) -> None:
        self._loss_sum += loss
        self._count += 1
        self.bar.update(self.task, advance=1, loss=self._loss_sum / self._count)

    def epoch_done(self, record: EpochRecord) -> None:
        if self.json_lines:
            typer.echo(json.dumps(_record_json(record), sort_keys=True))
            return
        final = record.val_miou.get(FINAL_EXIT)
        early = [v for k, v in record.val_miou.items() if k != FINAL_EXIT]
        # The stage's planned epochs (with --time-budget: the current plan, revised per epoch).
        of = f"/{self._epochs[record.mode]}" if record.mode in self._epochs else ""
        parts = [f"{record.mode} epoch {record.epoch}{of}", f"loss {record.train_loss:.4f}"]
        if final is not None:
            parts.append(f"val mIoU final {100 * final:.1f}")
        if early:
            parts.append(f"exits {100 * min(early):.1f}-{100 * max(early):.1f}")
        parts.append(f"{record.seconds:.0f} s")
        self.bar.console.print(", ".join(parts), highlight=False)


def _record_json(record: EpochRecord) -> dict[str, Any]:
    return {
        "event": "epoch",
        "mode": record.mode,
        "epoch": record.epoch,
        "train_loss": record.train_loss,
        "seconds": record.seconds,
        "val_miou": record.val_miou,
    }


def _compute(compute: str | None, device: str | None) -> str:
    """--compute, or the deprecated --device of earlier releases (one warning line)."""
    if device is not None:
        err_console.print("warning: `dse train --device` is deprecated and will be removed in the "
                          "next release; use --compute cpu|cuda (--device names a machine in "
                          "`dse profile`)", markup=False, highlight=False, soft_wrap=True)
        if compute is not None and compute != device:
            raise DseError(f"--compute {compute} and --device {device} disagree; give --compute only")
    kind = compute or device or "cpu"
    if kind not in ("cpu", "cuda") and not kind.startswith("cuda:"):
        raise DseError(f"--compute must be cpu or cuda, got {kind!r}")
    return kind


@app.command("train")
def train_command(
    arch: Annotated[str, typer.Option("--arch", help="Architecture (see `dse inspect`).")],
    out: Annotated[str, typer.Option("--out", help="Checkpoint file to write.")],
    data: Annotated[
        str, typer.Option("--data", help="synthetic, camvid, voc or cityscapes.")
    ] = "synthetic",
    data_root: Annotated[str | None, typer.Option("--data-root", help="Dataset folder.")] = None,
    stage: Annotated[str, typer.Option("--stage", help=STAGE_HELP)] = "both",
    epochs: Annotated[
        int | None,
        typer.Option(
            "--epochs",
            help="Epochs per stage (default: the dataset's recipe, 10; CamVid 18); with "
            "--time-budget at most this many.",
        ),
    ] = None,
    stage2_epochs: Annotated[
        int | None,
        typer.Option(
            "--stage2-epochs",
            help="Epochs of stage 2 / ic-only (default: --epochs; CamVid recipe 8).",
        ),
    ] = None,
    time_budget: Annotated[
        float | None,
        typer.Option(
            "--time-budget",
            help="Minutes for all stages: measured up front, checked between steps, the "
            "schedule fitted to it.",
        ),
    ] = None,
    input_size: Annotated[
        str | None, typer.Option("--input-size", help="HxW (default 64x64; CamVid 180x240).")
    ] = None,
    compute: Annotated[
        str | None, typer.Option("--compute", help="Torch device to compute on: cpu or cuda[:N].")
    ] = None,
    device: Annotated[
        str | None,
        typer.Option("--device", hidden=True, help="Deprecated: use --compute."),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue --out from its last epoch.")
    ] = False,
    init: Annotated[
        str | None,
        typer.Option("--init", help="Start from this checkpoint (e.g. stage 1 for --stage 2)."),
    ] = None,
    head_space: Annotated[
        str | None,
        typer.Option("--head-space", help="Comma-separated head ids (default: 20 heads)."),
    ] = None,
    positions: Annotated[
        str | None, typer.Option("--positions", help="Comma-separated block names or globs.")
    ] = None,
    exits: Annotated[
        str | None, typer.Option("--exits", help="Train only these candidate exit ids.")
    ] = None,
    pretrained_backbone: Annotated[
        bool | None,
        typer.Option(
            "--pretrained-backbone/--scratch",
            help="ImageNet backbone weights (default: off; CamVid recipe: on for Lite0).",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per training step.")] = 8,
    lr: Annotated[
        float | None, typer.Option("--lr", help="Learning rate (default 0.01; CamVid 0.001).")
    ] = None,
    optimizer: Annotated[
        str | None,
        typer.Option("--optimizer", help="sgd (poly) or adamw (poly) (default sgd; CamVid adamw)."),
    ] = None,
    alpha: Annotated[
        float | None,
        typer.Option(
            "--alpha", help="Distillation weight (stage 2; default 1; CamVid recipe 0: IC-only)."
        ),
    ] = None,
    temperature: Annotated[float, typer.Option("--temperature", help="Distillation T.")] = 1.0,
    distill_class_weights: Annotated[
        bool,
        typer.Option(
            "--distill-class-weights",
            help="Weight distilled pixels by their class weight, as the CE (with --class-weighting).",
        ),
    ] = False,
    early_weight: Annotated[
        float, typer.Option("--early-weight", help="Stage-1 early exit weight.")
    ] = 1.0,
    class_weighting: Annotated[
        str | None,
        typer.Option(
            "--class-weighting",
            help="none, enet (1/ln(1.02+p)) or median (default none; CamVid enet).",
        ),
    ] = None,
    stage1_share: Annotated[
        float | None,
        typer.Option(
            "--stage1-share",
            help="Budget share of stage 1 (default: in proportion to the measured cost of the "
            "epochs each stage asks for).",
        ),
    ] = None,
    train_size: Annotated[
        int | None, typer.Option("--train-size", help="Use N training samples.")
    ] = None,
    val_size: Annotated[
        int | None, typer.Option("--val-size", help="Use N validation samples.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seeds weights, data order and augmentation.")] = 0,
    threads: Annotated[int | None, typer.Option("--threads", help="torch CPU threads.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Train an over-provisioned MESS network (stage 1, stage 2 or both) into one checkpoint."""
    from training.errors import TrainingError
    from training.recipes import recipe_for
    from training.runner import TrainRequest, run_training
    from training.train import TrainConfig

    recipe = recipe_for(data)
    size = recipe.input_size if input_size is None else parse_input_size(input_size, minimum=8)
    kind = _compute(compute, device)
    if time_budget is not None and time_budget <= 0:
        raise DseError(f"--time-budget must be > 0 minutes, got {time_budget}")
    if epochs is None:
        epochs = recipe.epochs
        if stage2_epochs is None:
            stage2_epochs = recipe.stage2_epochs
    if stage2_epochs is not None and stage2_epochs < 1:
        raise DseError(f"--stage2-epochs must be >= 1, got {stage2_epochs}")
    try:
        base = TrainConfig(
            mode="stage1", epochs=epochs, batch_size=batch_size,
            optimizer=recipe.optimizer if optimizer is None else optimizer,
            lr=recipe.lr if lr is None else lr,
            alpha=recipe.alpha if alpha is None else alpha,
            temperature=temperature, early_weight=early_weight,
            distill_class_weights=distill_class_weights,
            class_weighting=recipe.class_weighting if class_weighting is None else class_weighting,
            exits=_split_list(exits), seed=seed,
            device=kind, threads=threads,
        )  # fmt: skip
        request = TrainRequest(
            arch=arch, data=data, data_root=data_root, out=out, stage=stage, input_size=size,
            base=base, time_budget_s=None if time_budget is None else time_budget * 60.0,
            stage1_share=stage1_share, stage2_epochs=stage2_epochs, resume=resume, init=init,
            head_space=_split_list(head_space) or recipe.head_space,
            positions=_split_list(positions) or recipe.positions_for(arch),
            pretrained_backbone=recipe.pretrained_for(arch)
            if pretrained_backbone is None else pretrained_backbone,
            train_size=train_size, val_size=val_size,
        )  # fmt: skip
    except ValueError as exc:
        raise TrainingError(str(exc)) from exc
    with TrainBars(json_lines=json_output) as progress:
        outcome = run_training(request, progress=progress)
    print_training(outcome, json_output=json_output)


def print_training(outcome: Any, *, json_output: bool) -> None:
    last = {mode: records[-1] for mode, records in outcome.history.items() if records}
    if json_output:
        typer.echo(
            json.dumps(
                {
                    "event": "done",
                    "checkpoint": outcome.out,
                    "skipped": list(outcome.skipped),
                    "val_miou": {m: r.val_miou for m, r in last.items()},
                },
                sort_keys=True,
            )
        )
        return
    if not last:
        console.print(f"nothing to do: {outcome.out} already finished {', '.join(outcome.skipped)}")
        return
    for mode, record in last.items():
        table = Table("exit", "val mIoU %", title=f"{mode}: after epoch {record.epoch}")
        for exit_id, miou in record.val_miou.items():
            table.add_row(exit_id, f"{100 * miou:.2f}")
        console.print(table)
    console.print(f"checkpoint: {outcome.out}")
