"""The typer application and the one place where user errors become exit codes."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console
from typer._click import ClickException  # typer vendors click; no separate package

from db.errors import StorageError
from dse.errors import DseError

DEFAULT_DB = "sqlite:///mess.db"

app = typer.Typer(
    name="dse",
    help="Multi-Exit Semantic Segmentation: train once, find Pareto-optimal exits per device.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

DbOption = Annotated[
    str,
    typer.Option("--db", envvar="DSE_DB", help="Store URL (SQLAlchemy) or SQLite file path."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="One JSON object per line.")]


def _user_errors() -> tuple[type[BaseException], ...]:
    """Error classes that mean 'the user asked for something wrong'.

    Torch-heavy packages are only consulted when a command already imported them, so a
    `dse pareto` never pays for importing torch.
    """
    errors: list[type[BaseException]] = [DseError, StorageError]
    for module, name in (
        ("training.errors", "TrainingError"),
        ("profiling.errors", "ProfilingError"),
    ):
        loaded = sys.modules.get(module)
        if loaded is not None:
            errors.append(getattr(loaded, name))
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run the app, map user errors to one line and exit code 2."""
    from dse import cli  # noqa: F401  (registers every command on `app`)

    try:
        result = app(args=argv, standalone_mode=False)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("interrupted")
        return 130
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except ClickException as exc:  # usage errors: click prints its own one-line message
        exc.show()
        return exc.exit_code
    except _user_errors() as exc:
        err_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 2
    return result if isinstance(result, int) else 0


def run() -> None:
    """`dse` console script."""
    sys.exit(main())
