"""`dse profile`: the accuracy profile (once per model and data) and the latency profile (here).

The work is `profiling.run.run_profile`; this module parses the options and prints the outcome.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from dse.cli._app import (
    DEFAULT_DB,
    ArchTrustOption,
    ComputeOption,
    DbOption,
    JsonOption,
    app,
    check_user_name,
    console,
    err_console,
    parse_input_size,
    plain_column,
    refuse_empty,
)
from dse.errors import DseError

if TYPE_CHECKING:
    from profiling.run import ProfileOutcome


def _progress() -> Progress:
    return Progress(
        plain_column("{task.description}"), BarColumn(), MofNCompleteColumn(),
        plain_column("{task.fields[step]}"), TimeRemainingColumn(elapsed_when_finished=True),
        console=err_console, transient=False,
    )


def _print_table(rows: list[dict], device: str, note: str = "") -> None:
    table = Table(title=f"exits (path cost from the input; latency on {device}{note})")
    for col in ("exit", "mIoU", "GFLOPs", "p50 ms"):
        table.add_column(col, justify="left" if col == "exit" else "right")
    for r in rows:
        table.add_row(
            r["exit"], "-" if r["miou"] is None else f"{100 * r['miou']:.2f}%",
            f"{r['gflops']:.3f}", "-" if r["p50_ms"] is None else f"{r['p50_ms']:.3f}",
        )
    console.print(table)


@app.command("profile")
def profile_command(
    device: Annotated[str, typer.Option("--device", help="Name of this machine (e.g. laptop-cpu, jetson).")],
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", help="Checkpoint from `dse train`.")] = None,
    data: Annotated[str | None, typer.Option("--data", help="Calibration dataset (default: the checkpoint's).")] = None,
    data_root: Annotated[str | None, typer.Option("--data-root", help="Dataset folder.")] = None,
    split: Annotated[str, typer.Option("--split", help="Calibration split or selection: val, 'val[::2]', ...")] = "val",
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Use the first N images (synthetic: how many).")] = None,
    input_size: Annotated[str | None, typer.Option("--input-size", help="HxW (default: the checkpoint's).")] = None,
    accuracy: Annotated[bool, typer.Option("--accuracy/--no-accuracy", help="Accuracy profile when missing.")] = True,
    latency: Annotated[bool, typer.Option("--latency/--no-latency", help="Latency profile on this machine.")] = True,
    compute: ComputeOption = "cpu",
    dtype: Annotated[str, typer.Option("--dtype", help="float32, or float16 on CUDA.")] = "float32",
    threads: Annotated[int | None, typer.Option("--threads", min=1, max=1024, help="Torch (or ONNX Runtime intra-op) threads (default: torch's).")] = None,
    repeat: Annotated[int, typer.Option("--repeat", max=100_000, help="Timed rounds (every component once per round, in cascade order).")] = 20,
    min_time: Annotated[float, typer.Option("--min-time", max=3600.0, help="Keep taking rounds until their timed work adds up to this many seconds.")] = 0.0,
    warmup: Annotated[int, typer.Option("--warmup", max=10_000, help="Untimed rounds first.")] = 3,
    stability: Annotated[float, typer.Option("--stability-threshold", help="Largest allowed spread of a component's runs, IQR / median, in (0, 1).")] = 0.10,
    remeasure: Annotated[int, typer.Option("--remeasure", max=100, help="Extra passes over unstable components before giving up.")] = 2,
    keep_noisy: Annotated[bool, typer.Option("--keep-noisy", help="Store a run that failed its stability or closed-loop checks, marked noisy, instead of refusing it.")] = False,
    batch: Annotated[int, typer.Option("--batch", min=1, max=1024, help="Batch size of the latency profile.")] = 1,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=1024, help="Images per forward in the accuracy pass.")] = 8,
    name: Annotated[str | None, typer.Option("--name", help="Model name in the store (default: checkpoint file name).")] = None,
    runtime: Annotated[str, typer.Option(
        "--runtime", help="torch (eager) or onnxruntime (every component as ONNX).")] = "torch",
    optimization: Annotated[str, typer.Option(
        "--optimization", help="ONNX Runtime graph optimisation: disable|basic|extended|all.")] = "all",
    provider: Annotated[str, typer.Option(
        "--provider", help="ONNX Runtime execution provider.")] = "CPUExecutionProvider",
    import_results: Annotated[Path | None, typer.Option(
        "--import", help="Store the results file a probe pack's probe.py wrote on a device.")] = None,
    pack: Annotated[Path | None, typer.Option(
        "--pack", help="With --import: the pack folder (default: the one holding RESULTS).")] = None,
    few_shot: Annotated[int | None, typer.Option(
        "--few-shot", help="Measure only K components here and predict the rest from the "
                           "--reference devices' full profiles.")] = None,
    reference: Annotated[str | None, typer.Option(
        "--reference", help="With --few-shot (or --import of a few-shot pack): devices whose "
                            "full profiles predict the rest, comma-separated.")] = None,
    allow_cross_runtime: Annotated[bool, typer.Option(
        "--allow-cross-runtime", help="Let a reference profiled with another runtime predict "
                                      "this one.")] = False,
    arch_trust: ArchTrustOption = None,
    db: DbOption = DEFAULT_DB,
    json_output: JsonOption = False,
) -> None:
    """Profile a checkpoint: accuracy on a calibration split, then latency on this machine."""
    refuse_empty(data=data, data_root=data_root, input_size=input_size, arch_trust=arch_trust,
                 reference=reference)
    # Names go into the store and onto every table: checked at the door, before any work.
    check_user_name(device, "--device")
    references = parse_references(reference, allow_cross_runtime=allow_cross_runtime)
    if import_results is not None:
        if checkpoint is not None:
            raise DseError("--import stores a probe's results and takes no --checkpoint "
                           "(the pack names the model); drop one")
        if few_shot is not None:
            raise DseError("--import stores what the pack timed: choose the components with "
                           "`dse probe-pack --few-shot K --reference DEV`, then import with "
                           "--reference DEV (no --few-shot)")
        from dse.cli._probe import import_probe

        timing_settings(warmup=warmup, repeat=repeat, min_time=min_time, stability=stability,
                        remeasure=remeasure)  # a bad --stability-threshold: one line, first
        import_probe(import_results, pack, device, db, json_output, keep_noisy=keep_noisy,
                     threshold=stability, references=references,
                     allow_cross_runtime=allow_cross_runtime)
        return
    few = few_shot_request(few_shot, references, allow_cross_runtime=allow_cross_runtime)
    if pack is not None:
        raise DseError("--pack goes with --import RESULTS")
    if checkpoint is None:
        raise DseError("give --checkpoint CKPT (or --import RESULTS for a probe's results)")
    check_user_name(name if name is not None else checkpoint.stem,
                    "--name (default: the checkpoint's file name)")
    from profiling.run import RUNTIMES, ProfileRequest, run_profile

    if runtime not in RUNTIMES:
        raise DseError(f"unknown --runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")

    request = ProfileRequest(
        checkpoint=checkpoint, device=device, data=data, data_root=data_root, split=split,
        limit=limit, input_size=parse_input_size(input_size) if input_size else None,
        accuracy=accuracy, latency=latency, compute=compute, dtype=dtype, threads=threads,
        timing=timing_settings(warmup=warmup, repeat=repeat, min_time=min_time,
                               stability=stability, remeasure=remeasure),
        batch=batch, batch_size=batch_size, name=name, keep_noisy=keep_noisy,
        runtime=runtime, optimization=optimization, provider=provider,
        arch_trust=arch_trust, few_shot=few,
    )
    with ProfileBars() as bars:
        outcome = run_profile(db, request, progress=bars.advance, warn=_warn)
    print_profile(outcome, json_output=json_output)


def parse_references(text: str | None, *, allow_cross_runtime: bool) -> tuple[str, ...]:
    """`--reference A,B` -> ("A", "B"), each a valid device name; () when not given."""
    if text is None:
        if allow_cross_runtime:
            raise DseError("--allow-cross-runtime goes with --reference DEV[,DEV...]")
        return ()
    names = tuple(n.strip() for n in text.split(","))
    if not all(names):
        raise DseError(f"--reference {text!r} has an empty name; give DEV[,DEV...]")
    if len(set(names)) != len(names):
        raise DseError(f"--reference {text!r} names a device twice")
    for name in names:
        if not name.isdigit():  # a device id names one setup of a device
            check_user_name(name, "--reference")
    return names


def few_shot_request(k: int | None, references: tuple[str, ...], *,
                     allow_cross_runtime: bool) -> Any:
    """The few-shot part of a request (None: a full profile); a bad combination is one line."""
    if k is None:
        if references:
            raise DseError("--reference goes with --few-shot K (or with --import RESULTS of a "
                           "few-shot pack); add --few-shot K or drop --reference")
        return None
    if k < 1:
        raise DseError(f"--few-shot K is the number of components to measure here: at least "
                       f"1, got {k}")
    if not references:
        raise DseError("--few-shot K needs --reference DEV[,DEV...]: the devices whose full "
                       "profiles of this model predict the components not measured here")
    from profiling.fewshot_profile import FewShot

    return FewShot(k=k, references=references, allow_cross_runtime=allow_cross_runtime)


_TIMING_OPTIONS = {"warmup": "--warmup", "repeat": "--repeat", "min_time_s": "--min-time",
                   "threshold": "--stability-threshold", "max_remeasure": "--remeasure"}


def timing_settings(*, warmup: int, repeat: int, min_time: float, stability: float,
                    remeasure: int) -> Any:
    """The protocol's settings from the options; a bad value is one line naming the option."""
    from profiling.timing import TimingSettings

    given: dict[str, Any] = {"warmup": warmup, "repeat": repeat, "min_time_s": min_time,
                             "threshold": stability, "max_remeasure": remeasure}
    try:
        return TimingSettings(**given)
    except ValueError as exc:
        field, _, why = str(exc).partition(":")
        field = field.strip()
        raise DseError(f"{_TIMING_OPTIONS.get(field, field)}:{why} (got {given.get(field)})"
                       ) from exc


