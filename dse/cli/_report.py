"""`dse report`: re-render one search run, or overlay several, as a self-contained HTML page."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from dse.cli._app import DEFAULT_DB, DbOption, JsonOption, app, console
from dse.errors import DseError


def parse_run_ids(text: str) -> list[int]:
    """`1,2, 3` -> [1, 2, 3]; anything else is a user error naming the bad part."""
    ids = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            shown = part or "(empty)"
            raise DseError(
                f"--runs: {shown!r} is not a run id; pass positive integers separated by commas, "
                "e.g. --runs 1,2 (`dse pareto --json` prints each run id)"
            )
        ids.append(int(part))
    return ids


@app.command("report")
def report_command(
    runs: Annotated[str, typer.Option("--runs", help="Search run id(s), comma-separated: 3 or 3,4.")],
    out: Annotated[str, typer.Option("--out", help="HTML file to write (its folder must exist).")],
    db: DbOption = DEFAULT_DB,
    json_output: JsonOption = False,
) -> None:
    """Write an interactive HTML Pareto report of one or more search runs (works offline)."""
    from db.session import open_store, session_scope
    from dse.report import check_output_path, write_report

    run_ids = parse_run_ids(runs)
    check_output_path(out)  # before opening the store: a bad path fails fast
    engine = open_store(db)
    try:
        with session_scope(engine, readonly=True) as s:
            path = write_report(s, run_ids, out)
    finally:
        engine.dispose()
    size = path.stat().st_size
    if json_output:
        typer.echo(json.dumps({"out": str(path), "runs": run_ids, "bytes": size}))
        return
    plural = "s" if len(run_ids) > 1 else ""
    console.print(f"wrote {path} (run{plural} {', '.join(map(str, run_ids))}, "
                  f"{size / 1e6:.1f} MB, opens offline)", highlight=False, markup=False)
