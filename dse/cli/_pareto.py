"""`dse pareto`: search Pareto-optimal exit configurations for one device, store and show them."""

from __future__ import annotations

import json
from typing import Annotated, Literal

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from dse.cli._app import (
    DEFAULT_DB,
    DbOption,
    JsonOption,
    app,
    check_user_name,
    console,
    err_console,
    fits,
    step_progress,
)
from dse.errors import DseError


def _floats(text: str | None, option: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise DseError(f"{option} takes comma-separated numbers, got {text!r}") from exc
    if not values or not all(0.0 <= v <= 1.0 for v in values):
        raise DseError(f"{option} takes comma-separated numbers in [0, 1], got {text!r}")
    return values


def _names(text: str | None, option: str) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    if not names:
        raise DseError(f"{option} is empty; give comma-separated names or leave the option out")
    return names


@app.command("pareto")
def pareto_command(
    device: Annotated[str, typer.Option("--device", help="Device name as given to `dse profile` (its newest fingerprint), or a device id from `dse devices`.")],
    runtime: Annotated[str | None, typer.Option("--runtime", help="Search the device's timings under this runtime (torch or onnxruntime) when its name was profiled under several.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Model id or name (default: the only one profiled on the device).")] = None,
    method: Annotated[Literal["exhaustive", "optuna"], typer.Option("--method", help="Every configuration up to --max-exits, or Optuna's NSGA-II over --trials.")] = "exhaustive",
    objectives: Annotated[str, typer.Option("--objectives", help="Two or more of miou, latency, gflops.")] = "miou,latency",
    max_exits: Annotated[int, typer.Option("--max-exits", help="Most early exits per configuration.")] = 3,
    mode: Annotated[Literal["cascade", "budgeted", "anytime"], typer.Option("--mode", help="cascade: images leave at the first confident exit; budgeted: one exit for all; anytime: every kept exit in turn.")] = "cascade",
    positions: Annotated[str | None, typer.Option("--positions", help="Allowed positions, comma-separated.")] = None,
    heads: Annotated[str | None, typer.Option("--heads", help="Allowed head ids, comma-separated.")] = None,
    th_pix: Annotated[str | None, typer.Option("--th-pix", help="Pixel thresholds (histogram edges), comma-separated.")] = None,
    th_img: Annotated[str | None, typer.Option("--th-img", help="Image thresholds, comma-separated.")] = None,
    per_exit_thresholds: Annotated[bool, typer.Option("--per-exit-thresholds", help="One th_pix per exit (optuna).")] = False,
    max_latency_ms: Annotated[float | None, typer.Option("--max-latency-ms", help="Latency budget: mean milliseconds per image on this device.")] = None,
    max_drop_pp: Annotated[float | None, typer.Option("--max-drop-pp", metavar="POINTS", help="Max mIoU drop vs the final exit alone, in percentage points (1 = 74.5% -> 73.5%).")] = None,
    min_miou: Annotated[str | None, typer.Option("--min-miou", metavar="PERCENT", help="Minimum mIoU in percent: 70 or 70% (a fraction such as 0.7 also works).")] = None,
    max_gflops: Annotated[float | None, typer.Option("--max-gflops", help="Compute budget: mean GFLOPs per image (one multiply-add = one FLOP).")] = None,
    target: Annotated[Literal["accuracy", "speed"] | None, typer.Option("--target", help="accuracy (max mIoU at <= baseline cost) | speed (min latency within --max-drop-pp, default 0.1)")] = None,
    fronts: Annotated[int, typer.Option("--fronts", min=1, max=1000, help="Fronts to keep and store.")] = 3,
    workers: Annotated[int, typer.Option("--workers", min=1, max=1024, help="joblib workers (exhaustive).")] = 1,
    study: Annotated[str | None, typer.Option("--study", help="Optuna study to create or join in the --db database (several machines can share one); without it the study stays in memory.")] = None,
    trials: Annotated[int, typer.Option("--trials", min=1, max=10_000_000, help="Optuna trials in this process.")] = 500,
    seed: Annotated[int, typer.Option("--seed", help="Seed of Optuna's sampler (the exhaustive search needs none).")] = 0,
    calibration: Annotated[str | None, typer.Option("--calibration", help="Calibration set to select on: id or split, e.g. 'val[::2]' (default: the newest profiled).")] = None,
    check_on: Annotated[str | None, typer.Option("--check-on", help="Score front 1 on another stored calibration set (id or split, e.g. 'val[1::2]').")] = None,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Bootstrap resamples for the intervals of front 1 (0: none).")] = 1000,
    bootstrap_seed: Annotated[int, typer.Option("--bootstrap-seed", help="Seed of the resampling.")] = 0,
    interval: Annotated[float, typer.Option("--interval", help="Central probability of the intervals shown.")] = 0.9,
    confidence: Annotated[float | None, typer.Option("--confidence", help="Robust selection: constraints must hold at this one-sided bootstrap bound, e.g. 0.9.")] = None,
    report: Annotated[str | None, typer.Option("--report", help="Write the HTML report here.")] = None,
    db: DbOption = DEFAULT_DB,
    json_output: JsonOption = False,
) -> None:
    """Search the exit configurations of a profiled model for one device; print the front."""
    from db import open_store
    from db.session import parse_url
    from dse.constraints import Constraints, parse_miou
    from dse.run import SearchRequest, run_search
    from dse.uncertainty import BootstrapSettings, check_probability

    if study is not None:
        check_user_name(study, "--study")
    try:
        check_probability(interval, "--interval")
        if confidence is not None:
            check_probability(confidence, "--confidence")
        if bootstrap < 0 or bootstrap == 1:
            raise ValueError(f"--bootstrap must be 0 (no intervals) or at least 2, got {bootstrap}")
        settings = (BootstrapSettings(resamples=bootstrap, seed=bootstrap_seed, level=interval)
                    if bootstrap else None)
        request = SearchRequest(
            device=device, runtime=runtime, model=model, method=method,
            objectives=_names(objectives, "--objectives") or (), max_exits=max_exits,
            positions=_names(positions, "--positions"), heads=_names(heads, "--heads"),
            th_pix=_floats(th_pix, "--th-pix"), th_img=_floats(th_img, "--th-img"), mode=mode,
            per_exit_thresholds=per_exit_thresholds,
            constraints=Constraints(max_latency_ms=max_latency_ms, max_drop_pp=max_drop_pp,
                                    min_miou=None if min_miou is None else parse_miou(min_miou),
                                    max_gflops=max_gflops, target=target),
            n_jobs=workers, max_front=fronts, study=study, trials=trials, seed=seed,
            calibration=calibration, check_on=check_on, bootstrap=settings,
            confidence=confidence)
    except ValueError as exc:
        raise DseError(str(exc)) from exc
    if report is not None:
        from dse.report import check_output_path
        check_output_path(report)
    url = parse_url(db).render_as_string(hide_password=False)
    engine = open_store(db)
    try:
        with step_progress("searching", disable=json_output) as bar:
            stored = run_search(engine, url, request, progress=bar)
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


def _interval_cell(iv: dict | None, exits: list[str]) -> str:  # type: ignore[type-arg]
    """The intervals of one candidate as short lines for the table."""
    if not iv:
        return "-"
    m, d, lat = iv["miou"], iv["drop_pp"], iv["latency_ms"]
    rates = " ".join(
        f"{100 * lo:.0f}-{100 * hi:.0f}%" for lo, hi in (iv["exit_rates"].get(e, (0, 0))
                                                         for e in exits))
    return (f"mIoU {100 * m[0]:.2f}-{100 * m[1]:.2f}%\ndrop {d[0]:+.2f}..{d[1]:+.2f} pp\n"
            f"ms {lat[0]:.3f}-{lat[1]:.3f}\nrates {rates}")


def _json_line(stored, c) -> dict:  # type: ignore[no-untyped-def,type-arg]
    line = {
        "run": stored.run.id, "candidate": c.index, "front": c.front, "exits": c.exits,
        "th_pix": c.th_pix, "th_img": c.th_img, "miou": c.miou,
        "latency_ms": c.latency_ms, "latency_p95_ms": c.latency_p95_ms,
        "gflops": c.gflops, "exit_rates": c.exit_rates, "anytime_ms": c.anytime_ms,
        "chosen": c.index == stored.chosen, "intervals": c.intervals,
    }
    if stored.robust is not None:
        line["plain_pick"] = c.index == stored.plain
    held = stored.held_out
    check = next((k for k in held.checks if k.candidate == c.index), None) if held else None
    if check is not None:
        line["check"] = {"calibration_set": held.calibration.id,
                         "dataset": held.calibration.dataset, "split": held.calibration.split,
                         "predicted": check.predicted, "observed": check.observed,
                         "moved_exits": check.moved, "broken": check.broken}
    return line


def print_run(stored, json_output: bool) -> None:  # type: ignore[no-untyped-def]
    from db.repository import runtime_label

    run = stored.run
    if stored.device_note is not None:
        err_console.print(f"note: {stored.device_note}", markup=False, highlight=False,
                          soft_wrap=True)
    warning = stored.trust.warning if stored.trust is not None else None
    if warning is not None:
        err_console.print(f"warning: {warning}", markup=False, highlight=False, soft_wrap=True)
    kept = [c for c in stored.candidates if c.feasible]
    if json_output:  # the candidates the constraints allow (excluded ones are for the report)
        for c in kept:
            typer.echo(json.dumps(_json_line(stored, c), sort_keys=True))
        return
    base = run.baseline
    setup = runtime_label(run.device_fingerprint)
    console.print(f"run {run.id}: {run.model_name} on {run.device_name} · {setup}, {run.method} "
                  f"({run.mode}), {run.n_evaluated:,} configurations in {run.duration_s:.2f} s; "
                  f"baseline (final exit only): mIoU {base['miou']:.2%}, "
                  f"{base['latency_ms']:.3f} ms, {base['gflops']:.3f} GFLOPs",
                  markup=False, highlight=False, soft_wrap=True)
    boot = run.constraints.get("bootstrap")
    front = [c for c in kept if c.front == 1]
    plain = stored.plain if stored.robust is not None else None
    table = _front_table(front, stored.chosen, plain, boot)
    if fits(table):
        console.print(table)
    else:  # a pipe or a narrow terminal: one block per candidate, nothing cut short
        _print_stacked(front, stored.chosen, plain, boot)
    later = sum(c.front > 1 for c in kept)
    excluded = len(stored.candidates) - len(kept)
    also = (f", and {excluded} trade-offs the constraints excluded (drawn dimmed)"
            if excluded else "")
    console.print(f"{later} more candidates on fronts 2..{max(c.front for c in kept)} "
                  f"stored{also}; `dse report --runs {run.id} --out FILE` plots them",
                  markup=False, highlight=False, soft_wrap=True)
    if boot:
        console.print(f"intervals: {boot['resamples']} bootstrap resamples of the "
                      f"{stored.num_images} calibration images (seed {boot['seed']}), exact "
                      "evaluator; they cover image sampling noise, not other kinds of images "
                      "(--check-on measures that)", markup=False)
    if stored.robust is not None:
        _print_robust(stored)
    elif stored.chosen is not None:
        console.print(f"* chosen for --target {run.constraints.get('target')}: "
                      f"candidate {stored.chosen}", markup=False, highlight=False)
    if stored.held_out is not None:
        _print_checks(stored)


def _mark(c, chosen: int | None, plain: int | None) -> str:  # type: ignore[no-untyped-def]
    """`*` the candidate --target chose, `p` the plain pick a robust selection replaced."""
    return (" *" if c.index == chosen else "") + (" p" if c.index == plain else "")


def _front_table(front, chosen: int | None, plain: int | None,  # type: ignore[no-untyped-def]
                 boot: dict | None) -> Table:  # type: ignore[type-arg]
    columns = ["#", "exits", "th_pix", "th_img", "mIoU %", "ms", "p95 ms", "GFLOPs",
               "exit rates"]
    if boot:
        columns.append(f"{100 * boot['level']:g}% interval")
    table = Table(*columns, title="front 1 (non-dominated)")
    for c in front:
        row = [f"{c.index}{_mark(c, chosen, plain)}", "\n".join(c.exits),
               ",".join(f"{t:g}" for t in c.th_pix), f"{c.th_img:g}", f"{100 * c.miou:.2f}",
               f"{c.latency_ms:.3f}", f"{c.latency_p95_ms:.3f}", f"{c.gflops:.3f}",
               "\n".join(f"{c.exit_rates.get(e, 0.0):.0%}" for e in c.exits)]
        if boot:
            row.append(_interval_cell(c.intervals, c.exits))
        table.add_row(*(Text(v) for v in row))
    return table


def _print_stacked(front, chosen: int | None, plain: int | None,  # type: ignore[no-untyped-def]
                   boot: dict | None) -> None:  # type: ignore[type-arg]
    """Front 1 as blocks: a line of numbers per candidate, then one line per exit it keeps."""
    console.print("front 1 (non-dominated): candidate, mIoU, mean (p95) latency, GFLOPs; "
                  "then each exit with its th_pix and the share of images that leave there",
                  markup=False, highlight=False, soft_wrap=True)
    for c in front:
        th_img = f", th_img {c.th_img:g}" if c.th_pix else ""
        lines = [f"#{c.index}{_mark(c, chosen, plain)}  mIoU {c.miou:.2%}  "
                 f"{c.latency_ms:.3f} ms (p95 {c.latency_p95_ms:.3f})  {c.gflops:.3f} GFLOPs"
                 f"{th_img}"]
        th = [f"th_pix {t:g}" for t in c.th_pix] + [""] * (len(c.exits) - len(c.th_pix))
        names = max(len(e) for e in c.exits)
        ths = max(len(t) for t in th)
        lines += [f"    {e:<{names}}  {t:<{ths}}  {c.exit_rates.get(e, 0.0):>4.0%}"
                  for e, t in zip(c.exits, th, strict=True)]
        if boot and c.intervals:
            lines.append(f"    {100 * boot['level']:g}% interval: "
                         + _interval_cell(c.intervals, c.exits).replace("\n", ", "))
        for line in lines:
            console.print(line, markup=False, highlight=False, soft_wrap=True)


def _print_robust(stored) -> None:  # type: ignore[no-untyped-def]
    run, robust = stored.run, stored.robust
    p, target = run.constraints["confidence"], run.constraints.get("target")
    by_index = {c.index: c for c in stored.candidates}
    plain = by_index.get(stored.plain) if stored.plain is not None else None
    if robust.chosen is None:
        why = "; ".join(robust.failures.get(stored.plain, [])) if plain else ""
        console.print(f"no stored candidate meets the constraints at confidence {p:g} "
                      f"({robust.examined} examined); the plain pick, candidate {stored.plain}, "
                      f"has {why or 'no bounds'}; relax the constraints, lower --confidence or "
                      "profile more calibration images", markup=False)
        return
    pick = by_index[robust.chosen]
    console.print(f"* chosen for --target {target} at confidence {p:g}: candidate {pick.index} "
                  f"({robust.examined} candidate(s) bootstrapped)", markup=False)
    if plain is None or plain.index == pick.index:
        console.print("  the plain pick (point estimates) is the same candidate: robust costs "
                      "nothing here", markup=False)
        return
    why = "; ".join(robust.failures.get(plain.index, []))
    d_ms = pick.latency_ms - plain.latency_ms
    rel = f", {100 * d_ms / plain.latency_ms:+.1f}%" if plain.latency_ms > 0 else ""
    console.print(
        f"  p = the plain pick on the point estimates, candidate {plain.index}: its bound breaks "
        f"{why}. Against it the robust pick changes mean latency by {d_ms:+.3f} ms{rel} "
        f"({plain.latency_ms:.3f} -> {pick.latency_ms:.3f}) and mIoU by "
        f"{100 * (pick.miou - plain.miou):+.2f} pp ({100 * plain.miou:.2f}% -> "
        f"{100 * pick.miou:.2f}%)", markup=False)


def _rates(rates: dict, exits: list[str]) -> str:  # type: ignore[type-arg]
    return "/".join(f"{100 * rates.get(e, 0.0):.0f}" for e in exits) + "%"


def _print_checks(stored) -> None:  # type: ignore[no-untyped-def]
    held = stored.held_out
    calib = held.calibration
    by_index = {c.index: c for c in stored.candidates}
    title = (f"held-out check on {calib.dataset}/{calib.split} ({calib.num_samples} images, "
             f"{held.shared_images} also in the selection set), read from the store")
    table = Table("#", "mIoU % pred -> obs", "drop pp pred -> obs", "ms pred -> obs",
                  "exit rates pred -> obs", "flags", title=escape(title))
    moved = broken = 0
    for k in held.checks:
        exits = by_index[k.candidate].exits
        p, o = k.predicted, k.observed
        flags = [f"{e} {v:+.0f} pts" for e, v in k.moved.items()] + k.broken
        moved += bool(k.moved)
        broken += bool(k.broken)
        table.add_row(*(escape(v) for v in (
            f"{k.candidate}{' *' if k.candidate == stored.chosen else ''}",
            f"{100 * p['miou']:.2f} -> {100 * o['miou']:.2f}", f"{p['drop_pp']:+.2f} -> {o['drop_pp']:+.2f}",
            f"{p['latency_ms']:.3f} -> {o['latency_ms']:.3f}",
            f"{_rates(p['exit_rates'], exits)} -> {_rates(o['exit_rates'], exits)}",
            "\n".join(flags) or "ok")))
    console.print(table)
    console.print(f"baseline on the check set: mIoU {held.baseline.miou:.2%}; "
                  f"{moved} of {len(held.checks)} candidate(s) have an exit rate that moved more "
                  f"than 5 points, {broken} break a constraint they met on the selection set; "
                  "latency there is the device's component costs along the observed routes",
                  markup=False)
