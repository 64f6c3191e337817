"""Every architecture family the README lists exports in every format and equals its cascade.

One small network per family (32x32 input, two positions, two head types), a configuration that
sends some images out early and keeps others: the TorchScript file, the rebuilt state-dict export
and the ONNX runner must route every image as `MessNetwork.cascade` does and return its logits.
"""

from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from training.adapters import build_network, build_traced_network, describe_positions
from training.export import build_cascade_module, export_cascade, load_state_dict_export
from training.network import CascadeConfig
from training.policy import ExitDecision, confidence_map

SIZE = (32, 32)
HEADS = ["nocrm-b0-fcn", "crm16-b1-deeplabv3"]

# One per backbone family x final-head type of the README's list (torchvision's ResNet-50/101
# share ResNet-50's Bottleneck blocks; ResNet-34 shares ResNet-18's BasicBlock).
ARCHS = [
    "fcn_resnet18",
    "deeplabv3_resnet50",
    "fcn_mobilenet_v2",
    "deeplabv3_mobilenet_v3_large",
    "lraspp_mobilenet_v3_large",
    "fcn_efficientnet_lite0",
    "deeplabv3_efficientnet_lite0",
    "fx",
]


class _Block(nn.Module):
    def __init__(self, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride, 1)
        self.bn = nn.BatchNorm2d(channels)
        self.down = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)) + self.down(x))


class _TinySeg(nn.Module):
    """Any traceable segmentation model, for the generic `fx:` adapter."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU())
        self.block1 = _Block(16)
        self.block2 = _Block(16, stride=2)
        self.block3 = _Block(16)
        self.classifier = nn.Conv2d(16, num_classes, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        y = self.block3(self.block2(self.block1(self.stem(x))))
        return {"out": F.interpolate(self.classifier(y), size=size, mode="bilinear")}


def _build(arch: str, seed: int):
    torch.manual_seed(seed)
    if arch == "fx":
        return build_traced_network(_TinySeg(), num_classes=3, head_space=HEADS,
                                    positions=["relu", "relu_1"]).eval()
    names = [p.name for p in describe_positions(arch)]
    return build_network(arch, num_classes=3, head_space=HEADS, positions=names[1:3]).eval()


def _images() -> torch.Tensor:
    return torch.randn(6, 3, *SIZE, generator=torch.Generator().manual_seed(1))


def _configuration(network, x: torch.Tensor) -> tuple[list[str], list[float], float]:
    """The first position's fcn head, the second's deeplabv3 head; thresholds in the middle of
    what this random network gives, so that some images leave at the first exit."""
    first = network.exit_ids[0]
    second = next(e for e in network.exit_ids if e.endswith(HEADS[1]) and
                  not e.startswith(first.split("/")[0] + "/"))
    with torch.no_grad():
        native = network.forward_native(x)[first]
        # Not a value any pixel holds exactly: ties may differ by one ulp across runtimes.
        th_pix = float(confidence_map(native).median()) + 1e-4
        c_img = sorted(set(ExitDecision()(native, th_pix).tolist()))
    assert len(c_img) > 1, "the seed should give images of different confidence"
    th_img = (c_img[len(c_img) // 2 - 1] + c_img[len(c_img) // 2]) / 2
    return [first, second], [th_pix, 0.5], th_img


@pytest.fixture(scope="module", params=ARCHS)
def case(request):
    network = _build(request.param, seed=0)
    x = _images()
    exits, th_pix, th_img = _configuration(network, x)
    with torch.no_grad():
        ref = network.cascade(x, CascadeConfig(exits=tuple(exits), th_pix=tuple(th_pix),
                                               th_img=th_img))
    assert len(set(ref.exit_ids)) > 1  # the configuration really exits early for some images
    module = build_cascade_module(network, exits=[*exits, "final"], th_pix=th_pix,
                                  th_img=th_img, input_size=SIZE)
    return request.param, network, module, x, ref


def _routes(module, index: torch.Tensor) -> list[str]:
    return [module.exit_ids[i] for i in index.tolist()]


def test_torchscript(case, tmp_path) -> None:
    _, _, module, x, ref = case
    out = tmp_path / "cascade.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_cascade(module, fmt="torchscript", out=out, metadata={}, example=x[:1])
    loaded = torch.jit.load(str(out))
    with torch.no_grad():
        logits, index = loaded(x)
        one, where = loaded(x[:1])  # the batch-1 path is scripted too
    assert _routes(module, index) == ref.exit_ids
    torch.testing.assert_close(logits, ref.logits, rtol=0, atol=1e-5)
    assert _routes(module, where) == ref.exit_ids[:1]
    torch.testing.assert_close(one, ref.logits[:1], rtol=0, atol=1e-5)


def test_state_dict(case, tmp_path) -> None:
    arch, _, module, x, ref = case
    out = tmp_path / "cascade.sd"
    export_cascade(module, fmt="state-dict", out=out, metadata={}, example=x[:1])
    rebuilt = load_state_dict_export(out, _build(arch, seed=123))  # other random weights
    with torch.no_grad():
        logits, index = rebuilt(x)
    assert _routes(module, index) == ref.exit_ids
    torch.testing.assert_close(logits, ref.logits, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_onnx(case, tmp_path) -> None:
    pytest.importorskip("onnx")
    _, _, module, x, ref = case
    out = tmp_path / "onnx"
    export_cascade(module, fmt="onnx", out=out, metadata={}, example=x[:1])
    spec = importlib.util.spec_from_file_location("run_cascade", out / "run_cascade.py")
    assert spec is not None and spec.loader is not None
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    cascade = runner.Cascade(out)
    logits, exit_ids = cascade(x.numpy())  # the batch, then each image alone
    assert exit_ids == ref.exit_ids
    torch.testing.assert_close(torch.from_numpy(logits), ref.logits, rtol=0, atol=1e-4)
    for n in range(x.shape[0]):
        logits, exit_ids = cascade(x[n : n + 1].numpy())
        assert exit_ids == ref.exit_ids[n : n + 1]
        torch.testing.assert_close(torch.from_numpy(logits), ref.logits[n : n + 1],
                                   rtol=0, atol=1e-4)
