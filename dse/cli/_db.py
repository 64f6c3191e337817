"""Store commands: `dse db info|upgrade|merge`, `dse devices`, `dse models`."""

from __future__ import annotations

import typer

from db.errors import StorageError
from dse.cli._app import DbOption, JsonOption, app

db_app = typer.Typer(help="Inspect, upgrade and merge the measurement store.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@app.command("models")
def models_command(db: DbOption = "sqlite:///mess.db", json_output: JsonOption = False) -> None:
    """List the models in the store."""
    raise StorageError("the store is not implemented yet (issue 3 in progress)")
