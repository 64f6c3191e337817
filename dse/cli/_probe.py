"""`dse probe-pack` and `dse profile --import`: profile a device that cannot install mess-dse.

The pack is checked and written by profiling.probe_pack; here we parse, call and print.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dse.cli._app import (
    DEFAULT_DB,
    DbOption,
    JsonOption,
    app,
    console,
    err_console,
    parse_input_size,
    refuse_empty,
)
from dse.errors import DseError


@app.command("probe-pack")
def probe_pack_command(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Checkpoint from `dse train`.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to create for the pack.")],
    input_size: Annotated[str | None, typer.Option("--input-size", help="HxW (default: the checkpoint's).")] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Images per run.")] = 1,
    components: Annotated[str | None, typer.Option(
        "--components", help="Comma-separated KIND:NAME components to time (default: all); "
                             "the producers of their inputs are added.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Model name in the store (default: checkpoint file name).")] = None,
    few_shot: Annotated[int | None, typer.Option(
        "--few-shot", help="Time only K components, chosen from the --reference devices' "
                           "full profiles (import the results with --reference).")] = None,
    reference: Annotated[str | None, typer.Option(
        "--reference", help="With --few-shot: devices with a full profile of this model, "
                            "comma-separated.")] = None,
    allow_cross_runtime: Annotated[bool, typer.Option(
        "--allow-cross-runtime", help="Let a reference profiled with torch choose for the "
                                      "ONNX Runtime probe.")] = False,
    db: DbOption = DEFAULT_DB,
    json_output: JsonOption = False,
) -> None:
    """Write every component as ONNX plus probe.py (numpy + onnxruntime only) for a device."""
    from dse.cli._profile import few_shot_request, parse_references

    refuse_empty(reference=reference)
    few = few_shot_request(few_shot, parse_references(
        reference, allow_cross_runtime=allow_cross_runtime),
        allow_cross_runtime=allow_cross_runtime)
    if few is not None and components is not None:
        raise DseError("--few-shot chooses the components; drop --components or --few-shot")
    if out.exists():
        raise DseError(f"{out} already exists; choose another --out or remove it")
    if not out.parent.is_dir():
        raise DseError(f"folder {out.parent} does not exist; create it first")
    if not checkpoint.is_file():
        raise DseError(f"checkpoint {checkpoint} does not exist; give the file `dse train` wrote")
    keys = None
    if components is not None:
        keys = [k.strip() for k in components.split(",") if k.strip()]
        if not keys:
            raise DseError("--components is empty; give KIND:NAME keys or leave it out")
    from training._onnx_export import check_onnx_available

    check_onnx_available()
    import torch

    from profiling.latency import check_input_size
    from profiling.probe_pack import write_pack
    from training.checkpoint import load_checkpoint

    network, meta = load_checkpoint(checkpoint)
    h, w = parse_input_size(input_size) if input_size else meta["input_size"]
    size = (int(h), int(w))
    check_input_size(network, size, torch.device("cpu"))
    if few is not None:
        from db.session import open_store
        from profiling.probe_pack import few_shot_components

        engine = open_store(db)
        try:
            keys, notes = few_shot_components(engine, network, few, model_name=name or checkpoint.stem,
                                              input_size=size, batch=batch)
        finally:
            engine.dispose()
        for note in notes:
            err_console.print(f"warning: {note}", markup=False, highlight=False, soft_wrap=True)
    with err_console.status("exporting the components to ONNX..."):
        info = write_pack(network.eval(), out, model_name=name or checkpoint.stem,
                          input_size=size, batch=batch, components=keys)
    if json_output:
        typer.echo(json.dumps({"out": str(info.path), "pack_sha256": info.sha256,
                               "components": list(info.components),
                               "requested": list(info.requested) if info.requested else None}))
        return
    console.print(f"wrote {info.path}: {len(info.components)} component(s), pack "
                  f"{info.sha256[:12]}")
    if few is not None and keys is not None:
        extra = len(info.components) - len(keys)
        console.print(f"few-shot: {len(keys)} component(s) chosen from {', '.join(few.references)}"
                      + (f", plus {extra} producer(s) of their inputs" if extra else ""),
                      markup=False, highlight=False)
    then = f" --reference {','.join(few.references)}" if few is not None else ""
    cross = " --allow-cross-runtime" if few is not None and few.allow_cross_runtime else ""
    console.print("on the device (needs only numpy and onnxruntime):\n"
                  f"  python {info.path.name}/probe.py {info.path.name} [--threads N]\n"
                  "back here:\n"
                  f"  dse profile --import {info.path}/results.json --device NAME{then}{cross}",
                  markup=False, highlight=False)


def import_probe(results: Path, pack: Path | None, device: str, db: str, json_output: bool, *,
                 keep_noisy: bool, threshold: float, references: tuple[str, ...] = (),
                 allow_cross_runtime: bool = False) -> None:
    """`dse profile --import RESULTS`: check everything, then store in one transaction."""
    from db.session import open_store
    from profiling.probe_pack import import_results, read_results

    checked = read_results(results, pack)
    engine = open_store(db, create=True)
    try:
        imported = import_results(engine, checked, device_name=device, keep_noisy=keep_noisy,
                                  threshold=threshold, references=references,
                                  allow_cross_runtime=allow_cross_runtime)
    finally:
        engine.dispose()
    for warning in imported.warnings:
        err_console.print(f"warning: {warning}", markup=False, highlight=False, soft_wrap=True)
    if json_output:
        typer.echo(json.dumps({"device": device, "device_id": imported.device.id,
                               "model_id": imported.model_id,
                               "imported": len(imported.stored),
                               "pack_sha256": checked.pack_sha256,
                               "results_sha256": checked.sha256,
                               "few_shot": None if imported.few_shot is None
                               else imported.few_shot.as_dict()}, sort_keys=True))
        return
    fp = checked.fingerprint
    console.print(
        f"imported {len(imported.stored)} component timing(s) onto device '{device}' "
        f"(id {imported.device.id}; onnxruntime {fp.get('onnxruntime')}, {fp.get('provider')}, "
        f"{fp.get('threads')} thread(s), optimisation {fp.get('graph_optimization')}) from pack "
        f"{checked.pack_sha256[:12]}", markup=False, highlight=False)
    if imported.verdict is not None and imported.verdict.ok:
        console.print(imported.verdict.line(what="probe results") + " (no closed loop: the "
                      "probe times components only)", markup=False, highlight=False)
    if imported.few_shot is not None:
        console.print(imported.few_shot.line(device), markup=False, highlight=False,
                      soft_wrap=True)
