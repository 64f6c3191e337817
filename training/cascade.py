"""The deployable early-exit network: only the kept segments, heads and decisions of a configuration.

`build_cascade_module(network, exits=..., th_pix=..., th_img=..., input_size=..., policy=...)`
cuts a `MessNetwork` down to one searched configuration: the backbone segments up to the last kept
exit (all of them when the final exit is kept), the kept heads with their exit decisions, and the
final head. Its forward has real data-dependent control flow (an image that left is never run
further), so `torch.jit.script` keeps the early exit (`training.export` writes the files).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from training.errors import TrainingError
from training.heads import FINAL_EXIT
from training.network import upsample
from training.policy import ExitPolicy

if TYPE_CHECKING:
    from training.network import MessNetwork


class ThresholdedDecision(nn.Module):
    """An exit's policy decision with its searched th_pix bound in: native logits -> c_img [N]."""

    def __init__(self, decision: nn.Module, th_pix: float) -> None:
        super().__init__()
        self.decision = decision
        self.th_pix = float(th_pix)

    def forward(self, native_logits: torch.Tensor) -> torch.Tensor:
        return self.decision(native_logits, self.th_pix)


class Upsample(nn.Module):
    """Native logits to the input size, exactly as the network's own upsampling."""

    def __init__(self, height: int, width: int) -> None:
        super().__init__()
        self.height = int(height)
        self.width = int(width)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return upsample(logits, [self.height, self.width])


