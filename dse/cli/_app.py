"""The typer application and the one place where user errors become exit codes."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.progress import Progress, TextColumn
from rich.table import Table
from typer._click import ClickException  # typer vendors click; no separate package
from typer._click.exceptions import NoArgsIsHelpError
from typer.core import TyperOption

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
# Markup is off on both consoles, for every print: names, paths and messages (user strings, or
# read from a store) are printed as they are, never parsed as rich markup (a name holding a lone
# closing tag used to crash a command, a colour tag to style it). Style with rich.text.Text.
# Progress columns and spinners parse their own text: build them with `plain_column` / Text.
console = Console(markup=False)
err_console = Console(stderr=True, markup=False)


def _flag_type(self: TyperOption, ctx: Any) -> str | None:
    """A flag takes no value: show none (typer's help prints `<bool>` after every flag)."""
    if self.is_flag and self.metavar is None:
        return None
    return _option_type(self, ctx)


_option_type = TyperOption.display_type_rich
TyperOption.display_type_rich = _flag_type  # type: ignore[method-assign]


@contextmanager
def step_progress(description: str, *, disable: bool = False,
                  every_s: float = 10.0) -> Iterator[Callable[..., None]]:
    """A `(done, total)` callback for a long step, so that it is never silent.

    On a terminal, a transient bar on stderr. In a pipe or a CI log, where a bar draws nothing
    until the end, a `description: done/total` line on stderr every `every_s` seconds; a step
    that ends sooner prints nothing (a user error stays one line).
    """
    if disable:
        yield lambda done, total=None: None
        return
    if err_console.is_terminal:
        with Progress(console=err_console, transient=True) as bar:
            task = bar.add_task(description, total=None)
            yield lambda done, total=None: bar.update(task, completed=done, total=total)
        return
    last = [time.monotonic()]

    def line(done: int, total: int | None = None) -> None:
        now = time.monotonic()
        if now - last[0] >= every_s:
            last[0] = now
            of = f"/{total}" if total else ""
            err_console.print(f"{description}: {done}{of}", markup=False, highlight=False)

    yield line


def package_version() -> str:
    """The installed mess-dse version (from its metadata, so pyproject.toml stays the source)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mess-dse")
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"mess-dse {package_version()}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_show_version,
                                          help="Print the mess-dse version and exit.")] = False,
) -> None:
    """Multi-Exit Semantic Segmentation: train once, find Pareto-optimal exits per device."""

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
ArchTrustOption = Annotated[
    str | None,
    typer.Option(
        "--arch-trust",
        help="Allow a checkpoint's traced architecture fx:package.module:factory (imports and runs "
        "that code); it must equal the one the checkpoint names.",
    ),
]


def plain_column(text_format: str) -> TextColumn:
    """A progress-bar text column that shows its fields as they are (no markup parsing)."""
    return TextColumn(text_format, markup=False)


def refuse_empty(**options: str | None) -> None:
    """DseError for an option given as an empty string, which would otherwise mean its default.

    Keys are option names without dashes and with `_` for `-` (data_root -> --data-root).
    """
    for key, value in options.items():
        if value is not None and not str(value).strip():
            flag = "--" + key.replace("_", "-")
            raise DseError(f"{flag} is empty; give a value or leave the option out")


def check_user_name(value: str, option: str) -> str:
    """A name the user gives for the store (device, model, study): DseError naming the option."""
    from db.records import check_name

    try:
        return check_name(value, field=option)
    except ValueError as exc:
        raise DseError(str(exc)) from exc


MAX_INPUT_SIDE = 8192  # above any segmentation benchmark (Cityscapes: 1024x2048); bounds memory


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
    if max(sizes) > MAX_INPUT_SIDE:
        raise DseError(f"--input-size {text} is too large: use at most {MAX_INPUT_SIDE} per side")
    return sizes[0], sizes[1]


def one_line(text: str) -> str:
    """A message as one printable line: control characters (newlines, escape sequences) that a
    user value carried into it are shown escaped, never acted on by the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text.strip())


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
    except NoArgsIsHelpError as exc:  # `dse` or `dse db` alone: the help, not a mistake
        typer.echo(exc.format_message())
        return 0
    except ClickException as exc:  # usage errors (a bad choice, a missing option): one line too
        err_console.print(f"error: {one_line(_usage_message(exc))}", markup=False, highlight=False,
                          soft_wrap=True)
        return exc.exit_code
    except _user_errors() as exc:
        err_console.print(f"error: {one_line(str(exc))}", markup=False, highlight=False,
                          soft_wrap=True)
        # 2: a user mistake; an error class may set another code (3: an untrustworthy
        # measurement, nothing stored; profiling.verdict.UnstableProfileError)
        return int(getattr(exc, "exit_code", 2))
    return result if isinstance(result, int) else 0


def _usage_message(exc: ClickException) -> str:
    """Click's message on one line, naming the help to read (`dse export --help`)."""
    text = " ".join(exc.format_message().split()).replace("Value error, ", "").rstrip(".")
    ctx = getattr(exc, "ctx", None)
    names: list[str] = []
    while ctx is not None and ctx.parent is not None:  # the root's name is how it was started
        names.insert(0, ctx.info_name or "")
        ctx = ctx.parent
    return f"{text}; see `{' '.join(['dse', *names, '--help'])}`"


def run() -> None:
    """`dse` console script."""
    sys.exit(main())
