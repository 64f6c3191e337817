"""MobileNet adapters: dilated MobileNetV2 (ours, output stride 8) and torchvision's
MobileNetV3-Large segmentation models (DeepLabV3, LR-ASPP; output stride 16), cut at every
inverted residual."""

from __future__ import annotations

from torch import nn
from torchvision.models import mobilenetv2 as tv_mbv2
from torchvision.models import mobilenetv3 as tv_mbv3
from torchvision.models import segmentation as tv_seg
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead

from training._backbone import (
    BackboneParts,
    dilate_block,
    dilate_to_output_stride,
    fetch_online,
    fetch_pretrained_model,
)


def inverted_residual(channels: int, dilation: int, *, expand_ratio: int = 6) -> nn.Module:
    """A stride-1 MobileNetV2 inverted residual (dilation patched in: torchvision has none)."""
    return dilate_block(tv_mbv2.InvertedResidual(channels, channels, 1, expand_ratio), dilation)


def inverted_residual_x4(channels: int, dilation: int) -> nn.Module:
    """MobileNetV3's blocks expand ~4x on average; same residual structure."""
    return inverted_residual(channels, dilation, expand_ratio=4)


def mobilenet_v2(kind: str, *, num_classes: int, pretrained_backbone: bool) -> BackboneParts:
    """Dilated MobileNetV2 (17 inverted residuals, output stride 8) with an FCN or DeepLabV3 head.

    The classifier's last 1x1 conv (320 -> 1280 channels) is dropped: the head reads the 320
    channels of the last block, which keeps the final head light as in DRN-style MobileNetV2.
    """
    if pretrained_backbone:
        net = fetch_online(
            "ImageNet weights for mobilenet_v2",
            lambda: tv_mbv2.mobilenet_v2(weights=tv_mbv2.MobileNet_V2_Weights.DEFAULT),
        )
    else:
        net = tv_mbv2.mobilenet_v2(weights=None)
    features = net.features
    blocks = [(f"features.{i}", features[i]) for i in range(1, len(features) - 1)]
    dilate_to_output_stride([b for _, b in blocks], start_stride=2, output_stride=8)
    channels = features[-2].out_channels
    head = FCNHead(channels, num_classes) if kind == "fcn" else DeepLabHead(channels, num_classes)
    return BackboneParts(
        stem=[("features.0", features[0])],
        blocks=blocks,
        tail=[],
        final_head=head,
        block_factory=inverted_residual,
        ignored_prefixes=("features.18.", "classifier."),
    )


def mobilenet_v3_large(kind: str, *, num_classes: int, pretrained_backbone: bool, pretrained: bool) -> BackboneParts:
    """torchvision's DeepLabV3 / LR-ASPP on MobileNetV3-Large; aux head dropped."""
    build, weights_enum = {
        "deeplabv3": (tv_seg.deeplabv3_mobilenet_v3_large, tv_seg.DeepLabV3_MobileNet_V3_Large_Weights),
        "lraspp": (tv_seg.lraspp_mobilenet_v3_large, tv_seg.LRASPP_MobileNet_V3_Large_Weights),
    }[kind]
    name = f"{kind}_mobilenet_v3_large"
    extra = {"aux_loss": False} if kind == "deeplabv3" else {}
    if pretrained:
        model = fetch_pretrained_model(name, build, weights_enum, num_classes=num_classes)
    elif pretrained_backbone:
        model = fetch_online(
            "ImageNet weights for mobilenet_v3_large",
            lambda: build(weights=None, weights_backbone=tv_mbv3.MobileNet_V3_Large_Weights.DEFAULT, num_classes=num_classes, **extra),
        )
    else:
        model = build(weights=None, weights_backbone=None, num_classes=num_classes, **extra)
    layers = list(model.backbone.named_children())  # IntermediateLayerGetter over `features`
    stem = [(f"features.{layers[0][0]}", layers[0][1])]
    blocks = [(f"features.{n}", m) for n, m in layers[1:-1]]
    tail = [(f"features.{layers[-1][0]}", layers[-1][1])]
    final_skip = None
    if kind == "lraspp":
        low = model.backbone.return_layers
        final_skip = next(f"features.{n}" for n, out in low.items() if out == "low")
    return BackboneParts(
        stem=stem,
        blocks=blocks,
        tail=tail,
        final_head=model.classifier,
        block_factory=inverted_residual_x4,
        rename=_features_key,
        final_skip=final_skip,
    )


def _features_key(key: str) -> str:
    """torchvision's segmentation keys `backbone.3.block...` -> `features.3.block...`."""
    return "features." + key.removeprefix("backbone.") if key.startswith("backbone.") else key