class ProfileBars:
    """One bar per pass, shown from the first report on (a refused request draws none)."""

    def __init__(self) -> None:
        self._bars: Progress | None = None
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> ProfileBars:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bars is not None:
            self._bars.stop()

    def advance(self, stage: str, done: int, total: int | None, step: str) -> None:
        if self._bars is None:
            self._bars = _progress()
            self._bars.start()
        if stage not in self._tasks:
            self._tasks[stage] = self._bars.add_task(stage, total=total, step=step)
        self._bars.update(self._tasks[stage], completed=done, total=total, step=step[-40:])


def _warn(text: str) -> None:
    err_console.print(f"warning: {text}", markup=False, highlight=False, soft_wrap=True)


def print_profile(outcome: ProfileOutcome, *, json_output: bool) -> None:
    """Warnings on stderr, then the summary: JSON lines or tables."""
    lat = outcome.latency
    for warning in lat.warnings if lat else ():
        err_console.print(f"warning: {warning}", markup=False, highlight=False, soft_wrap=True)
    if lat is not None and lat.verdict is not None and lat.verdict.ok and not json_output:
        console.print(lat.verdict.line(what="latency measurement"))
    measured = outcome.accuracy.measured_samples if outcome.accuracy else None
    _report([r.as_dict() for r in outcome.rows], lat, outcome.device, json_output,
            accuracy_measured=measured, few_shot=outcome.few_shot)


