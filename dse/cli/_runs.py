"""`dse runs`: the stored search runs, whose ids `report`, `export` and `verify` take."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from dse.cli._app import DEFAULT_DB, DbOption, JsonOption, app, console, fits


@app.command("runs")
def runs_command(
    model: Annotated[str | None, typer.Option("--model", help="Only this model (id or name).")] = None,
    device: Annotated[str | None, typer.Option("--device", help="Only this device: a name (all its setups) or a device id.")] = None,
    runtime: Annotated[str | None, typer.Option("--runtime", help="Only runs on timings of this runtime (torch or onnxruntime).")] = None,
    db: DbOption = DEFAULT_DB,
    json_output: JsonOption = False,
) -> None:
    """List the search runs: id, model, device, method, constraints, chosen candidate."""
    from db import open_store, session_scope
    from db.repository import names_with_several_setups
    from dse.run import list_runs

    engine = open_store(db)
    try:
        with session_scope(engine, readonly=True) as s:
            runs = list_runs(s, model=model, device=device, runtime=runtime)
    finally:
        engine.dispose()
    rows = [_row(r) for r in runs]
    if json_output:
        for row in rows:
            typer.echo(json.dumps(row, sort_keys=True))
        return
    if not rows:
        asked = device is not None or model is not None or runtime is not None
        console.print("no search run matches" if asked else
                      "no search runs yet; `dse pareto --device NAME` searches and stores one",
                      markup=False, highlight=False)
        return
    several = names_with_several_setups((r["device"], r["device_id"]) for r in rows)
    for r in rows:  # one machine under two runtimes reads like two devices
        r["device_text"] = (f"{r['device']} · {r['setup']}" if r["device"] in several
                            else r["device"])
    table = Table("run", "model", "device", "method", "constraints", "chosen", "front 1",
                  "created")
    for r in rows:
        chosen = "-"
        if r["chosen"] is not None:
            chosen = (f"#{r['chosen']}: {100 * r['chosen_miou']:.2f}%, "
                      f"{r['chosen_latency_ms']:.3f} ms")
        table.add_row(str(r["run"]), Text(f"{r['model']} ({r['model_id']})"), Text(r["device_text"]),
                      f"{r['method']} ({r['mode']})", Text(r["constraints_text"]), chosen,
                      f"{r['front_one']} of {r['candidates']}", r["created"])
    if fits(table):
        console.print(table)
        return
    for r in rows:  # a pipe or a narrow terminal: one block per run, nothing cut short
        chosen = "none" if r["chosen"] is None else (
            f"#{r['chosen']}, {100 * r['chosen_miou']:.2f}%, {r['chosen_latency_ms']:.3f} ms")
        for line in (f"run {r['run']}  {r['model']} (model {r['model_id']}) on {r['device_text']}, "
                     f"{r['method']} ({r['mode']}), {r['created']}",
                     f"    constraints: {r['constraints_text']}",
                     f"    chosen: {chosen}; front 1: {r['front_one']} of {r['candidates']} "
                     f"stored candidates"):
            console.print(line, markup=False, highlight=False, soft_wrap=True)


def _row(summary: Any) -> dict[str, Any]:
    """One `--json` line: numbers in the store's units (mIoU in [0, 1], like `dse pareto`)."""
    from db.repository import device_runtime, runtime_label
    from dse.constraints import describe

    run, chosen = summary.run, summary.chosen
    given = {k: v for k, v in run.constraints.items()
             if k in ("max_latency_ms", "max_drop_pp", "min_miou", "max_gflops", "target")
             and v is not None}
    return {
        "run": run.id, "model": run.model_name, "model_id": run.model_id,
        "device": run.device_name, "device_id": run.device_id,
        "runtime": device_runtime(run.device_fingerprint),
        "setup": runtime_label(run.device_fingerprint), "method": run.method,
        "mode": run.mode, "constraints": given, "constraints_text": describe(run.constraints),
        "chosen": None if chosen is None else chosen.index,
        "chosen_miou": None if chosen is None else chosen.miou,
        "chosen_latency_ms": None if chosen is None else chosen.latency_ms,
        "candidates": summary.candidates, "front_one": summary.front_one,
        "n_evaluated": run.n_evaluated, "created": run.created.strftime("%Y-%m-%d %H:%M"),
    }