class Stage(nn.Module):
    """Backbone segments between two exits; also passes on the feature LR-ASPP's final head
    reads (``skip``), taken after segment ``skip_at`` of this stage (-1: not in this stage)."""

    def __init__(self, segments: Sequence[nn.Module], *, skip_at: int = -1) -> None:
        super().__init__()
        self.segments = nn.ModuleList(segments)
        self.skip_at = int(skip_at)

    def forward(
        self, feature: torch.Tensor, skip: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        i = 0
        for segment in self.segments:
            feature = segment(feature)
            if i == self.skip_at:
                skip = feature
            i += 1  # noqa: SIM113 - enumerate(ModuleList) does not script
        return feature, skip


class PlainHead(nn.Module):
    """An exit head (or a final head) that reads only the last feature."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, feature: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.head(feature)


class SkipHead(nn.Module):
    """LR-ASPP's final head: reads the last feature and an earlier one."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, feature: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.head({"low": skip, "high": feature})


class CascadeModule(nn.Module):
    """A searched configuration as a standalone network with real early exit.

    ``forward(images [N, 3, H, W]) -> (logits [N, C, H, W], exit_index [N] int64)`` where
    ``exit_ids[exit_index[n]]`` is the exit image n left at. Stage j runs the backbone segments
    from the previous exit to exit j; the last exit (the final head, or the last kept exit of a
    budgeted configuration) answers every image still running. ``policy`` is the exit policy its
    decisions apply (for the export's metadata; TorchScript leaves it out).
    """

    __jit_ignored_attributes__ = ["policy"]

    def __init__(
        self,
        *,
        stages: Sequence[Stage],
        heads: Sequence[nn.Module],
        decisions: Sequence[nn.Module],
        upsample: Sequence[nn.Module],
        th_img: float,
        exit_ids: Sequence[str],
        num_classes: int,
        uses_skip: bool = False,
        policy: ExitPolicy | None = None,
    ) -> None:
        super().__init__()
        k = len(exit_ids)
        if not (len(stages) == len(heads) == len(upsample) == k and len(decisions) == k - 1):
            raise ValueError("stages/heads/upsample: need one per exit, decisions one per early exit")
        self.early_stages = nn.ModuleList(stages[:-1])
        self.early_heads = nn.ModuleList(heads[:-1])
        self.decisions = nn.ModuleList(decisions)
        self.early_upsample = nn.ModuleList(upsample[:-1])
        self.last_stage = stages[-1]
        self.last_head = heads[-1]
        self.last_upsample = upsample[-1]
        self.th_img = float(th_img)
        self.num_classes = int(num_classes)
        self.exit_ids = list(exit_ids)
        self.uses_skip = bool(uses_skip)
        self.policy = policy if policy is not None else ExitPolicy()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.shape[0] == 1:
            return self._single(images)
        return self._batch(images)

    def _single(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One image, the deployed case: the answering exit's upsampled logits are the output
        (no output buffer, no index bookkeeping), so the cascade pays what the latency model
        adds up: segments, heads and decisions on the way, one upsampling."""
        feature = images
        skip = images
        j = 0
        for stage, head, decision, up in zip(  # noqa: B905 - see _batch
            self.early_stages, self.early_heads, self.decisions, self.early_upsample
        ):
            feature, skip = stage(feature, skip)
            logits = head(feature)
            if bool(decision(logits)[0] >= self.th_img):
                return up(logits), torch.full([1], j, dtype=torch.int64, device=images.device)
            j += 1  # noqa: SIM113 - enumerate(zip(ModuleList...)) does not script
        feature, skip = self.last_stage(feature, skip)
        last = len(self.exit_ids) - 1
        return (self.last_upsample(self.last_head(feature, skip)),
                torch.full([1], last, dtype=torch.int64, device=images.device))

    def _batch(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = images.shape[0]
        out = torch.zeros(
            [n, self.num_classes, images.shape[2], images.shape[3]],
            dtype=images.dtype, device=images.device,
        )
        exit_index = torch.full([n], len(self.exit_ids) - 1, dtype=torch.int64,
                                device=images.device)
        running = torch.arange(n, device=images.device)
        feature = images
        skip = images  # replaced by the stage that computes the skip feature, when there is one
        j = 0
        # zip without strict=: TorchScript does not know it (the lengths are checked in __init__).
        for stage, head, decision, up in zip(  # noqa: B905
            self.early_stages, self.early_heads, self.decisions, self.early_upsample
        ):
            feature, skip = stage(feature, skip)
            logits = head(feature)
            leave = decision(logits) >= self.th_img
            if bool(leave.any()):
                left = running[leave]
                out[left] = up(logits[leave])
                exit_index[left] = j
                stay = ~leave
                running = running[stay]
                feature = feature[stay]
                if self.uses_skip:
                    skip = skip[stay]
                if running.numel() == 0:
                    return out, exit_index
            j += 1  # noqa: SIM113 - enumerate(zip(ModuleList...)) does not script
        feature, skip = self.last_stage(feature, skip)
        out[running] = self.last_upsample(self.last_head(feature, skip))
        return out, exit_index


def _head_module(network: MessNetwork, exit_id: str) -> nn.Module:
    return network.head(exit_id)  # TrainingError with close matches when unknown


def _position_index_by_name(network: MessNetwork, name: str) -> int:
    for info in network.positions:
        if info.name == name:
            return int(info.index)
    raise TrainingError(f"position {name!r} is not in this network")


def _position_index(network: MessNetwork, exit_id: str) -> int:
    from training.heads import ExitSpec

    try:
        position = ExitSpec.parse(exit_id).position
    except ValueError as exc:
        raise TrainingError(f"exit id {exit_id!r} is not valid ({exc})") from exc
    network.position_of(exit_id)  # TrainingError with close matches when unknown
    return _position_index_by_name(network, position)


def build_cascade_module(
    network: MessNetwork,
    *,
    exits: Sequence[str],
    th_pix: Sequence[float],
    th_img: float,
    input_size: tuple[int, int],
    policy: ExitPolicy | None = None,
) -> CascadeModule:
    """Cut a MessNetwork down to one configuration (shares its parameters; copy to detach).

    Args:
        network: the over-provisioned MessNetwork.
        exits: kept early exit ids in backbone order, then ``"final"`` (or, for a budgeted
            configuration, the last kept exit, which then answers every image).
        th_pix: one pixel threshold per early exit (every exit but the last).
        th_img: image threshold shared by the early exits.
        input_size: (H, W) the logits are upsampled to.
        policy: the exit policy the configuration was profiled with (the stored profile's;
            None: the network's own decision).

    Returns:
        A CascadeModule in eval mode, on the network's device.

    Raises:
        TrainingError: an exit not in the network, exits out of order, wrong threshold count.
    """
    policy = policy if policy is not None else network.decision.policy
    exits = list(exits)
    if not exits:
        raise TrainingError("a configuration needs at least one exit")
    if FINAL_EXIT in exits[:-1]:
        raise TrainingError("the final exit can only be the last exit of a configuration")
    if len(th_pix) != len(exits) - 1:
        raise TrainingError(
            f"{len(exits) - 1} early exit(s) need as many th_pix values, got {len(th_pix)}"
        )
    num_positions = len(network.positions)
    ends = [num_positions if e == FINAL_EXIT else _position_index(network, e) for e in exits]
    if any(b <= a for a, b in zip(ends, ends[1:], strict=False)):
        raise TrainingError(f"exits must be at strictly increasing positions: {exits}")
    height, width = (int(v) for v in input_size)
    final_skip = network.final_skip
    uses_skip = exits[-1] == FINAL_EXIT and final_skip is not None
    skip_index = _position_index_by_name(network, str(final_skip)) if uses_skip else -1
    stages: list[Stage] = []
    heads: list[nn.Module] = []
    start = 0
    for exit_id, end in zip(exits, ends, strict=True):
        stages.append(Stage(
            [network.segments[i] for i in range(start, end + 1)],
            skip_at=skip_index - start if start <= skip_index <= end else -1,
        ))
        head = _head_module(network, exit_id) if exit_id != FINAL_EXIT else network.final_head
        heads.append(head)
        start = end + 1
    heads[-1] = SkipHead(heads[-1]) if uses_skip else PlainHead(heads[-1])
    decisions = [ThresholdedDecision(policy.decision(), t) for t in th_pix]
    module = CascadeModule(
        stages=stages, heads=heads, decisions=decisions,
        upsample=[Upsample(height, width) for _ in exits], th_img=th_img,
        exit_ids=exits, num_classes=int(network.num_classes), uses_skip=uses_skip,
        policy=policy,
    )
    return module.eval()
