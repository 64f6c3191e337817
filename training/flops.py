"""FLOPs and parameters per component of a MESS network, with `torch.utils.flop_counter`.

Convention: `gflops` counts one multiply-add as one FLOP (flop_counter's total / 2), as
torchvision's model tables and the MESS paper do. Segments, heads and the final head are
counted by flop_counter; the exit decision is elementwise work flop_counter ignores, so its
operations are estimated by `ExitDecision.operations`. The network's FLOPs equal the sum of its
segments and final head; an exit adds its head and decision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from training.heads import FINAL_EXIT, module_key, num_params

if TYPE_CHECKING:
    from training.network import MessNetwork

COMPONENT_KINDS = ("segment", "head", "decision", "final")
TAIL = "tail"


@dataclass(frozen=True, kw_only=True)
class Component:
    """Cost of one part of the network at one input shape (batch 1).

    Attributes:
        kind: "segment" | "head" | "decision" | "final".
        name: position the segment ends at or "tail"; exit id for heads and decisions; "final".
        position: position name the component reads from or ends at ("tail" for the tail and
            the final head).
        channels: channels of that feature (segment: its output; head/decision/final: input).
        stride: output stride of that feature.
        gflops: multiply-adds / 1e9 (decision: elementwise operations / 1e9).
        params: trainable parameter count.
    """

    kind: str
    name: str
    position: str
    channels: int
    stride: int
    gflops: float
    params: int

    def __post_init__(self) -> None:
        if self.kind not in COMPONENT_KINDS:
            raise ValueError(f"kind must be one of {', '.join(COMPONENT_KINDS)}, got {self.kind!r}")
        if self.gflops < 0:
            raise ValueError(f"gflops must be >= 0, got {self.gflops}")
        if self.params < 0:
            raise ValueError(f"params must be >= 0, got {self.params}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "position": self.position,
            "channels": self.channels,
            "stride": self.stride,
            "gflops": self.gflops,
            "params": self.params,
        }


def count_gflops(fn: Callable[..., Any], *args: Any) -> float:
    """Multiply-adds of one call / 1e9, as counted by torch's flop counter."""
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops() / 2 / 1e9


def network_components(network: MessNetwork, input_size: tuple[int, int]) -> list[Component]:
    """Costs of every segment, head, decision and the final head at batch 1 and `input_size`.

    Runs the network once (shapes only when it lives on the meta device), in eval mode and
    without gradients; the training mode is restored afterwards.
    """
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            return _components(network, input_size)
    finally:
        network.train(was_training)


def _components(network: MessNetwork, input_size: tuple[int, int]) -> list[Component]:
    h, w = input_size
    device = next(network.parameters()).device
    feat: Tensor = torch.zeros(1, 3, h, w, device=device)
    out: list[Component] = []
    features: dict[str, Tensor] = {}
    for pos, segment in zip(network.positions, network.segments, strict=False):
        gflops = count_gflops(segment, feat)
        feat = segment(feat)
        features[pos.name] = feat
        out.append(_component("segment", pos.name, pos.name, feat, h, gflops, segment))
    tail_segment = network.segments[-1]
    gflops = count_gflops(tail_segment, feat)
    feat = tail_segment(feat)
    out.append(_component("segment", TAIL, TAIL, feat, h, gflops, tail_segment))
    skip = features.get(network.final_skip) if network.final_skip else None
    gflops = count_gflops(network._final, feat, skip)
    out.append(_component("final", FINAL_EXIT, TAIL, feat, h, gflops, network.final_head))
    head_gflops: dict[tuple[str, tuple[int, ...]], float] = {}  # same head, same feature shape
    for exit_spec in network.exits:
        head = network.heads[module_key(exit_spec.id)]
        feature = features[exit_spec.position]
        key = (exit_spec.head.id, tuple(feature.shape))
        if key not in head_gflops:
            head_gflops[key] = count_gflops(head, feature)
        gflops = head_gflops[key]
        out.append(_component("head", exit_spec.id, exit_spec.position, feature, h, gflops, head))
        logits_h, logits_w = feature.shape[-2:]
        ops = network.decision.operations(num_classes=network.num_classes, height=logits_h, width=logits_w)
        out.append(_component("decision", exit_spec.id, exit_spec.position, feature, h, ops / 1e9, network.decision))
    return out


def _component(kind: str, name: str, position: str, feat: Tensor, input_h: int, gflops: float, module: nn.Module) -> Component:
    return Component(
        kind=kind,
        name=name,
        position=position,
        channels=int(feat.shape[1]),
        stride=max(1, round(input_h / feat.shape[-2])),
        gflops=gflops,
        params=num_params(module),
    )
