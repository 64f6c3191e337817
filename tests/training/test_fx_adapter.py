"""Generic torch.fx adapter: split a traced model at the nodes where one tensor carries everything."""

import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from training.adapters import build_network, build_traced_network
from training.errors import TrainingError
from training.heads import FINAL_EXIT
from training.network import CascadeConfig


class Residual(nn.Module):
    def __init__(self, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride, 1)
        self.bn = nn.BatchNorm2d(channels)
        self.down = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)) + self.down(x))


class TinySeg(nn.Module):
    """A small FCN: stem, four residual blocks, classifier, upsampled to the input size."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU())
        self.block1 = Residual(8)
        self.block2 = Residual(8, stride=2)
        self.block3 = Residual(8)
        self.classifier = nn.Conv2d(8, num_classes, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        y = self.classifier(self.block3(self.block2(self.block1(self.stem(x)))))
        return {"out": F.interpolate(y, size=size, mode="bilinear", align_corners=False)}


@pytest.fixture
def model() -> TinySeg:
    torch.manual_seed(0)
    return TinySeg().eval()


def test_cuts_are_block_outputs_and_final_equals_the_model(model: TinySeg) -> None:
    net = build_traced_network(model, num_classes=3, head_space=["nocrm-b0-fcn"]).eval()
    names = [p.name for p in net.positions]
    # Nothing inside a residual block: only its sum and its output carry everything.
    assert names == ["stem_0", "stem_1", "add", "relu", "add_1", "relu_1", "add_2", "relu_2"]
    assert [p.stride for p in net.positions] == [2, 2, 2, 2, 4, 4, 4, 4]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = net(x)
        assert torch.allclose(out[FINAL_EXIT], model(x)["out"], atol=1e-5)
        assert out["relu/nocrm-b0-fcn"].shape == (2, 3, 32, 32)
        result = net.cascade(x, CascadeConfig(exits=("relu_1/nocrm-b0-fcn",), th_pix=0.01, th_img=1.0))
    assert result.exit_ids == ["relu_1/nocrm-b0-fcn"] * 2


def test_positions_pick_nodes_by_name(model: TinySeg) -> None:
    net = build_traced_network(model, num_classes=3, head_space=["crm4-b1-rdi-fcn"], positions=["relu*"])
    assert [p.name for p in net.positions] == ["relu", "relu_1", "relu_2"]
    with pytest.raises(TrainingError, match="no candidate position matches 'block1'"):
        build_traced_network(model, num_classes=3, positions=["block1"])


def test_fx_architecture_names_and_weights(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    module = types.ModuleType("tiny_seg_models")
    module.tiny = TinySeg  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tiny_seg_models", module)
    torch.manual_seed(0)
    original = TinySeg(num_classes=2)
    path = tmp_path / "tiny.pt"
    torch.save(original.state_dict(), path)
    net = build_network("fx:tiny_seg_models:tiny", num_classes=2, head_space=["nocrm-b0-fcn"], weights=path).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x)[FINAL_EXIT], original.eval()(x)["out"], atol=1e-5)
    with pytest.raises(TrainingError, match="has no callable 'missing'"):
        build_network("fx:tiny_seg_models:missing", num_classes=2)
    with pytest.raises(TrainingError, match="fx:package.module:factory"):
        build_network("fx:tiny_seg_models", num_classes=2)


def test_untraceable_model_is_a_training_error() -> None:
    class Branchy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x if x.sum() > 0 else -x

    with pytest.raises(TrainingError, match="torch.fx cannot trace Branchy"):
        build_traced_network(Branchy(), num_classes=2)
