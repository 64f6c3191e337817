"""FLOPs and parameters per component of a MESS network, with `torch.utils.flop_counter`.

Convention: `gflops` counts one multiply-add as one FLOP (flop_counter's total / 2), as
torchvision's model tables and the MESS paper do. Segments, heads and the final head are
counted by flop_counter; the exit decision is elementwise work flop_counter ignores, so its
operations are estimated by `ExitDecision.operations`. The bilinear upsampling of an exit's (or the
final head's) logits to the input size is a component of its own (kind "upsample"): the cascade
pays it for the one exit an image leaves at, and it is timed like the rest; flop_counter counts no
multiply-adds for it, so its `gflops` is 0, like torchvision's model tables. The network's FLOPs
equal the sum of its segments and final head; an exit adds its head and decision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from training.heads import FINAL_EXIT, module_key, num_params
from training.network import MessNetwork, upsample

COMPONENT_KINDS = ("segment", "head", "decision", "final", "upsample")
TAIL = "tail"


@dataclass(frozen=True, kw_only=True)
class Component:
    """Cost of one part of the network at one input shape (batch 1).

    Attributes:
        kind: "segment" | "head" | "decision" | "final" | "upsample".
        name: position the segment ends at or "tail"; exit id for heads, decisions and upsamples;
            "final" for the final head and its upsampling.
        position: position name the component reads from or ends at ("tail" for the tail, the
            final head and its upsampling).
        channels: channels of that feature (segment: its output; head/decision/final: input;
            upsample: the logits' classes).
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
    return _count(fn, *args)[0]


def _count(fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    """GFLOPs of one call and its output."""
    with FlopCounterMode(display=False) as counter:
        out = fn(*args)
    return counter.get_total_flops() / 2 / 1e9, out


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
    gflops, final_logits = _count(network.final_logits, feat, skip)
    out.append(_component("final", FINAL_EXIT, TAIL, feat, h, gflops, network.final_head))
    out.append(_upsample(FINAL_EXIT, TAIL, final_logits, input_size))
    # same head on the same feature shape: same cost and logits shape, counted once
    head_costs: dict[tuple[str, tuple[int, ...]], tuple[float, Tensor]] = {}
    for exit_spec in network.exits:
        head = network.heads[module_key(exit_spec.id)]
        feature = features[exit_spec.position]
        key = (exit_spec.head.id, tuple(feature.shape))
        if key not in head_costs:
            head_costs[key] = _count(head, feature)
        gflops, logits = head_costs[key]
        out.append(_component("head", exit_spec.id, exit_spec.position, feature, h, gflops, head))
        logits_h, logits_w = feature.shape[-2:]
        ops = network.decision.operations(num_classes=network.num_classes, height=logits_h, width=logits_w)
        out.append(_component("decision", exit_spec.id, exit_spec.position, feature, h, ops / 1e9, network.decision))
        out.append(_upsample(exit_spec.id, exit_spec.position, logits, input_size))
    return out


def _upsample(name: str, position: str, logits: Tensor, input_size: tuple[int, int]) -> Component:
    """The bilinear upsampling of native logits to the input size (no parameters)."""
    gflops = count_gflops(upsample, logits, list(input_size))
    return Component(kind="upsample", name=name, position=position, channels=int(logits.shape[1]),
                     stride=max(1, round(input_size[0] / logits.shape[-2])), gflops=gflops, params=0)


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
