"""`dse inspect ARCH`: candidate exit positions, head-space size, FLOPs and parameters per component.

The network is built on PyTorch's meta device: shapes only, no weights, so even ResNet-101 with
hundreds of candidate heads is costed in seconds without memory for its parameters.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from dse.cli._app import JsonOption, app, console, err_console, parse_input_size
from dse.errors import DseError

# training types (MessNetwork, Component) are not imported here: the CLI imports torch lazily.
MessNetwork = Any
Component = Any


def _split(text: str | None, option: str) -> list[str] | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise DseError(f"{option} is empty; give comma-separated names or leave the option out")
    return items


@app.command("inspect")
def inspect_command(
    arch: Annotated[str, typer.Argument(help="Architecture, e.g. deeplabv3_resnet50 (see the error for the list).")],
    input_size: Annotated[str, typer.Option("--input-size", help="HxW of the costed input.")] = "512x512",
    num_classes: Annotated[int, typer.Option("--num-classes", min=1, max=4096, help="Output classes.")] = 21,
    heads: Annotated[
        str | None, typer.Option("--heads", help="Comma-separated head ids instead of the default space.")
    ] = None,
    positions: Annotated[
        str | None, typer.Option("--positions", help="Comma-separated position names or globs (layer3.*).")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Show the candidate exits of ARCH and the GFLOPs/parameters of every component."""
    from training.adapters import build_network
    from training.flops import network_components

    size = parse_input_size(input_size, minimum=16, square_ok=True)
    with err_console.status(Text(f"costing {arch} at {size[0]}x{size[1]}...")):
        network = build_network(
            arch, num_classes=num_classes, head_space=_split(heads, "--heads"),
            positions=_split(positions, "--positions"), device="meta"
        )
        components = network_components(network, size)
    if json_output:
        for component in components:
            typer.echo(json.dumps(component.as_dict()))
        return
    _print_tables(network, components, size)


def _print_tables(network: MessNetwork, components: list[Component], size: tuple[int, int]) -> None:
    segments = {c.name: c for c in components if c.kind == "segment"}
    final = next(c for c in components if c.kind == "final")
    heads_at: dict[str, list[Component]] = defaultdict(list)
    for c in components:
        if c.kind == "head":
            heads_at[c.position].append(c)
    table = Table(title=f"{network.arch}: candidate exit positions at {size[0]}x{size[1]}")
    for column in ("position", "ch", "stride", "GFLOPs", "cum. GFLOPs", "params", "heads GFLOPs"):
        table.add_column(column, justify="left" if column == "position" else "right", no_wrap=True)
    cumulative = 0.0
    for pos in network.positions:
        seg = segments[pos.name]
        cumulative += seg.gflops
        costs = [h.gflops for h in heads_at[pos.name]]
        table.add_row(
            pos.name, str(pos.channels), str(pos.stride), f"{seg.gflops:.3f}", f"{cumulative:.3f}",
            f"{seg.params:,}", f"{min(costs):.3f}-{max(costs):.3f}",
        )
    tail = segments["tail"]
    cumulative += tail.gflops
    table.add_row("tail", str(tail.channels), str(tail.stride), f"{tail.gflops:.3f}", f"{cumulative:.3f}", f"{tail.params:,}", "")
    table.add_row("final", str(final.channels), str(final.stride), f"{final.gflops:.3f}", f"{cumulative + final.gflops:.3f}", f"{final.params:,}", "")
    console.print(table)
    _print_head_table(network, components)
    console.print(
        f"head space: {len(network.head_space)} heads x {len(network.positions)} positions = "
        f"{len(network.exits)} candidate exits; network without exits: {cumulative + final.gflops:.3f} GFLOPs "
        "(multiply-adds), "
        f"{sum(c.params for c in components if c.kind in ('segment', 'final')):,} parameters",
        highlight=False,
    )


def _print_head_table(network: MessNetwork, components: list[Component]) -> None:
    by_head: dict[str, list[Component]] = defaultdict(list)
    decisions: dict[str, float] = {}
    for c in components:
        if c.kind == "head":
            by_head[c.name.split("/", 1)[1]].append(c)
        elif c.kind == "decision":
            decisions[c.name] = c.gflops
    table = Table(title="exit heads, range over the positions (--json lists every exit)")
    table.add_column("head", no_wrap=True)
    for column in ("GFLOPs", "params", "decision GFLOPs"):
        table.add_column(column, justify="right", no_wrap=True)
    for spec in network.head_space:
        rows = by_head[spec.id]
        flops = [r.gflops for r in rows]
        params = [r.params for r in rows]
        decision = max(decisions[r.name] for r in rows)
        table.add_row(
            spec.id, f"{min(flops):.3f}-{max(flops):.3f}", f"{min(params):,}-{max(params):,}", f"<= {decision:.4f}"
        )
    console.print(table)
