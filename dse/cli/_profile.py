"""`dse profile`: the accuracy profile (once per model and data) and the latency profile (here).

Everything the user could get wrong (checkpoint, input size, data, CUDA) is checked before the
store is opened, so a mistake leaves nothing written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from dse.cli._app import (
    DEFAULT_DB,
    DbOption,
    JsonOption,
    app,
    console,
    err_console,
    parse_input_size,
)
from dse.errors import DseError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from training.network import MessNetwork



def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[step]}"), TimeRemainingColumn(elapsed_when_finished=True),
        console=err_console, transient=False,
    )


def _register_model(engine: Engine, network: MessNetwork, name: str,
                    input_size: tuple[int, int]) -> tuple[int, dict[tuple[str, str], Any]]:
    """Model and exit rows (head GFLOPs/params at this input shape); returns id and costs."""
    from db import repository
    from db.records import ExitInput
    from db.session import session_scope
    from training.checkpoint import describe_network, weights_sha256

    costs = {(c.kind, c.name): c for c in network.components(input_size)}
    shape = (1, 3, *input_size)
    exits = [
        ExitInput(exit_id=e.id, position=e.position, position_index=network.position_of(e.id).index,
                  head={"id": e.head.id, "crm": e.head.crm, "blocks": e.head.blocks,
                        "rdi": e.head.rdi, "kind": e.head.kind},
                  params=costs[("head", e.id)].params, gflops=costs[("head", e.id)].gflops,
                  input_shape=shape)
        for e in network.exits
    ]
    final = costs[("final", "final")]
    exits.append(ExitInput(exit_id="final", position="tail", position_index=len(network.positions),
                           head={"id": "final"}, params=final.params, gflops=final.gflops,
                           input_shape=shape))
    with session_scope(engine) as s:
        model = repository.upsert_model(
            s, name=name, arch=network.arch, architecture=describe_network(network),
            weights_sha256=weights_sha256(network), num_classes=network.num_classes,
        )
        repository.upsert_exits(s, model.id, exits)
    return model.id, costs


def _summary_rows(network: MessNetwork, costs: dict[tuple[str, str], Any],
                  summaries: dict[str, Any], p50: dict[tuple[str, str], float]) -> list[dict]:
    """Per exit: mIoU, path GFLOPs and path p50 ms (backbone to the exit + head + decision +
    the upsampling of its logits to the input size)."""
    rows = []
    names = [p.name for p in network.positions]
    for exit_id in (*network.exit_ids, "final"):
        if exit_id == "final":
            parts = [("segment", n) for n in [*names, "tail"]] + [("final", "final")]
            position = "tail"
        else:
            position = network.position_of(exit_id).name
            upto = names[: names.index(position) + 1]
            parts = [("segment", n) for n in upto] + [("head", exit_id), ("decision", exit_id)]
        parts.append(("upsample", exit_id))
        summary = summaries.get(exit_id)
        rows.append({
            "exit": exit_id, "position": position,
            "miou": summary.miou if summary is not None else None,
            "gflops": sum(costs[k].gflops for k in parts),
            "p50_ms": sum(p50[k] for k in parts) if all(k in p50 for k in parts) else None,
        })
    return rows


def _print_table(rows: list[dict], device: str) -> None:
    table = Table(title=f"exits (path cost from the input; latency on {device})")
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
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Checkpoint from `dse train`.")],
    device: Annotated[str, typer.Option("--device", help="Name of this machine (e.g. laptop-cpu, jetson).")],
    data: Annotated[str | None, typer.Option("--data", help="Calibration dataset (default: the checkpoint's).")] = None,
    data_root: Annotated[str | None, typer.Option("--data-root", help="Dataset folder.")] = None,
    split: Annotated[str, typer.Option("--split", help="Calibration split or selection: val, 'val[::2]', ...")] = "val",
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Use the first N images (synthetic: how many).")] = None,
    input_size: Annotated[str | None, typer.Option("--input-size", help="HxW (default: the checkpoint's).")] = None,
    accuracy: Annotated[bool, typer.Option("--accuracy/--no-accuracy", help="Accuracy profile when missing.")] = True,
    latency: Annotated[bool, typer.Option("--latency/--no-latency", help="Latency profile on this machine.")] = True,
    compute: Annotated[str, typer.Option("--compute", help="Run on cpu or cuda.")] = "cpu",
    dtype: Annotated[str, typer.Option("--dtype", help="float32, or float16 on CUDA.")] = "float32",
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="Torch threads (default: torch's).")] = None,
    repeat: Annotated[int, typer.Option("--repeat", min=1, help="Timed runs per component.")] = 20,
    min_time: Annotated[float, typer.Option("--min-time", min=0.0, help="At least this many seconds per component.")] = 0.0,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed runs first.")] = 3,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Batch size of the latency profile.")] = 1,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward in the accuracy pass.")] = 8,
    name: Annotated[str | None, typer.Option("--name", help="Model name in the store (default: checkpoint file name).")] = None,
    db: DbOption = DEFAULT_DB,
    json_output: JsonOption = False,
) -> None:
    """Profile a checkpoint: accuracy on a calibration split, then latency on this machine."""
    if not accuracy and not latency:
        raise DseError("nothing to do: --no-accuracy and --no-latency together; drop one")
    import torch

    from db.session import open_store
    from profiling.accuracy import AccuracySettings, check_compatible, profile_accuracy
    from profiling.device import resolve_device, resolve_dtype
    from profiling.latency import LatencySettings, check_input_size, profile_latency
    from profiling.timing import TimingSettings
    from training.checkpoint import load_checkpoint

    network, meta = load_checkpoint(checkpoint)
    h, w = parse_input_size(input_size) if input_size else meta["input_size"]
    size = (int(h), int(w))
    torch_device = resolve_device(compute)
    torch_dtype = resolve_dtype(dtype, torch_device)
    check_input_size(network, size, torch.device("cpu"))
    dataset = None
    if accuracy:
        from training.data import build_dataset

        dataset = build_dataset(data or str(meta["dataset"]), root=data_root, split=split,
                                input_size=size, size=limit)
        check_compatible(network, dataset)
    timing = TimingSettings(warmup=warmup, repeat=repeat, min_time_s=min_time)
    lat_settings = LatencySettings(batch=batch, dtype=torch_dtype, timing=timing,
                                   threads=threads or torch.get_num_threads())

    engine = open_store(db, create=True)
    try:
        model_id, costs = _register_model(engine, network, name or checkpoint.stem, size)
        summaries: dict[str, Any] = {}
        measured_images: int | None = None
        lat = None
        with _progress() as bars:
            if dataset is not None:
                task = bars.add_task("accuracy", total=len(dataset), step="images")
                result = profile_accuracy(
                    engine, network, dataset, model_id=model_id, device=torch_device,
                    settings=AccuracySettings(batch_size=batch_size),
                    progress=lambda done, total: bars.update(task, completed=done, total=total),
                )
                summaries, measured_images = result.summaries, result.measured_samples
            else:
                summaries = _stored_summaries(engine, model_id)
            if latency:
                task = bars.add_task("latency", total=None, step="")
                lat = profile_latency(
                    engine, network, model_id=model_id, device_name=device, input_size=size,
                    device=torch_device, settings=lat_settings,
                    progress=lambda done, total, step: bars.update(
                        task, completed=done, total=total, step=step[-40:]),
                )
                steps = len(lat.measured) + len(lat.paths)
                bars.update(task, completed=steps, total=steps, step="done")
        p50 = _stored_p50(engine, model_id, lat, (batch, 3, *size), lat_settings) if lat else {}
    finally:
        engine.dispose()
    for warning in lat.warnings if lat else ():
        err_console.print(f"warning: {warning}", markup=False, highlight=False, soft_wrap=True)
    rows = _summary_rows(network, costs, summaries, p50)
    _report(rows, lat, device, json_output, accuracy_measured=measured_images)


def _stored_summaries(engine: Engine, model_id: int) -> dict[str, Any]:
    """Summaries of the newest complete accuracy profile of the model, if any (for the table)."""
    from db import repository
    from db.session import session_scope

    with session_scope(engine) as s:
        profiles = repository.find_accuracy_profiles(s, model_id, complete_only=True)
    return dict(profiles[0].summaries) if profiles else {}


def _stored_p50(engine: Engine, model_id: int, lat: Any, shape: tuple[int, ...],
                settings: Any) -> dict[tuple[str, str], float]:
    from db import repository
    from db.session import session_scope

    with session_scope(engine) as s:
        rows = repository.load_latency(s, model_id=model_id, device_id=lat.device.id,
                                       input_shape=shape, batch=settings.batch,
                                       dtype=settings.dtype_name)
    return {(r.kind, r.name): r.p50_ms for r in rows}


def _report(rows: list[dict], lat: Any, device: str, json_output: bool, *,
            accuracy_measured: int | None) -> None:
    paths = [
        {"path": c.name, "taken": c.taken, "measured_ms": c.measured.mean_ms,
         "predicted_ms": c.predicted_ms, "deviation": c.deviation}
        for c in (lat.paths if lat else ())
    ]
    if json_output:
        typer.echo(json.dumps({
            "device": device, "accuracy_measured_images": accuracy_measured,
            "latency_measured": len(lat.measured) if lat else None,
            "latency_skipped": len(lat.skipped) if lat else None,
        }, sort_keys=True))
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
    _print_table(rows, device)
    if paths:
        table = Table(title="closed loop: real cascade vs sum of components (mean ms)")
        for col in ("path", "measured", "predicted", "deviation"):
            table.add_column(col, justify="left" if col == "path" else "right")
        for p in paths:
            table.add_row(p["path"], f"{p['measured_ms']:.3f}", f"{p['predicted_ms']:.3f}",
                          f"{100 * p['deviation']:+.1f}%")
        console.print(table)
