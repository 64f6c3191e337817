"""Store commands: `dse db info|upgrade|merge`, `dse devices`, `dse models`."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from dse.cli._app import DEFAULT_DB, DbOption, JsonOption, app, console, fits

db_app = typer.Typer(
    help="Inspect, upgrade and merge measurement stores.", no_args_is_help=True
)
app.add_typer(db_app, name="db", help="Inspect, upgrade and merge measurement stores.")


def _emit(obj: dict[str, Any]) -> None:
    typer.echo(json.dumps(obj, sort_keys=True, default=str))


ModelArg = Annotated[
    str | None, typer.Argument(help="Show only this model: id, name or weights-hash prefix.")
]
DeviceArg = Annotated[
    str | None, typer.Argument(help="Show only this device: its name (every setup) or an id.")
]


@app.command("models")
def models_command(
    model: ModelArg = None, db: DbOption = DEFAULT_DB, json_output: JsonOption = False
) -> None:
    """List the stored models with their exits and accuracy profiles."""
    from db import open_store, session_scope
    from db import repository as repo

    engine = open_store(db)
    try:
        with session_scope(engine, readonly=True) as s:
            rows: list[dict[str, Any]] = []
            chosen = [repo.get_model(s, model)] if model is not None else repo.list_models(s)
            for m in chosen:
                profiles = repo.find_accuracy_profiles(s, m.id)
                rows.append(
                    {
                        "id": m.id, "name": m.name, "arch": m.arch, "num_classes": m.num_classes,
                        "weights_sha256": m.weights_sha256,
                        "exits": len({e.exit_id for e in repo.list_exits(s, m.id)}),
                        "accuracy_profiles": len(profiles),
                        "complete_profiles": sum(p.complete for p in profiles),
                        "created": m.created.strftime("%Y-%m-%d %H:%M"),
                    }
                )
    finally:
        engine.dispose()
    if json_output:
        for row in rows:
            _emit(row)
        return
    if not rows:
        console.print("no models yet; `dse profile --checkpoint CKPT --device NAME` adds one")
        return
    table = Table("id", "name", "arch", "classes", "weights", "exits", "profiles", "created")
    for r in rows:
        table.add_row(
            str(r["id"]), r["name"], r["arch"], str(r["num_classes"]), r["weights_sha256"][:12],
            str(r["exits"]), f"{r['complete_profiles']}/{r['accuracy_profiles']}", r["created"],
        )
    console.print(table)


RuntimeOption = Annotated[
    str | None, typer.Option("--runtime", help="Only fingerprints of this runtime (torch or onnxruntime).")
]


@app.command("devices")
def devices_command(
    device: DeviceArg = None, runtime: RuntimeOption = None, db: DbOption = DEFAULT_DB,
    json_output: JsonOption = False,
) -> None:
    """List the known devices, one row per fingerprint (setup) with its runtime and threads."""
    from db import open_store, session_scope
    from db import repository as repo

    engine = open_store(db)
    try:
        with session_scope(engine, readonly=True) as s:
            if device is not None:
                if runtime is not None:  # explains a runtime the device lacks
                    repo.select_device(s, device, runtime=runtime)
                named = [d for d in repo.list_devices(s) if d.name == device]
                chosen = named or [repo.get_device(s, device)]  # get_device explains a miss
            else:
                chosen = repo.list_devices(s)
            if runtime is not None:
                chosen = [d for d in chosen if repo.device_runtime(d.fingerprint) == runtime]
            rows: list[dict[str, Any]] = [
                {
                    "id": d.id, "name": d.name, "runtime": repo.device_runtime(d.fingerprint),
                    "setup": repo.runtime_label(d.fingerprint),
                    "threads": d.fingerprint.get("threads"), "fingerprint": d.fingerprint,
                    "fingerprint_sha256": d.fingerprint_sha256,
                    "created": d.created.strftime("%Y-%m-%d %H:%M"),
                    "quality": _device_quality(s, d.id),
                }
                for d in chosen
            ]
    finally:
        engine.dispose()
    if json_output:
        for row in rows:
            _emit(row)
        return
    if not rows:
        console.print("no device matches" if runtime is not None else
                      "no devices yet; `dse profile --checkpoint CKPT --device NAME` adds one")
        return
    table = Table("id", "name", "runtime", "threads", "fingerprint", "details",
                  "latency quality", "created")
    for r in rows:
        r["details"] = ", ".join(f"{k}={v}" for k, v in sorted(r["fingerprint"].items()))
        r["quality_text"] = "\n".join(
            f"model {q['model_id']} {'x'.join(map(str, q['input_shape']))}: {q['status']} "
            f"({q['figures']})" for q in r["quality"]) or "-"
        threads = "-" if r["threads"] is None else str(r["threads"])
        table.add_row(str(r["id"]), Text(r["name"]), Text(r["setup"]), threads,
                      r["fingerprint_sha256"][:12], Text(r["details"]), Text(r["quality_text"]),
                      r["created"])
    if fits(table):
        console.print(table)
        return
    for r in rows:  # a pipe or a narrow terminal: one block per fingerprint, nothing cut short
        lines = [f"device {r['id']}  {r['name']} · {r['setup']}, fingerprint "
                 f"{r['fingerprint_sha256'][:12]}, {r['created']}",
                 f"    details: {r['details']}",
                 *(f"    latency quality: {q}" for q in r["quality_text"].splitlines())]
        for line in lines:
            console.print(line, markup=False, highlight=False, soft_wrap=True)


def _device_quality(s: Any, device_id: int) -> list[dict[str, Any]]:
    """Per latency profile of the device that recorded its quality: status and figures."""
    from db import repository as repo
    from db.trust import latency_trust

    out = []
    for q in repo.list_profile_quality(s, device_id=device_id):
        trust = latency_trust(s, model_id=q.model_id, device_id=device_id,
                              input_shape=q.input_shape)
        out.append({"model_id": q.model_id, "input_shape": list(q.input_shape),
                    **trust.as_dict()})
    return out


@db_app.command("info")
def info_command(db: DbOption = DEFAULT_DB, json_output: JsonOption = False) -> None:
    """Show the schema revision, rows per table, models and devices."""
    from db import open_store, session_scope
    from db import repository as repo
    from db.session import current_revision, display_url, head_revision

    engine = open_store(db)
    try:
        revision = current_revision(engine)
        with session_scope(engine, readonly=True) as s:
            counts = repo.row_counts(s)
            models = [f"{m.id}:{m.name}" for m in repo.list_models(s)]
            devices = [f"{d.id}:{d.name}" for d in repo.list_devices(s)]
            checks = [_check_row(c) for c in repo.list_path_checks(s)]
    finally:
        engine.dispose()
    info = {
        "url": display_url(db), "revision": revision, "head_revision": head_revision(),
        "rows": counts, "models": models, "devices": devices, "closed_loop": checks,
    }
    if json_output:
        _emit(info)
        return
    console.print(f"store    {info['url']}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"schema   {revision} (this mess-dse writes {head_revision()})", highlight=False)
    console.print(f"models   {', '.join(models) or '-'}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"devices  {', '.join(devices) or '-'}", markup=False, highlight=False, soft_wrap=True)
    table = Table("table", "rows")
    for name, n in counts.items():
        table.add_row(name, str(n))
    console.print(table)
    if checks:
        loop = Table(title="closed loop: deployed cascade vs sum of components")
        for col in ("model", "device", "input", "path", "measured ms", "predicted ms", "deviation"):
            loop.add_column(col, overflow="fold", justify="right" if "ms" in col or
                            col == "deviation" else "left")
        for c in checks:
            loop.add_row(str(c["model_id"]), str(c["device_id"]), c["input_shape"], c["path"],
                         f"{c['measured_ms']:.3f}", f"{c['predicted_ms']:.3f}",
                         f"{100 * c['deviation']:+.1f}%")
        console.print(loop)


def _check_row(record: Any) -> dict[str, Any]:
    """A stored closed-loop check (a latency row of kind "path") as `dse db info` shows it."""
    return {
        "model_id": record.model_id, "device_id": record.device_id,
        "input_shape": "x".join(str(v) for v in record.input_shape), "batch": record.batch,
        "dtype": record.dtype, "path": record.name, "measured_ms": record.mean_ms,
        "predicted_ms": record.predicted_ms, "deviation": record.deviation,
    }


@db_app.command("upgrade")
def upgrade_command(db: DbOption = DEFAULT_DB, json_output: JsonOption = False) -> None:
    """Bring a store to this version's schema (creates an empty store when missing)."""
    from db.session import display_url, upgrade

    before, after = upgrade(db)
    if json_output:
        _emit({"url": display_url(db), "from": before, "to": after})
    elif before == after:
        console.print(
            f"{display_url(db)} is already at schema {after}", markup=False, highlight=False,
            soft_wrap=True,
        )
    else:
        console.print(
            f"{display_url(db)}: schema {before or 'empty'} -> {after}", markup=False,
            highlight=False, soft_wrap=True,
        )


SourceArg = Annotated[
    str, typer.Argument(help="Store to bring in: SQLAlchemy URL or SQLite file path.")
]


@db_app.command("merge")
def merge_command(
    source: SourceArg, db: DbOption = DEFAULT_DB, json_output: JsonOption = False
) -> None:
    """Copy the rows of another store into this one; identical rows are skipped."""
    from db.merge import merge_stores

    report = merge_stores(source, db)
    if json_output:
        _emit(report.as_dict())
        for conflict in report.conflicts:
            _emit({"conflict": conflict})
        return
    table = Table("table", "copied", "skipped", "conflicts")
    for name in sorted(set(report.copied) | set(report.skipped) | set(report.conflict_counts)):
        table.add_row(
            name, str(report.copied.get(name, 0)), str(report.skipped.get(name, 0)),
            str(report.conflict_counts.get(name, 0)),
        )
    console.print(table)
    for conflict in report.conflicts:
        console.print(f"conflict (kept this store's row): {conflict}", markup=False, highlight=False, soft_wrap=True)
    console.print(
        f"merged {sum(report.copied.values())} rows, skipped {sum(report.skipped.values())} "
        f"identical, {len(report.conflicts)} conflicts", highlight=False, soft_wrap=True,
    )
