"""ResNet adapters: dilated ResNet-18/34 (ours, output stride 8) and torchvision's ResNet-50/101
segmentation models (FCN, DeepLabV3), cut at every basic block / bottleneck."""

from __future__ import annotations

from torch import nn
from torchvision.models import resnet as tv_resnet
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

_SMALL = {
    "resnet18": (tv_resnet.resnet18, tv_resnet.ResNet18_Weights),
    "resnet34": (tv_resnet.resnet34, tv_resnet.ResNet34_Weights),
}
_LARGE = {
    ("fcn", "resnet50"): (tv_seg.fcn_resnet50, tv_seg.FCN_ResNet50_Weights, tv_resnet.ResNet50_Weights),
    ("fcn", "resnet101"): (tv_seg.fcn_resnet101, tv_seg.FCN_ResNet101_Weights, tv_resnet.ResNet101_Weights),
    ("deeplabv3", "resnet50"): (tv_seg.deeplabv3_resnet50, tv_seg.DeepLabV3_ResNet50_Weights, tv_resnet.ResNet50_Weights),
    ("deeplabv3", "resnet101"): (tv_seg.deeplabv3_resnet101, tv_seg.DeepLabV3_ResNet101_Weights, tv_resnet.ResNet101_Weights),
}


def basic_block(channels: int, dilation: int) -> nn.Module:
    """A stride-1 BasicBlock (torchvision's refuses dilation > 1, so its convs are patched)."""
    return dilate_block(tv_resnet.BasicBlock(channels, channels), dilation)


def bottleneck_block(channels: int, dilation: int) -> nn.Module:
    """A stride-1 Bottleneck that keeps `channels` (also when not divisible by 4)."""
    width = max(1, channels // 4)
    block = tv_resnet.Bottleneck(channels, width, dilation=dilation)
    if width * tv_resnet.Bottleneck.expansion != channels:
        block.conv3 = nn.Conv2d(width, channels, 1, bias=False)
        block.bn3 = nn.BatchNorm2d(channels)
    return block


def _blocks(resnet: nn.Module) -> list[tuple[str, nn.Module]]:
    named = []
    for layer in ("layer1", "layer2", "layer3", "layer4"):
        for j, block in enumerate(getattr(resnet, layer)):
            named.append((f"{layer}.{j}", block))
    return named


def _stem(resnet: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, getattr(resnet, name)) for name in ("conv1", "bn1", "relu", "maxpool")]


def small_resnet(depth: str, kind: str, *, num_classes: int, pretrained_backbone: bool) -> BackboneParts:
    """Dilated ResNet-18/34 with output stride 8 and a torchvision FCN or DeepLabV3 head."""
    build, weights_enum = _SMALL[depth]
    if pretrained_backbone:
        resnet = fetch_online(f"ImageNet weights for {depth}", lambda: build(weights=weights_enum.DEFAULT))
    else:
        resnet = build(weights=None)
    blocks = _blocks(resnet)
    dilate_to_output_stride([b for _, b in blocks], start_stride=4, output_stride=8)
    channels = resnet.fc.in_features
    head = FCNHead(channels, num_classes) if kind == "fcn" else DeepLabHead(channels, num_classes)
    return BackboneParts(stem=_stem(resnet), blocks=blocks, tail=[], final_head=head, block_factory=basic_block)


def large_resnet(depth: str, kind: str, *, num_classes: int, pretrained_backbone: bool, pretrained: bool) -> BackboneParts:
    """torchvision's FCN / DeepLabV3 on dilated ResNet-50/101 (output stride 8), aux head dropped."""
    build, weights_enum, backbone_enum = _LARGE[(kind, depth)]
    if pretrained:
        model = fetch_pretrained_model(f"{kind}_{depth}", build, weights_enum, num_classes=num_classes)
    elif pretrained_backbone:
        model = fetch_online(
            f"ImageNet weights for {depth}",
            lambda: build(weights=None, weights_backbone=backbone_enum.DEFAULT, num_classes=num_classes, aux_loss=False),
        )
    else:
        model = build(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)
    backbone = model.backbone
    return BackboneParts(
        stem=_stem(backbone),
        blocks=_blocks(backbone),
        tail=[],
        final_head=model.classifier,
        block_factory=bottleneck_block,
        rename=_strip_backbone,
    )


def _strip_backbone(key: str) -> str:
    return key.removeprefix("backbone.")
