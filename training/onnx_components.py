"""Every component of the latency model as its own ONNX graph, for timing under ONNX Runtime.

The search adds up per-component latencies (segments between candidate positions, every candidate
head, every exit decision, the upsampling of every exit's logits, the final head). To time them
under another runtime each one is exported once, with the input it sees in the network: a
segment reads the previous segment's output (the image for the first), a head the feature at its
position, a decision and an upsampling their head's native logits, the final head the tail output
(and, for LR-ASPP, the earlier feature it also reads). Each graph records where its inputs come
from (``source``: ``"image"`` or the key of the component whose first output it is), so a runner
with nothing but ONNX Runtime can feed every graph real activations by running its producers.

The decision graph is the one ``dse export --format onnx`` ships (`OnnxDecision`, same numbers as
the network's policy) and the upsampling graph is the cascade's own `Upsample`, so what is timed
is what is deployed.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from training.errors import TrainingError
from training.heads import FINAL_EXIT

if TYPE_CHECKING:
    from training.network import MessNetwork

TAIL = "tail"
IMAGE = "image"
# Threshold a decision graph is exported with: its cost does not depend on the value (the same
# one the torch latency profile times the decision with).
TIMING_TH_PIX = 0.9


def component_key(kind: str, name: str) -> str:
    """Display key of a component, e.g. ``segment:layer2.1``, ``head:layer2.1/nocrm-b0-fcn``."""
    return f"{kind}:{name}"


@dataclass(frozen=True, kw_only=True)
class GraphInput:
    """One input of a component graph: its name, static shape and where its value comes from."""

    name: str
    shape: tuple[int, ...]
    source: str  # IMAGE or the key of the component whose first output feeds it

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "source": self.source}


@dataclass(frozen=True, kw_only=True)
class ComponentGraph:
    """One exported component: kind, name, the graph file (relative) and its inputs."""

    kind: str
    name: str
    file: str
    inputs: tuple[GraphInput, ...]

    @property
    def key(self) -> str:
        return component_key(self.kind, self.name)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "key": self.key, "file": self.file,
                "inputs": [i.as_dict() for i in self.inputs]}


def export_order(network: MessNetwork) -> list[tuple[str, str]]:
    """Every component, producers before consumers, in the order a cascade meets them: at each
    position its segment, then each exit there (head, decision, upsampling); then the tail, the
    final head and its upsampling. (The timing round order is `profiling.protocol.cascade_order`,
    which training cannot import; a test checks the two agree.)"""
    order: list[tuple[str, str]] = []
    for position in network.positions:
        order.append(("segment", position.name))
        for spec in network.exits:
            if spec.position == position.name:
                order += [("head", spec.id), ("decision", spec.id), ("upsample", spec.id)]
    order += [("segment", TAIL), ("final", FINAL_EXIT), ("upsample", FINAL_EXIT)]
    return order


def _producers(network: MessNetwork) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """The components whose outputs one component's inputs need (direct producers only)."""
    names = [p.name for p in network.positions] + [TAIL]
    needs: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for i, name in enumerate(names):
        needs[("segment", name)] = [("segment", names[i - 1])] if i else []
    for spec in network.exits:
        needs[("head", spec.id)] = [("segment", spec.position)]
        needs[("decision", spec.id)] = [("head", spec.id)]
        needs[("upsample", spec.id)] = [("head", spec.id)]
    final = [("segment", TAIL)]
    if network.final_skip is not None:
        final.append(("segment", network.final_skip))
    needs[("final", FINAL_EXIT)] = final
    needs[("upsample", FINAL_EXIT)] = [("final", FINAL_EXIT)]
    return needs


