"""`dse export` and `dse verify`: deploy a searched configuration and check its prediction."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from dse.cli._app import DbOption, JsonOption, app, console, err_console
from dse.errors import DseError

RunOption = Annotated[int, typer.Option("--run", help="Search run id (`dse pareto` prints it).")]
CandidateOption = Annotated[
    int, typer.Option("--candidate", help="Candidate number within the run, from 0.")
]
CheckpointOption = Annotated[
    Path | None,
    typer.Option("--checkpoint", help="Checkpoint of the run's model (its weights are checked)."),
]


@dataclass(frozen=True, kw_only=True)
class _Resolved:
    """Everything a deploy command reads from the store, and the checkpoint's network."""

    run: Any
    candidate: Any
    model: Any
    settings: dict[str, Any]
    calibration: Any
    network: Any


def _resolve(db: str, run_id: int, candidate_index: int, checkpoint: Path | None) -> _Resolved:
    """Read run, candidate, model and calibration set; load and check the checkpoint."""
    from db import repository
    from db.session import open_store, session_scope

    engine = open_store(db)
    with session_scope(engine, readonly=True) as s:
        run = repository.get_search_run(s, run_id)
        candidate = repository.get_candidate(s, run_id, candidate_index)
        model = repository.get_model(s, run.model_id)
        profile = repository.get_accuracy_profile(s, run.accuracy_profile_id)
        calibration = repository.get_calibration_set(s, profile.calibration_set_id)
    if checkpoint is None:
        # The model table keeps the weights hash, not a file path: the user names the file.
        raise DseError(
            f"give --checkpoint PATH: the file of model '{model.name}' "
            f"(weights {model.weights_sha256[:12]}) that run {run_id} was searched on"
        )
    if not checkpoint.is_file():
        raise DseError(f"checkpoint {checkpoint} does not exist; give the file `dse train` wrote")
    from training.checkpoint import load_checkpoint, weights_sha256

    network, _meta = load_checkpoint(checkpoint)
    sha = weights_sha256(network)
    if sha != model.weights_sha256:
        raise DseError(
            f"{checkpoint} holds weights {sha[:12]}, but run {run_id} was searched on model "
            f"'{model.name}' ({model.weights_sha256[:12]}); give that model's checkpoint"
        )
    return _Resolved(run=run, candidate=candidate, model=model, settings=dict(profile.settings),
                     calibration=calibration, network=network)


def _build(resolved: _Resolved) -> Any:
    from training.export import build_cascade_module

    cand, run = resolved.candidate, resolved.run
    return build_cascade_module(
        resolved.network.eval(), exits=cand.exits, th_pix=cand.th_pix, th_img=cand.th_img,
        input_size=(int(run.input_shape[-2]), int(run.input_shape[-1])),
        edge_correction=bool(resolved.settings.get("edge_correction", True)),
    )


def _metadata(resolved: _Resolved) -> dict[str, Any]:
    cand, run, model = resolved.candidate, resolved.run, resolved.model
    return {
        "run": run.id, "candidate": cand.index, "model": model.name, "arch": model.arch,
        "weights_sha256": model.weights_sha256, "device": run.device_name,
        "mode": run.mode, "exits": list(cand.exits), "th_pix": list(cand.th_pix),
        "th_img": cand.th_img,
        "edge_correction": bool(resolved.settings.get("edge_correction", True)),
        "predicted": {"miou": cand.miou, "latency_ms": cand.latency_ms,
                      "latency_p95_ms": cand.latency_p95_ms, "gflops": cand.gflops,
                      "exit_rates": dict(cand.exit_rates)},
    }


@app.command("export")
def export_command(
    run: RunOption,
    candidate: CandidateOption,
    fmt: Annotated[
        str, typer.Option("--format", help="torchscript | onnx | state-dict")
    ] = "torchscript",
    out: Annotated[Path | None, typer.Option("--out", help="File (folder for onnx) to write.")]
    = None,
    checkpoint: CheckpointOption = None,
    db: DbOption = "sqlite:///mess.db",
    json_output: JsonOption = False,
) -> None:
    """Write a searched configuration as a deployable early-exit model."""
    from training.export import FORMATS

    if fmt not in FORMATS:
        raise DseError(f"unknown --format {fmt!r}; use one of {', '.join(FORMATS)}")
    if out is None:
        raise DseError("give --out PATH: where to write the exported model")
    if out.exists():
        raise DseError(f"{out} already exists; choose another --out or remove it")
    if fmt == "onnx":
        from training._onnx_export import check_onnx_available

        check_onnx_available()
    resolved = _resolve(db, run, candidate, checkpoint)
    import torch

    from training.export import export_cascade

    module = _build(resolved)
    h, w = (int(v) for v in resolved.run.input_shape[-2:])
    example = torch.zeros(1, 3, h, w)
    written = export_cascade(module, fmt=fmt, out=out, metadata=_metadata(resolved),
                             example=example)
    if json_output:
        print(json.dumps({"run": run, "candidate": candidate, "format": fmt,
                          "files": [str(p) for p in written],
                          "exits": list(resolved.candidate.exits)}))
        return
    console.print(f"exported run {run} candidate {candidate} ({fmt}): "
                  f"{' -> '.join(resolved.candidate.exits)}")
    for path in written:
        console.print(f"  {path}")