def _report(rows: list[dict], lat: Any, device: str, json_output: bool, *,
            accuracy_measured: int | None, few_shot: Any = None) -> None:
    paths = [
        {"path": c.name, "taken": c.taken, "measured_ms": c.measured.p50_ms,
         "predicted_ms": c.predicted_ms, "deviation": c.deviation}
        for c in (lat.paths if lat else ())
    ]
    if json_output:
        typer.echo(json.dumps({
            "device": device, "accuracy_measured_images": accuracy_measured,
            "latency_measured": len(lat.measured) if lat else None,
            "latency_skipped": len(lat.skipped) if lat else None,
            "latency_quality": None if lat is None or lat.verdict is None else {
                "ok": lat.verdict.ok, "line": lat.verdict.line(), **lat.verdict.quality},
            "few_shot": None if few_shot is None else few_shot.as_dict(),
        }, sort_keys=True, default=str))
        for row in rows:
            typer.echo(json.dumps({"device": device, **row}, sort_keys=True))
        for path in paths:
            typer.echo(json.dumps({"device": device, "closed_loop": path}, sort_keys=True))
        return
    if accuracy_measured is not None:
        console.print(f"accuracy: measured {accuracy_measured} image(s) now")
    if lat is not None:
        console.print(f"latency on {device} (device id {lat.device.id}): measured "
                      f"{len(lat.measured)} component(s), {len(lat.skipped)} already stored")
    if few_shot is not None:
        console.print(few_shot.line(device), markup=False, highlight=False, soft_wrap=True)
    _print_table(rows, device, "" if few_shot is None or not few_shot.predicted else
                 f", {len(few_shot.predicted)} component(s) predicted")
    if paths:
        table = Table(title="closed loop: real cascade vs sum of components (median ms)")
        for col in ("path", "measured", "predicted", "deviation"):
            table.add_column(col, justify="left" if col == "path" else "right")
        for p in paths:
            table.add_row(p["path"], f"{p['measured_ms']:.3f}", f"{p['predicted_ms']:.3f}",
                          f"{100 * p['deviation']:+.1f}%")
        console.print(table)
