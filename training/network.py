"""The MESS network: backbone segments between candidate exit positions, exit heads, final head.

Three ways to run it: every exit at once (`forward`, `forward_native`, `backbone_features`:
training and profiling), the confidence cascade for one configuration (`cascade`: later segments
really are skipped), and progressive outputs (`anytime`) or one static exit (`budgeted`).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.errors import TrainingError
from training.heads import (
    FINAL_EXIT,
    BlockFactory,
    ExitHead,
    ExitSpec,
    HeadSpec,
    PositionInfo,
    module_key,
)
from training.policy import ExitDecision, check_threshold


@dataclass(frozen=True, kw_only=True)
class CascadeConfig:
    """Kept early exits (ordered by position; the final exit is implicit) and the policy."""

    exits: tuple[str, ...]
    th_pix: tuple[float, ...] | float
    th_img: float

    def __post_init__(self) -> None:
        if FINAL_EXIT in self.exits:
            raise ValueError(f"exits must list early exits only; {FINAL_EXIT!r} is implicit")
        if len(set(self.exits)) != len(self.exits):
            raise ValueError(f"exits must not repeat an exit: {list(self.exits)}")
        if isinstance(self.th_pix, tuple):
            if len(self.th_pix) != len(self.exits):
                raise ValueError(f"th_pix needs one value per early exit ({len(self.exits)}), got {len(self.th_pix)}")
            values = self.th_pix
        else:
            values = (self.th_pix,)
        for value in values:
            if not 0.0 < float(value) <= 1.0:
                raise ValueError(f"th_pix must be in (0, 1], got {value}")
        if not 0.0 < float(self.th_img) <= 1.0:
            raise ValueError(f"th_img must be in (0, 1], got {self.th_img}")

    def th_pix_of(self, i: int) -> float:
        return float(self.th_pix[i] if isinstance(self.th_pix, tuple) else self.th_pix)


@dataclass(frozen=True)
class CascadeResult:
    """Logits at input size [N, C, H, W] and, per image, the exit that answered."""

    logits: Tensor
    exit_ids: list[str]


def upsample(logits: Tensor, size: list[int]) -> Tensor:
    """Bilinear upsampling of native logits to the input size (torchvision's convention).

    The one home of the exits' upsampling: training, the eager cascade, the profilers and the
    deployed module (which TorchScript compiles, hence `size` as a list of ints) all call it.
    """
    return F.interpolate(logits, size=[int(size[0]), int(size[1])], mode="bilinear",
                         align_corners=False)


class MessNetwork(nn.Module):
    """A segmentation network with candidate early exits; see docs/CONTRACTS.md "The network"."""

    def __init__(
        self,
        *,
        arch: str,
        num_classes: int,
        positions: Sequence[PositionInfo],
        segments: Sequence[nn.Module],
        final_head: nn.Module,
        head_space: Sequence[HeadSpec],
        block_factory: BlockFactory,
        final_skip: str | None = None,
        decision: ExitDecision | None = None,
    ) -> None:
        super().__init__()
        if len(segments) != len(positions) + 1:
            raise ValueError(f"segments must be len(positions) + 1 = {len(positions) + 1}, got {len(segments)}")
        self.arch = arch
        self.num_classes = num_classes
        self.positions = tuple(positions)
        self.head_space = tuple(head_space)
        self.segments = nn.ModuleList(segments)
        self.final_head = final_head
        self.final_skip = final_skip
        self.decision = decision if decision is not None else ExitDecision()
        self.heads = nn.ModuleDict()
        exits = []
        for pos in self.positions:
            for spec in self.head_space:
                exit_spec = ExitSpec(position=pos.name, head=spec)
                exits.append(exit_spec)
                self.heads[module_key(exit_spec.id)] = ExitHead(
                    spec, in_channels=pos.channels, num_classes=num_classes, block_factory=block_factory
                )
        self.exits = tuple(exits)
        self._index = {p.name: p.index for p in self.positions}
        self._exit_index = {e.id: self._index[e.position] for e in self.exits}
        self.key_map: dict[str, str] = {}  # original state-dict prefixes -> ours (set by adapters)

    # ----------------------------------------------------------------- lookups
    @property
    def exit_ids(self) -> tuple[str, ...]:
        return tuple(e.id for e in self.exits)

    def position_of(self, exit_id: str) -> PositionInfo:
        """The position an exit is attached to; TrainingError listing close matches if unknown."""
        return self.positions[self._check_exit(exit_id)]

    def head(self, exit_id: str) -> nn.Module:
        self._check_exit(exit_id)
        return self.heads[module_key(exit_id)]

    def _check_exit(self, exit_id: str) -> int:
        index = self._exit_index.get(exit_id)
        if index is None:
            close = difflib.get_close_matches(exit_id, self._exit_index, n=5, cutoff=0.5)
            hint = f"close matches: {', '.join(close)}" if close else f"e.g. {', '.join(list(self._exit_index)[:3])}"
            raise TrainingError(
                f"unknown exit {exit_id!r} for {self.arch} ({len(self._exit_index)} candidate exits; {hint})"
            )
        return index

    # ----------------------------------------------------------------- all exits
    def backbone_features(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """Feature at every position and the final exit's native logits, in one backbone pass."""
        features: dict[str, Tensor] = {}
        feat = x
        for pos, segment in zip(self.positions, self.segments, strict=False):
            feat = segment(feat)
            features[pos.name] = feat
        tail = self.segments[-1](feat)
        return features, self.final_logits(tail, features.get(self.final_skip) if self.final_skip else None)

    def run_head(self, exit_id: str, feature: Tensor) -> Tensor:
        """Native logits of one exit from the feature at its position."""
        return self.head(exit_id)(feature)

    def forward_native(self, x: Tensor) -> dict[str, Tensor]:
        features, final = self.backbone_features(x)
        out = {e.id: self.heads[module_key(e.id)](features[e.position]) for e in self.exits}
        out[FINAL_EXIT] = final
        return out

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        size = list(x.shape[-2:])
        return {k: upsample(v, size) for k, v in self.forward_native(x).items()}

    upsample = staticmethod(upsample)

    def final_logits(self, tail: Tensor, skip: Tensor | None) -> Tensor:
        """The final head's native logits from the tail output (and, for LR-ASPP, the skip
        feature at `final_skip`)."""
        if self.final_skip is None:
            return self.final_head(tail)
        return self.final_head({"low": skip, "high": tail})  # LR-ASPP reads two features

    # ----------------------------------------------------------------- cascade
    def cascade(self, x: Tensor, config: CascadeConfig) -> CascadeResult:
        """Input-dependent inference: each image leaves at its first confident kept exit.

        Images that left are dropped from the batch, and once every image has left, later
        segments and heads are not executed at all. Per image the logits equal those of the
        same exit in `forward` (in eval mode).
        """
        plan = self._plan(config.exits)
        th_img = check_threshold("th_img", config.th_img)
        n, size = x.shape[0], list(x.shape[-2:])
        out: Tensor | None = None
        taken = [FINAL_EXIT] * n
        active = torch.arange(n, device=x.device)
        feat, skip, done = x, None, 0
        for i, (exit_id, index) in enumerate(plan):
            feat, skip, done = self._advance(feat, skip, done, index + 1)
            logits = self.heads[module_key(exit_id)](feat)
            th_pix = check_threshold("th_pix", config.th_pix_of(i))
            leave = self.decision(logits, th_pix) >= th_img
            leaving = int(leave.sum())
            if leaving == 0:
                continue
            if leaving == active.numel():  # every image still running leaves: no indexing
                out = self._answer(out, active, upsample(logits, size), n)
                for r in active.tolist():
                    taken[r] = exit_id
                active = active[:0]
                break
            rows = active[leave]
            out = self._answer(out, rows, upsample(logits[leave], size), n)
            for r in rows.tolist():
                taken[r] = exit_id
            keep = ~leave
            active, feat = active[keep], feat[keep]
            skip = skip[keep] if skip is not None else None
        if active.numel() > 0:
            feat, skip, done = self._advance(feat, skip, done, len(self.positions) + 1)
            out = self._answer(out, active, upsample(self.final_logits(feat, skip), size), n)
        assert out is not None
        return CascadeResult(logits=out, exit_ids=taken)

    @staticmethod
    def _answer(out: Tensor | None, rows: Tensor, logits: Tensor, n: int) -> Tensor:
        """Put the answers of `rows` into the batch output; when they are the whole batch (always
        so at batch 1) the upsampled logits are the output as they are, without a copy."""
        if out is None:
            if rows.numel() == n:
                return logits
            out = logits.new_empty((n, *logits.shape[1:]))
        out[rows] = logits
        return out

    def _advance(self, feat: Tensor, skip: Tensor | None, done: int, until: int) -> tuple[Tensor, Tensor | None, int]:
        """Run segments done..until-1; remember the feature the final head also needs."""
        for s in range(done, until):
            feat = self.segments[s](feat)
            if self.final_skip is not None and s < len(self.positions) and self.positions[s].name == self.final_skip:
                skip = feat
        return feat, skip, until

    def _plan(self, exit_ids: Sequence[str]) -> list[tuple[str, int]]:
        plan = [(e, self._check_exit(e)) for e in exit_ids]
        order = [index for _, index in plan]
        if order != sorted(order):
            raise TrainingError(
                f"exits must be ordered along the backbone, got {list(exit_ids)} "
                f"(positions {[self.positions[i].name for i in order]})"
            )
        return plan

    # ----------------------------------------------------------------- anytime / budgeted
    def anytime(self, x: Tensor, exit_ids: Sequence[str]) -> Iterator[tuple[str, Tensor]]:
        """Yield (exit id, logits at input size) for each kept exit in turn; "final" may end the list.

        Work for an exit happens only when the caller asks for the next output.
        """
        early = [e for e in exit_ids if e != FINAL_EXIT]
        if FINAL_EXIT in exit_ids and exit_ids[-1] != FINAL_EXIT:
            raise TrainingError(f"{FINAL_EXIT!r} must be the last of the anytime exits, got {list(exit_ids)}")
        plan = self._plan(early)
        size = list(x.shape[-2:])
        feat, skip, done = x, None, 0
        for exit_id, index in plan:
            feat, skip, done = self._advance(feat, skip, done, index + 1)
            yield exit_id, upsample(self.heads[module_key(exit_id)](feat), size)
        if FINAL_EXIT in exit_ids:
            feat, skip, done = self._advance(feat, skip, done, len(self.positions) + 1)
            yield FINAL_EXIT, upsample(self.final_logits(feat, skip), size)

    def budgeted(self, exit_id: str) -> nn.Module:
        """A static network truncated at one exit (no final head), sharing this one's modules."""
        if exit_id == FINAL_EXIT:
            return BudgetedNetwork(list(self.segments), self.final_head, final_skip_index=self._skip_index())
        index = self._check_exit(exit_id)
        return BudgetedNetwork(list(self.segments[: index + 1]), self.heads[module_key(exit_id)])

    def _skip_index(self) -> int | None:
        return None if self.final_skip is None else self._index[self.final_skip]

class BudgetedNetwork(nn.Module):
    """Segments up to one exit then its head: logits at input size."""

    def __init__(self, segments: Sequence[nn.Module], head: nn.Module, *, final_skip_index: int | None = None) -> None:
        super().__init__()
        self.segments = nn.ModuleList(segments)
        self.head = head
        self.final_skip_index = final_skip_index

    def forward(self, x: Tensor) -> Tensor:
        size = list(x.shape[-2:])
        feat, skip = x, None
        for s, segment in enumerate(self.segments):
            feat = segment(feat)
            if s == self.final_skip_index:
                skip = feat
        logits = self.head(feat) if self.final_skip_index is None else self.head({"low": skip, "high": feat})
        return upsample(logits, size)
