"""Exit ids and exit heads: the four-knob head design space of the MESS method.

An exit is a position along the backbone plus a `HeadSpec`. Both have stable string ids
(`layer3.2/crm128-b1-rdi-fcn`) that the store, the reports and the CLI use as keys.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from torch import Tensor, nn
from torchvision.models.segmentation.deeplabv3 import ASPP

from training.errors import TrainingError

FINAL_EXIT = "final"
HEAD_KINDS = ("fcn", "deeplabv3")
MAX_BLOCKS = 3

# A factory for one extra block of the backbone's own type: (channels, dilation) -> module that
# keeps the channel count and the resolution.
BlockFactory = Callable[[int, int], nn.Module]

_HEAD_ID = re.compile(r"^(?:crm(?P<crm>[1-9][0-9]*)|nocrm)-b(?P<blocks>[0-9])(?P<rdi>-rdi)?-(?P<kind>[a-z0-9]+)$")


@dataclass(frozen=True, kw_only=True)
class HeadSpec:
    """One exit-head architecture.

    Attributes:
        crm: output channels of the channel-reduction module (1x1 conv), or None for no CRM.
        blocks: extra backbone-type blocks before the head, 0..3.
        rdi: rapid dilation increase in those blocks (dilations 2, 4, 8); needs blocks > 0.
        kind: "fcn" or "deeplabv3" (ASPP) head before the 1x1 classifier.
    """

    crm: int | None = None
    blocks: int = 0
    rdi: bool = False
    kind: str = "fcn"

    def __post_init__(self) -> None:
        if self.crm is not None and (isinstance(self.crm, bool) or not isinstance(self.crm, int) or self.crm <= 0):
            raise ValueError(f"crm must be None or a positive channel count, got {self.crm!r}")
        if isinstance(self.blocks, bool) or not isinstance(self.blocks, int) or not 0 <= self.blocks <= MAX_BLOCKS:
            raise ValueError(f"blocks must be an integer in 0..{MAX_BLOCKS}, got {self.blocks!r}")
        if not isinstance(self.rdi, bool):
            raise ValueError(f"rdi must be a bool, got {self.rdi!r}")
        if self.rdi and self.blocks == 0:
            raise ValueError("rdi needs blocks > 0 (it sets the dilation of the extra blocks)")
        if self.kind not in HEAD_KINDS:
            raise ValueError(f"kind must be one of {', '.join(HEAD_KINDS)}, got {self.kind!r}")

    @property
    def id(self) -> str:
        crm = "nocrm" if self.crm is None else f"crm{self.crm}"
        rdi = "-rdi" if self.rdi else ""
        return f"{crm}-b{self.blocks}{rdi}-{self.kind}"

    @property
    def dilations(self) -> tuple[int, ...]:
        """Dilation of each extra block: RDI grows it fast (2, 4, 8), otherwise 1."""
        return tuple(2 ** (k + 1) if self.rdi else 1 for k in range(self.blocks))

    @classmethod
    def parse(cls, head_id: str) -> HeadSpec:
        """Inverse of `id`; raises ValueError naming the expected form."""
        match = _HEAD_ID.match(head_id.strip())
        if match is None:
            raise ValueError(
                f"head id {head_id!r} is not of the form crm<N>|nocrm-b<0..3>[-rdi]-fcn|deeplabv3 "
                "(e.g. crm64-b1-rdi-fcn, nocrm-b0-deeplabv3)"
            )
        crm = match.group("crm")
        return cls(
            crm=None if crm is None else int(crm),
            blocks=int(match.group("blocks")),
            rdi=match.group("rdi") is not None,
            kind=match.group("kind"),
        )


@dataclass(frozen=True, kw_only=True)
class ExitSpec:
    """A candidate exit: a backbone position and the head attached there."""

    position: str
    head: HeadSpec

    def __post_init__(self) -> None:
        if not self.position or "/" in self.position or self.position == FINAL_EXIT:
            raise ValueError(f"position must be a block name such as 'layer3.2', got {self.position!r}")
        if not isinstance(self.head, HeadSpec):
            raise ValueError(f"head must be a HeadSpec, got {type(self.head).__name__}")

    @property
    def id(self) -> str:
        return f"{self.position}/{self.head.id}"

    @classmethod
    def parse(cls, exit_id: str) -> ExitSpec:
        position, sep, head = exit_id.strip().partition("/")
        if not sep:
            raise ValueError(f"exit id {exit_id!r} is not of the form <position>/<head id>, e.g. layer3.2/crm128-b1-rdi-fcn")
        return cls(position=position, head=HeadSpec.parse(head))


@dataclass(frozen=True, kw_only=True)
class PositionInfo:
    """A candidate exit position: block name, order along the backbone, feature shape."""

    name: str
    index: int
    channels: int
    stride: int

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("name must be a non-empty block name")
        if self.index < 0:
            raise ValueError(f"index must be >= 0, got {self.index}")
        if self.channels <= 0:
            raise ValueError(f"channels must be > 0, got {self.channels}")
        if self.stride <= 0:
            raise ValueError(f"stride must be > 0, got {self.stride}")


def default_head_space(*, crm_channels: Sequence[int | None] = (None, 64), max_blocks: int = 2) -> tuple[HeadSpec, ...]:
    """The default design space: 20 heads per position.

    crm in {off, 64} x (blocks, rdi) in {(0, no), (1, no), (1, yes), (2, no), (2, yes)} x
    kind in {fcn, deeplabv3}. Large enough to matter, small enough to train on a CPU; pass
    `max_blocks=3` or an explicit list for the paper's larger space.
    """
    specs = []
    for crm, blocks, rdi, kind in itertools.product(crm_channels, range(max_blocks + 1), (False, True), HEAD_KINDS):
        if rdi and blocks == 0:
            continue
        specs.append(HeadSpec(crm=crm, blocks=blocks, rdi=rdi, kind=kind))
    return tuple(specs)


def parse_head_space(items: Iterable[HeadSpec | str]) -> tuple[HeadSpec, ...]:
    """Head specs from specs or ids, duplicates dropped in order; TrainingError on a bad id."""
    specs: list[HeadSpec] = []
    for item in items:
        try:
            spec = item if isinstance(item, HeadSpec) else HeadSpec.parse(str(item))
        except ValueError as exc:
            raise TrainingError(f"bad head {item!r}: {exc}") from exc
        if spec not in specs:
            specs.append(spec)
    if not specs:
        raise TrainingError("the head space is empty: pass at least one head id such as nocrm-b0-fcn")
    return tuple(specs)


def _conv_bn_relu(cin: int, cout: int, kernel: int, *, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def head_width(channels: int) -> int:
    """Inner width of exit heads: a quarter of the input, as torchvision's FCNHead, 16..256."""
    return max(16, min(256, channels // 4))


class ExitHead(nn.Module):
    """CRM -> extra blocks (RDI) -> FCN or ASPP head -> 1x1 classifier, at native resolution."""

    def __init__(self, spec: HeadSpec, *, in_channels: int, num_classes: int, block_factory: BlockFactory) -> None:
        super().__init__()
        self.spec = spec
        channels = in_channels
        if spec.crm is None:
            self.crm: nn.Module = nn.Identity()
        else:
            self.crm = _conv_bn_relu(channels, spec.crm, 1)
            channels = spec.crm
        self.blocks = nn.Sequential(*(block_factory(channels, d) for d in spec.dilations))
        width = head_width(channels)
        if spec.kind == "fcn":
            self.head: nn.Module = nn.Sequential(_conv_bn_relu(channels, width, 3), nn.Dropout(0.1))
        else:
            # Exit ASPP: lighter rates than torchvision's (12, 24, 36) since early features are
            # larger and less semantic (our choice).
            self.head = nn.Sequential(ASPP(channels, (6, 12, 18), width), _conv_bn_relu(width, width, 3))
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, feature: Tensor) -> Tensor:
        return self.classifier(self.head(self.blocks(self.crm(feature))))


def module_key(name: str) -> str:
    """A ModuleDict / Sequential key for a dotted or slashed name (those characters are reserved)."""
    return name.replace(".", "_").replace("/", "__")


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "FINAL_EXIT",
    "HEAD_KINDS",
    "BlockFactory",
    "ExitHead",
    "ExitSpec",
    "HeadSpec",
    "PositionInfo",
    "default_head_space",
    "head_width",
    "module_key",
    "num_params",
    "parse_head_space",
]