def with_producers(network: MessNetwork, keys: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The requested components plus everything needed to compute their real inputs, in cascade
    order (a head needs the segments up to its position; a decision its head; ...).

    Raises:
        TrainingError: a component the network does not have, naming close matches.
    """
    needs = _producers(network)
    wanted: set[tuple[str, str]] = set()
    stack = list(keys)
    while stack:
        key = stack.pop()
        if key not in needs:
            import difflib

            close = difflib.get_close_matches(component_key(*key),
                                              [component_key(*k) for k in needs], n=3)
            hint = f"; close matches: {', '.join(close)}" if close else ""
            raise TrainingError(f"the network has no component {component_key(*key)}{hint}")
        if key not in wanted:
            wanted.add(key)
            stack += needs[key]
    return [key for key in export_order(network) if key in wanted]


class _Final(nn.Module):
    """The final head as a graph of named tensors (LR-ASPP's reads the skip feature too)."""

    def __init__(self, head: nn.Module, *, uses_skip: bool) -> None:
        super().__init__()
        self.head = head
        self.uses_skip = uses_skip

    def forward(self, feature: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.uses_skip:
            return self.head({"low": skip, "high": feature})
        return self.head(feature)


def _modules(network: MessNetwork, input_size: tuple[int, int]) -> dict[tuple[str, str], nn.Module]:
    from training._onnx_export import OnnxDecision
    from training.cascade import Upsample

    policy = network.decision
    modules: dict[tuple[str, str], nn.Module] = {}
    names = [p.name for p in network.positions] + [TAIL]
    for name, segment in zip(names, network.segments, strict=True):
        modules[("segment", name)] = segment
    decision = OnnxDecision(th_pix=TIMING_TH_PIX, edge_correction=policy.edge_correction,
                            edge_width=policy.edge_width, window=policy.window).eval()
    upsample = Upsample(*input_size).eval()
    for spec in network.exits:
        modules[("head", spec.id)] = network.head(spec.id)
        modules[("decision", spec.id)] = decision
        modules[("upsample", spec.id)] = upsample
    modules[("final", FINAL_EXIT)] = _Final(network.final_head,
                                           uses_skip=network.final_skip is not None)
    modules[("upsample", FINAL_EXIT)] = upsample
    return modules


def _sources(network: MessNetwork, key: tuple[str, str]) -> list[tuple[str, str]]:
    """Input name -> source key of one component, in argument order."""
    kind, name = key
    if kind == "segment":
        names = [p.name for p in network.positions] + [TAIL]
        i = names.index(name)
        return [("x", IMAGE if i == 0 else component_key("segment", names[i - 1]))]
    if kind == "head":
        return [("feature", component_key("segment", network.position_of(name).name))]
    if kind in ("decision", "upsample"):
        producer = ("final", FINAL_EXIT) if name == FINAL_EXIT else ("head", name)
        return [("logits", component_key(*producer))]
    sources = [("feature", component_key("segment", TAIL))]
    if network.final_skip is not None:
        sources.append(("skip", component_key("segment", network.final_skip)))
    return sources


def export_components(
    network: MessNetwork,
    folder: str | Path,
    *,
    input_size: tuple[int, int],
    batch: int = 1,
    keys: Sequence[tuple[str, str]] | None = None,
    seed: int = 0,
) -> list[ComponentGraph]:
    """Export components (all, or ``keys`` plus their producers) as ONNX graphs into ``folder``.

    Args:
        network: the over-provisioned MessNetwork (not modified: a copy is exported).
        folder: an existing folder; graphs are written as ``NNNN-kind.onnx``.
        input_size: (H, W) of the image; shapes are static, batch ``batch``.
        batch: images per run.
        keys: (kind, name) components to export (default: every component); the producers of
            their inputs are added.
        seed: of the random image the example activations are computed from.

    Returns:
        The graphs, in `export_order`.

    Raises:
        TrainingError: onnx missing, an unknown component, or one the exporter cannot express.
    """
    from training._onnx_export import _export, check_onnx_available

    check_onnx_available()
    if batch < 1:
        raise TrainingError(f"batch must be >= 1, got {batch}")
    folder = Path(folder)
    network = copy.deepcopy(network).eval().float()  # the exporter toggles train/eval
    order = with_producers(network, keys) if keys is not None else export_order(network)
    modules = _modules(network, input_size)
    generator = torch.Generator().manual_seed(seed)
    values: dict[str, torch.Tensor] = {
        IMAGE: torch.randn(batch, 3, *input_size, generator=generator)}
    graphs: list[ComponentGraph] = []
    with torch.no_grad():
        for index, (kind, name) in enumerate(order):
            sources = _sources(network, (kind, name))
            args = tuple(values[source] for _, source in sources)
            module = modules[(kind, name)]
            file = f"{index:04d}-{kind}.onnx"
            _export(module, args, folder / file, [n for n, _ in sources], ["out"])
            values[component_key(kind, name)] = module(*args)
            graphs.append(ComponentGraph(
                kind=kind, name=name, file=file,
                inputs=tuple(GraphInput(name=n, shape=tuple(int(d) for d in values[s].shape),
                                        source=s) for n, s in sources),
            ))
    return graphs
