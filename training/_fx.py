"""Generic adapter: any segmentation model traceable by torch.fx, split at named graph nodes.

A node is a valid split point (a "cut") when it is the only value computed so far that later
nodes still need, so each segment is a real module mapping one tensor to the next. Residual
blocks therefore only offer their outputs. The model's own head ends up in the tail segment
(the final head is the identity); a last `interpolate` back to the input size is removed because
the network upsamples every exit itself. The extra blocks of exit heads are basic residual
blocks, since a traced model has no block type of its own.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from torch import fx, nn

from training._backbone import BackboneParts, fetch_online
from training._resnet import basic_block
from training.errors import TrainingError

FX_PREFIX = "fx:"


def load_factory(arch: str) -> Callable[..., nn.Module]:
    """`fx:package.module:callable` -> the callable (called with num_classes=N)."""
    spec = arch.removeprefix(FX_PREFIX)
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr or module_name.startswith("."):
        raise TrainingError(
            f"a traced architecture is written fx:package.module:factory (an absolute module name), got {arch!r}"
        )
    try:
        module = importlib.import_module(module_name)
    except (ImportError, TypeError, ValueError, SyntaxError) as exc:
        raise TrainingError(f"cannot import {module_name!r} for {arch}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise TrainingError(f"{module_name!r} has no callable {attr!r} (from {arch})")
    return factory


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolic trace with the output reduced to one native-resolution logits tensor."""
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - tracing errors come in many types
        raise TrainingError(f"torch.fx cannot trace {type(model).__name__}: {type(exc).__name__}: {exc}") from exc
    graph = gm.graph
    output = next(n for n in graph.nodes if n.op == "output")
    value: Any = output.args[0]
    if isinstance(value, dict):
        if "out" not in value:
            raise TrainingError(f"the traced model returns a dict without 'out' (keys {sorted(value)})")
        value = value["out"]
    elif isinstance(value, (tuple, list)):
        value = value[0]
    while isinstance(value, fx.Node) and value.op == "call_function" and value.target is F.interpolate:
        value = value.args[0]
    if not isinstance(value, fx.Node):
        raise TrainingError("the traced model's output is not a tensor")
    output.args = (value,)
    graph.eliminate_dead_code()
    gm.recompile()
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise TrainingError(f"the traced model must take one input (the image), it takes {len(placeholders)}")
    return gm


def cut_points(gm: fx.GraphModule) -> list[fx.Node]:
    """Nodes that are the only live value at their point of the graph, in order."""
    nodes = [n for n in gm.graph.nodes if n.op not in ("get_attr", "output")]
    order = {n: i for i, n in enumerate(nodes)}
    last_use = [max((order.get(u, len(nodes)) for u in n.users), default=i) for i, n in enumerate(nodes)]
    cuts = []
    live_before = -1  # latest use of any value computed before position i
    for i, node in enumerate(nodes):
        if node.op != "placeholder" and live_before <= i and last_use[i] > i and i < len(nodes) - 1:
            cuts.append(node)
        live_before = max(live_before, last_use[i])
    return cuts


def _piece(gm: fx.GraphModule, nodes: list[fx.Node], start: fx.Node) -> fx.GraphModule:
    """A module computing `nodes` from the value of `start` (the previous cut or the input)."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {start: graph.placeholder("x")}

    def arg(node: fx.Node) -> fx.Node:
        if node not in env and node.op == "get_attr":  # parameters used functionally: copy in
            env[node] = graph.node_copy(node)
        return env[node]

    for node in nodes:
        env[node] = graph.node_copy(node, arg)
    graph.output(env[nodes[-1]])
    return fx.GraphModule(gm, graph)


def fx_parts(model: nn.Module) -> BackboneParts:
    """Every cut point of the traced model as a candidate position; the tail ends at the logits."""
    gm = trace(model)
    cuts = cut_points(gm)
    if not cuts:
        raise TrainingError(f"{type(model).__name__} has no point where one tensor carries everything; cannot split it")
    nodes = [n for n in gm.graph.nodes if n.op not in ("get_attr", "output")]
    index = {n: i for i, n in enumerate(nodes)}
    blocks: list[tuple[str, nn.Module]] = []
    start, previous = nodes[0], 0
    for cut in cuts:
        blocks.append((cut.name, _piece(gm, nodes[previous + 1 : index[cut] + 1], start)))
        start, previous = cut, index[cut]
    tail: list[tuple[str, nn.Module]] = []
    if previous + 1 < len(nodes):
        tail.append(("tail", _piece(gm, nodes[previous + 1 :], start)))
    return BackboneParts(
        stem=[], blocks=blocks, tail=tail, final_head=nn.Identity(), block_factory=basic_block, flat_keys=True
    )


def fx_arch_parts(arch: str, *, num_classes: int, pretrained_backbone: bool, pretrained: bool) -> BackboneParts:
    """Build `fx:package.module:factory` with num_classes and split it."""
    if pretrained_backbone or pretrained:
        raise TrainingError(f"{arch}: pretrained weights of traced models come from --weights PATH only")
    factory = load_factory(arch)
    try:
        model = fetch_online(f"the model of {arch}", lambda: factory(num_classes=num_classes))
    except TypeError as exc:
        raise TrainingError(f"{arch} must accept num_classes=N and return an nn.Module: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise TrainingError(f"{arch} returned {type(model).__name__}, not an nn.Module")
    return fx_parts(model)
