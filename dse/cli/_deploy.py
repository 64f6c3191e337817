"""`dse export` and `dse verify`: deploy a searched configuration and check its prediction."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from dse.cli._app import (
    ArchTrustOption,
    ComputeOption,
    DbOption,
    JsonOption,
    app,
    console,
    err_console,
    refuse_empty,
    step_progress,
)

RunOption = Annotated[int, typer.Option("--run", help="Search run id (`dse pareto` prints it).")]
CandidateOption = Annotated[
    int, typer.Option("--candidate", help="Candidate number within the run, from 0.")
]
CheckpointOption = Annotated[
    Path | None,
    typer.Option("--checkpoint", help="Checkpoint of the run's model (its weights are checked)."),
]


@app.command("export")
def export_command(
    run: RunOption,
    candidate: CandidateOption,
    fmt: Annotated[
        Literal["torchscript", "onnx", "state-dict"],
        typer.Option("--format", help="One TorchScript file, a folder of ONNX graphs with a "
                     "numpy runner, or the pruned module's state dict."),
    ] = "torchscript",
    out: Annotated[Path | None, typer.Option("--out", help="File (folder for onnx) to write.")]
    = None,
    checkpoint: CheckpointOption = None,
    arch_trust: ArchTrustOption = None,
    compute: ComputeOption = "cpu",
    db: DbOption = "sqlite:///mess.db",
    json_output: JsonOption = False,
) -> None:
    """Write a searched configuration as a deployable early-exit model."""
    from profiling.deploy import ExportRequest, run_export

    outcome = run_export(db, ExportRequest(run=run, candidate=candidate, checkpoint=checkpoint,
                                           fmt=fmt, out=out, compute=compute,
                                           arch_trust=arch_trust))
    if json_output:
        print(json.dumps({"run": run, "candidate": candidate, "format": fmt,
                          "files": [str(p) for p in outcome.files],
                          "exits": list(outcome.exits)}))
        return
    console.print(f"exported run {run} candidate {candidate} ({fmt}): "
                  f"{' -> '.join(outcome.exits)}")
    for path in outcome.files:
        console.print(f"  {path}")


@app.command("verify")
def verify_command(
    run: RunOption,
    candidate: CandidateOption,
    checkpoint: CheckpointOption = None,
    arch_trust: ArchTrustOption = None,
    data: Annotated[str | None, typer.Option("--data", help="Dataset (default: calibration).")]
    = None,
    data_root: Annotated[Path | None, typer.Option("--data-root", help="Dataset folder.")] = None,
    split: Annotated[str | None, typer.Option("--split", help="Split (default: calibration).")]
    = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="First N images only.")]
    = None,
    repeat: Annotated[int, typer.Option("--repeat", min=1, max=100_000, help="Timed rounds over the images (each image once per round).")] = 5,
    force: Annotated[bool, typer.Option("--force", help="Run on another device anyway.")]
    = False,
    compute: Annotated[
        str | None,
        typer.Option("--compute", help="Torch device: cpu or cuda[:N] (default: the run's)."),
    ] = None,
    runtime: Annotated[
        str | None,
        typer.Option("--runtime", help="torch or onnxruntime (default: the run's device's)."),
    ] = None,
    db: DbOption = "sqlite:///mess.db",
    json_output: JsonOption = False,
) -> None:
    """Run a searched configuration for real and compare with its prediction."""
    from profiling.deploy import VerifyRequest, run_verify

    refuse_empty(data=data, data_root=None if data_root is None else str(data_root), split=split,
                 arch_trust=arch_trust)
    request = VerifyRequest(run=run, candidate=candidate, checkpoint=checkpoint, data=data,
                            data_root=data_root, split=split, limit=limit, repeat=repeat,
                            force=force, compute=compute, runtime=runtime,
                            arch_trust=arch_trust)
    with step_progress("verifying", disable=json_output) as bar:
        outcome = run_verify(db, request, progress=bar)
    for note in outcome.warnings:
        err_console.print(f"warning: {note}", markup=False, highlight=False, soft_wrap=True)
    if json_output:
        extra = ({} if outcome.latency_prediction is None
                 else {"latency_prediction": outcome.latency_prediction})
        if outcome.speed_check is not None:
            extra["speed_check"] = outcome.speed_check.to_dict(outcome.comparison)
        print(json.dumps({"run": run, "candidate": candidate, **outcome.comparison.to_dict(),
                          **extra}))
        return
    _print_report(run, candidate, outcome.comparison)
    speed = outcome.speed_check
    if speed is not None:
        console.print(f"speed check: the final-exit-only network measured {speed.measured_ms:.3f} "
                      f"ms on {speed.n_images} image(s) against {speed.predicted_ms:.3f} ms "
                      f"predicted ({speed.ratio - 1:+.1%}); the latency error without this "
                      f"machine's change of speed: {speed.adjusted_error(outcome.comparison):+.1%}",
                      soft_wrap=True)


def _verdict(ok: bool | None) -> Any:
    from rich.text import Text

    return {True: Text("ok", style="green"), False: Text("off", style="red"), None: Text("-")}[ok]


def _print_report(run: int, candidate: int, result: Any) -> None:
    from rich.table import Table

    p, m = result.predicted, result.measured
    where = "calibration images" if result.same_images else "another split"
    table = Table(title=f"run {run} candidate {candidate}: predicted vs measured "
                        f"({m.n_images} images of {m.dataset}/{m.split}, {where})")
    for column in ("", "predicted", "measured", "difference", "check"):
        table.add_column(column, justify="right" if column else "left")
    table.add_row("mIoU %", f"{p.miou * 100:.3f}", f"{m.miou * 100:.3f}",
                  f"{result.miou_diff_pp:+.4f} pp", _verdict(result.miou_ok))
    table.add_row("latency ms (mean)", f"{p.latency_ms:.3f}", f"{m.latency_ms:.3f}",
                  f"{result.latency_error * 100:+.1f}%", _verdict(result.latency_ok))
    table.add_row("latency ms (p95)", f"{p.latency_p95_ms:.3f}", f"{m.latency_p95_ms:.3f}",
                  "", "")
    for exit_id, diff in result.exit_count_diff.items():
        table.add_row(f"images at {exit_id}", str(result.predicted_exit_counts.get(exit_id, 0)),
                      str(m.exit_counts.get(exit_id, 0)), f"{diff:+d}",
                      _verdict(result.exits_ok))
    console.print(table)
    load = m.load or {}
    console.print(f"timing: interleaved rounds over the images, median per image; spread "
                  f"(IQR / median) {m.latency_spread:.1%} median, {m.latency_max_spread:.1%} "
                  f"largest, {m.latency_unstable} unstable image(s); other processes used "
                  f"{load.get('other_cores', 0.0):.2f} core(s)"
                  + (f", load average {load['load_1m']:.2f}" if load.get("load_1m") else ""))
    if not result.same_images:
        console.print("mIoU and exit rates are not expected to match on another split: "
                      "the difference shows how well the configuration generalises.")
