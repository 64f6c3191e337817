"""The typer application and the one place where user errors become exit codes."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
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
# The torch device a command computes on, the same word on every command ("--device" names a
# machine in `dse profile` and `dse pareto`).
ComputeOption = Annotated[
    str, typer.Option("--compute", help="Torch device to compute on: cpu or cuda[:N].")
]


def fits(table: Table) -> bool:
    """Whether a table shows at the console's width without cutting a cell short.

    Pipes and CI logs get 80 columns; commands print a stacked layout when this is False.
    """
    natural = Measurement.get(console, console.options.update_width(10_000), table).maximum
    return natural <= console.width


def parse_input_size(text: str, *, minimum: int = 1, square_ok: bool = False) -> tuple[int, int]:
    """'HxW' (or 'N' for a square where `square_ok`) -> (H, W); DseError naming the form.

    Each command keeps its own `minimum`: what the network can take is checked later, by the
    command that knows the network.
    """
    parts = text.lower().replace(" ", "").split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if square_ok and len(sizes) == 1:
        sizes = sizes * 2
    if len(sizes) != 2:
        form = "HxW (or N for a square)" if square_ok else "HxW"
        raise DseError(f"--input-size must be {form} such as 64x64, got {text!r}")
    if min(sizes) < minimum:
        raise DseError(f"--input-size {text} is too small: use at least {minimum}x{minimum}")
    return sizes[0], sizes[1]


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
        # 2: a user mistake; an error class may set another code (3: an untrustworthy
        # measurement, nothing stored; profiling.verdict.UnstableProfileError)
        return int(getattr(exc, "exit_code", 2))
    return result if isinstance(result, int) else 0


def run() -> None:
    """`dse` console script."""
    sys.exit(main())
