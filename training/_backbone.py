"""What every backbone adapter hands to the network: ordered blocks, stem, tail, final head.

The adapters (`_resnet.py`, `_mobilenet.py`, `_efficientnet.py`, `_torchvision.py`) only describe
a backbone as `BackboneParts`; `split_segments` turns it into the segments between the chosen
exit positions. Modules are moved, never copied, so pretrained weights survive the split.
"""

from __future__ import annotations

import socket
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from torch import nn

from training.errors import TrainingError
from training.heads import BlockFactory, module_key

Named = tuple[str, nn.Module]
T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class BackboneParts:
    """A backbone cut into its blocks (the candidate positions), in order.

    Attributes:
        stem: modules before the first block (run by segment 0).
        blocks: (module path, block) for every candidate position.
        tail: modules after the last block (run by the tail segment).
        final_head: the network's own segmentation head (features -> native logits).
        block_factory: one extra block of the backbone's type for exit heads.
        rename: maps a key of the original model's state dict to a module path of the blocks
            (e.g. strips torchvision's "backbone."); None when the keys already are.
        head_prefix: prefix of the final head's keys in the original model's state dict.
        final_skip: position whose feature the final head also reads (LR-ASPP), or None.
        flat_keys: map every original parameter key on its own (torch.fx pieces keep the
            original module paths inside them) instead of by module-path prefix.
    """

    stem: list[Named]
    blocks: list[Named]
    tail: list[Named]
    final_head: nn.Module
    block_factory: BlockFactory
    rename: Callable[[str], str] | None = None
    head_prefix: str = "classifier."
    final_skip: str | None = None
    ignored_prefixes: tuple[str, ...] = field(default=("aux_classifier.", "fc."))
    flat_keys: bool = False  # blocks keep the original parameter paths inside (torch.fx pieces)


def split_segments(parts: BackboneParts, kept: Sequence[int]) -> tuple[list[nn.Sequential], dict[str, str]]:
    """Segments ending at the kept block indices (plus the tail), and the state-dict key map.

    Returns:
        (segments, key_map): `len(kept) + 1` sequentials; key_map maps an original module path
        prefix ("layer1.0.") to its path inside the network ("segments.1.layer1_0.").
    """
    segments: list[nn.Sequential] = []
    key_map: dict[str, str] = {}
    pending: list[Named] = list(parts.stem)
    ends = set(kept)
    for i, named in enumerate(parts.blocks):
        pending.append(named)
        if i in ends:
            segments.append(_sequential(pending, len(segments), key_map, parts.flat_keys))
            pending = []
    pending.extend(parts.tail)
    segments.append(_sequential(pending, len(segments), key_map, parts.flat_keys))
    key_map[parts.head_prefix] = "final_head."
    return segments, key_map


def _sequential(named: list[Named], index: int, key_map: dict[str, str], flat_keys: bool) -> nn.Sequential:
    for name, module in named:
        ours = f"segments.{index}.{module_key(name)}."
        if flat_keys:
            key_map.update({key: ours + key for key in module.state_dict()})
        else:
            key_map[f"{name}."] = ours
    return nn.Sequential(OrderedDict((module_key(name), module) for name, module in named))


def dilate_to_output_stride(blocks: Sequence[nn.Module], *, start_stride: int, output_stride: int = 8) -> None:
    """Turn strided blocks past `output_stride` into dilated ones, in place (DRN-style).

    As torchvision's `replace_stride_with_dilation`: the block that would downsample keeps the
    previous dilation and stride 1; the blocks after it use the doubled dilation. Works on any
    block made of `nn.Conv2d` (basic, bottleneck, inverted residual), which torchvision's
    BasicBlock and MobileNetV2 blocks do not support themselves.
    """
    stride, dilation = start_stride, 1
    for block in blocks:
        convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
        block_stride = max((c.stride[0] for c in convs), default=1)
        if block_stride > 1 and stride * block_stride > output_stride:
            for conv in convs:
                conv.stride = (1, 1)
            _set_dilation(convs, dilation)
            dilation *= block_stride
        else:
            stride *= block_stride
            if dilation > 1:
                _set_dilation(convs, dilation)


def _set_dilation(convs: list[nn.Conv2d], dilation: int) -> None:
    for conv in convs:
        k = conv.kernel_size[0]
        if k > 1:
            conv.dilation = (dilation, dilation)
            conv.padding = (dilation * (k - 1) // 2, dilation * (k - 1) // 2)


def dilate_block(block: nn.Module, dilation: int) -> nn.Module:
    """Set the dilation of every spatial conv of a stride-1 block (for exit-head blocks)."""
    if dilation > 1:
        _set_dilation([m for m in block.modules() if isinstance(m, nn.Conv2d)], dilation)
    return block


def fetch_online(what: str, load: Callable[[], T], *, timeout_s: float = 10.0) -> T:
    """Run a download with a short socket timeout; offline gives a TrainingError, not a hang."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        return load()
    except (OSError, TimeoutError, RuntimeError) as exc:  # URLError is an OSError
        raise TrainingError(
            f"could not download {what} ({type(exc).__name__}: {exc}); this machine seems offline: "
            "pass --weights PATH with a local state-dict file instead"
        ) from exc
    finally:
        socket.setdefaulttimeout(previous)


def fetch_pretrained_model(name: str, build: Callable[..., T], weights_enum: Any, *, num_classes: int) -> T:
    """A torchvision segmentation model with its own pretrained weights (classes must match)."""
    categories = len(weights_enum.DEFAULT.meta["categories"])
    if num_classes != categories:
        raise TrainingError(
            f"torchvision's pretrained {name} has {categories} classes, not {num_classes}: "
            f"pass --num-classes {categories} or load your own --weights PATH"
        )
    return fetch_online(f"torchvision weights for {name}", lambda: build(weights=weights_enum.DEFAULT))