def _check_device(fingerprint: dict[str, Any], here: dict[str, Any], *, device_name: str,
                  force: bool) -> list[str]:
    """Refuse to compare latencies measured on another machine (unless forced)."""
    differs = sorted(k for k in set(fingerprint) | set(here)
                     if fingerprint.get(k) != here.get(k))
    if differs and not force:
        raise DseError(
            f"this machine is not device '{device_name}' of the run (differs in: "
            f"{', '.join(differs)}); run `dse profile --device NAME` here and search again, "
            "or pass --force"
        )
    if differs:
        return [f"--force: this machine differs from '{device_name}' in {', '.join(differs)}; "
                "the latency comparison is meaningless"]
    return []


def _dataset(resolved: _Resolved, data: str | None, data_root: Path | None,
             split: str | None, limit: int | None) -> tuple[Any, bool]:
    """The split to run and whether it is exactly the calibration set of the prediction."""
    from training.data import build_dataset
    from training.errors import TrainingError

    calib = resolved.calibration
    name = data or calib.dataset
    split = split or (calib.split if name == calib.dataset else "val")
    h, w = (int(v) for v in resolved.run.input_shape[-2:])
    same_source = name == calib.dataset and split == calib.split
    size = limit if limit is not None else (calib.num_samples if same_source else None)
    try:
        dataset = build_dataset(name, root=data_root, split=split, input_size=(h, w), size=size)
    except (ValueError, TrainingError) as exc:
        raise DseError(f"cannot read --data {name} --split {split}: {exc}") from exc
    same = same_source and list(dataset.sample_ids) == list(calib.sample_ids)
    if same_source and not same and limit is None:
        raise DseError(
            f"{name}/{split} here does not hold the {calib.num_samples} calibration images the "
            "run was profiled on; check --data-root"
        )
    return dataset, same


@app.command("verify")
def verify_command(
    run: RunOption,
    candidate: CandidateOption,
    checkpoint: CheckpointOption = None,
    data: Annotated[str | None, typer.Option("--data", help="Dataset (default: calibration).")]
    = None,
    data_root: Annotated[Path | None, typer.Option("--data-root", help="Dataset folder.")] = None,
    split: Annotated[str | None, typer.Option("--split", help="Split (default: calibration).")]
    = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="First N images only.")]
    = None,
    repeat: Annotated[int, typer.Option("--repeat", min=1, help="Timed runs per image.")] = 5,
    force: Annotated[bool, typer.Option("--force", help="Run on another device anyway.")]
    = False,
    db: DbOption = "sqlite:///mess.db",
    json_output: JsonOption = False,
) -> None:
    """Run a searched configuration for real and compare with its prediction."""
    resolved = _resolve(db, run, candidate, checkpoint)
    import torch

    from profiling.device import DTYPES, device_fingerprint, resolve_device
    from profiling.timing import TimingSettings
    from profiling.verify import Prediction, compare, measure_cascade

    fingerprint = dict(resolved.run.device_fingerprint)
    device = resolve_device(str(fingerprint.get("compute", "cpu")))
    dtype = DTYPES.get(str(fingerprint.get("dtype", "float32")), torch.float32)
    threads = int(fingerprint.get("threads") or 1)
    here = device_fingerprint(device, dtype=dtype, threads=threads)
    notes = _check_device(fingerprint, here, device_name=resolved.run.device_name, force=force)
    dataset, same = _dataset(resolved, data, data_root, split, limit)
    module = _build(resolved).to(device=device, dtype=dtype)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        from rich.progress import Progress

        with Progress(console=err_console, transient=True, disable=json_output) as bar:
            task = bar.add_task("verifying", total=len(dataset))
            measured = measure_cascade(
                module, dataset, exit_ids=module.exit_ids,
                num_classes=int(resolved.network.num_classes), device=device, dtype=dtype,
                dataset_name=dataset.name, split=dataset.split,
                device_name=resolved.run.device_name,
                timing=TimingSettings(warmup=0, repeat=repeat),
                progress=lambda done, _total: bar.update(task, completed=done),
            )
    finally:
        torch.set_num_threads(previous)
    predicted = Prediction.from_candidate(resolved.candidate)
    result = compare(predicted, measured, same_images=same)
    _store(db, resolved, result)
    for note in notes:
        err_console.print(f"warning: {note}", markup=False, highlight=False, soft_wrap=True)
    if json_output:
        print(json.dumps({"run": run, "candidate": candidate, **result.to_dict()}))
        return
    _print_report(run, candidate, result)


def _store(db: str, resolved: _Resolved, result: Any) -> None:
    from db import repository
    from db.session import open_store, session_scope

    engine = open_store(db)
    with session_scope(engine) as s:
        repository.add_verification(
            s, run_id=resolved.run.id, candidate_index=resolved.candidate.index,
            device_id=resolved.run.device_id, dataset=result.measured.dataset,
            split=result.measured.split, predicted=result.predicted.to_dict(),
            measured={**result.measured.to_dict(), "same_images": result.same_images,
                      "miou_ok": result.miou_ok, "exits_ok": result.exits_ok,
                      "latency_ok": result.latency_ok},
        )


def _verdict(ok: bool | None) -> str:
    return {True: "[green]ok[/]", False: "[red]off[/]", None: "-"}[ok]


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
    if not result.same_images:
        console.print("mIoU and exit rates are not expected to match on another split: "
                      "the difference shows how well the configuration generalises.")
