"""`dse pareto`: search Pareto-optimal exit configurations for one device, store and show them."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.progress import Progress
from rich.table import Table

from dse.cli._app import DEFAULT_DB, DbOption, JsonOption, app, console, err_console
from dse.errors import DseError


def _floats(text: str | None, option: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise DseError(f"{option} takes comma-separated numbers, got {text!r}") from exc


def _names(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(v.strip() for v in text.split(",") if v.strip())


@app.command("pareto")
def pareto_command(
    device: Annotated[str, typer.Option("--device", help="Device name as given to `dse profile`.")],
    model: Annotated[str | None, typer.Option("--model", help="Model id or name (default: the only one profiled on the device).")] = None,
    method: Annotated[str, typer.Option("--method", help="exhaustive | optuna")] = "exhaustive",
    objectives: Annotated[str, typer.Option("--objectives", help="Two or more of miou, latency, gflops.")] = "miou,latency",
    max_exits: Annotated[int, typer.Option("--max-exits", help="Most early exits per configuration.")] = 3,
    mode: Annotated[str, typer.Option("--mode", help="cascade | budgeted | anytime")] = "cascade",
    positions: Annotated[str | None, typer.Option("--positions", help="Allowed positions, comma-separated.")] = None,
    heads: Annotated[str | None, typer.Option("--heads", help="Allowed head ids, comma-separated.")] = None,
    th_pix: Annotated[str | None, typer.Option("--th-pix", help="Pixel thresholds (histogram edges), comma-separated.")] = None,
    th_img: Annotated[str | None, typer.Option("--th-img", help="Image thresholds, comma-separated.")] = None,
    per_exit_thresholds: Annotated[bool, typer.Option("--per-exit-thresholds", help="One th_pix per exit (optuna).")] = False,
    max_latency_ms: Annotated[float | None, typer.Option("--max-latency-ms")] = None,
    max_drop_pp: Annotated[float | None, typer.Option("--max-drop-pp", help="Max mIoU drop vs the final exit alone, in points.")] = None,
    min_miou: Annotated[float | None, typer.Option("--min-miou", help="Minimum mIoU in [0, 1].")] = None,
    max_gflops: Annotated[float | None, typer.Option("--max-gflops")] = None,
    target: Annotated[str | None, typer.Option("--target", help="accuracy (max mIoU at <= baseline cost) | speed (min latency within --max-drop-pp, default 0.1)")] = None,
    fronts: Annotated[int, typer.Option("--fronts", help="Fronts to keep and store.")] = 3,
    workers: Annotated[int, typer.Option("--workers", help="joblib workers (exhaustive).")] = 1,
    study: Annotated[str | None, typer.Option("--study", help="Optuna study name to create or join.")] = None,
    trials: Annotated[int, typer.Option("--trials", help="Optuna trials in this process.")] = 500,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    report: Annotated[str | None, typer.Option("--report", help="Write the HTML report here.")] = None,
    db: DbOption = DEFAULT_DB,
    json_output: JsonOption = False,
) -> None:
    """Search the exit configurations of a profiled model for one device; print the front."""
    from db import open_store
    from db.session import parse_url
    from dse.constraints import Constraints
    from dse.run import SearchRequest, run_search

    try:
        request = SearchRequest(
            device=device, model=model, method=method,
            objectives=_names(objectives) or (), max_exits=max_exits,
            positions=_names(positions), heads=_names(heads),
            th_pix=_floats(th_pix, "--th-pix"), th_img=_floats(th_img, "--th-img"), mode=mode,
            per_exit_thresholds=per_exit_thresholds,
            constraints=Constraints(max_latency_ms=max_latency_ms, max_drop_pp=max_drop_pp,
                                    min_miou=min_miou, max_gflops=max_gflops, target=target),
            n_jobs=workers, max_front=fronts, study=study, trials=trials, seed=seed)
    except ValueError as exc:
        raise DseError(str(exc)) from exc
    if report is not None:
        from dse.report import check_output_path
        check_output_path(report)
    url = parse_url(db).render_as_string(hide_password=False)
    engine = open_store(db)
    try:
        if json_output:
            stored = run_search(engine, url, request)
        else:
            with Progress(console=err_console, transient=True) as bar:
                task = bar.add_task("searching", total=None)
                stored = run_search(engine, url, request,
                                    progress=lambda done, total: bar.update(task, completed=done,
                                                                            total=total))
        if report is not None:
            from db import session_scope
            from dse.report import write_report
            with session_scope(engine, readonly=True) as s:
                written = write_report(s, [stored.run.id], report)
    finally:
        engine.dispose()
    print_run(stored, json_output)
    if report is not None and not json_output:
        console.print(f"report: {written}")


def print_run(stored, json_output: bool) -> None:  # type: ignore[no-untyped-def]
    run = stored.run
    warning = stored.trust.warning if stored.trust is not None else None
    if warning is not None:
        err_console.print(f"warning: {warning}", markup=False, highlight=False, soft_wrap=True)
    if json_output:
        for c in stored.candidates:
            typer.echo(json.dumps({
                "run": run.id, "candidate": c.index, "front": c.front, "exits": c.exits,
                "th_pix": c.th_pix, "th_img": c.th_img, "miou": c.miou,
                "latency_ms": c.latency_ms, "latency_p95_ms": c.latency_p95_ms,
                "gflops": c.gflops, "exit_rates": c.exit_rates, "anytime_ms": c.anytime_ms,
                "chosen": c.index == stored.chosen,
            }, sort_keys=True))
        return
    base = run.baseline
    console.print(f"run {run.id}: {run.model_name} on {run.device_name}, {run.method} "
                  f"({run.mode}), {run.n_evaluated:,} configurations in {run.duration_s:.2f} s; "
                  f"baseline (final exit only): mIoU {base['miou']:.4f}, "
                  f"{base['latency_ms']:.3f} ms, {base['gflops']:.3f} GFLOPs")
    table = Table("#", "front", "exits", "th_pix", "th_img", "mIoU", "ms", "p95 ms", "GFLOPs",
                  "exit rates", title="front 1 (non-dominated)")
    for c in stored.candidates:
        if c.front != 1:
            continue
        mark = " *" if c.index == stored.chosen else ""
        table.add_row(f"{c.index}{mark}", str(c.front), "\n".join(c.exits),
                      ",".join(f"{t:g}" for t in c.th_pix), f"{c.th_img:g}", f"{c.miou:.4f}",
                      f"{c.latency_ms:.3f}", f"{c.latency_p95_ms:.3f}", f"{c.gflops:.3f}",
                      " ".join(f"{c.exit_rates.get(e, 0.0):.0%}" for e in c.exits))
    console.print(table)
    later = sum(c.front > 1 for c in stored.candidates)
    console.print(f"{later} more candidates on fronts 2..{max(c.front for c in stored.candidates)} "
                  f"stored; `dse report --runs {run.id} --out FILE` plots them")
    if stored.chosen is not None:
        console.print(f"* chosen for --target {run.constraints.get('target')}: "
                      f"candidate {stored.chosen}")
