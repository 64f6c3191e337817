"""FLOPs and parameters per component add up to the whole network."""

import pytest
import torch

from training.adapters import build_network
from training.flops import Component, count_gflops, network_components
from training.heads import FINAL_EXIT, num_params

HEADS = ["nocrm-b0-fcn", "crm16-b2-rdi-deeplabv3"]


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return build_network("fcn_mobilenet_v2", num_classes=3, head_space=HEADS, positions=["features.[3-9]"])


def test_components_cover_every_part(net) -> None:
    comps = network_components(net, (64, 64))
    kinds = [c.kind for c in comps]
    assert kinds.count("segment") == len(net.positions) + 1
    assert kinds.count("head") == kinds.count("decision") == len(net.exits)
    assert kinds.count("final") == 1
    segments = [c for c in comps if c.kind == "segment"]
    assert [c.name for c in segments] == [p.name for p in net.positions] + ["tail"]
    assert [(c.channels, c.stride) for c in segments[:-1]] == [(p.channels, p.stride) for p in net.positions]
    heads = {c.name: c for c in comps if c.kind == "head"}
    assert set(heads) == set(net.exit_ids)
    assert heads["features.3/crm16-b2-rdi-deeplabv3"].position == "features.3"
    assert all(c.gflops > 0 for c in comps if c.kind in ("head", "decision", "final"))


def test_full_network_flops_equal_the_sum_of_its_components(net) -> None:
    comps = network_components(net, (64, 64))
    x = torch.zeros(1, 3, 64, 64)
    backbone_and_final = sum(c.gflops for c in comps if c.kind in ("segment", "final"))
    with torch.no_grad():
        full = count_gflops(net.budgeted(FINAL_EXIT).eval(), x)
    assert backbone_and_final == pytest.approx(full, rel=1e-9)
    exit_id = "features.5/crm16-b2-rdi-deeplabv3"
    index = net.position_of(exit_id).index
    upto = sum(c.gflops for c in comps[: index + 1])
    head = next(c for c in comps if c.kind == "head" and c.name == exit_id)
    with torch.no_grad():
        truncated = count_gflops(net.budgeted(exit_id).eval(), x)
    assert upto + head.gflops == pytest.approx(truncated, rel=1e-9)


def test_parameters_add_up_and_mode_is_restored(net) -> None:
    net.train()
    comps = network_components(net, (32, 32))
    assert net.training
    assert sum(c.params for c in comps) == num_params(net)


def test_flops_scale_with_input_area(net) -> None:
    small = {c.name: c.gflops for c in network_components(net, (32, 32)) if c.kind == "segment"}
    large = {c.name: c.gflops for c in network_components(net, (64, 64)) if c.kind == "segment"}
    assert large["features.3"] == pytest.approx(4 * small["features.3"], rel=1e-6)


def test_component_validation() -> None:
    with pytest.raises(ValueError, match="kind"):
        Component(kind="block", name="x", position="x", channels=1, stride=1, gflops=0.0, params=0)
    with pytest.raises(ValueError, match="gflops"):
        Component(kind="head", name="x", position="x", channels=1, stride=1, gflops=-1.0, params=0)


def test_deeplabv3_resnet50_segments_and_final_equal_torchvision_at_512() -> None:
    from torchvision.models.segmentation import deeplabv3_resnet50

    mess = build_network("deeplabv3_resnet50", num_classes=21, head_space=["crm64-b0-fcn"], device="meta")
    comps = network_components(mess, (512, 512))
    total = sum(c.gflops for c in comps if c.kind in ("segment", "final"))
    with torch.device("meta"):
        reference = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=False).eval()
    full = count_gflops(lambda x: reference(x)["out"], torch.zeros(1, 3, 512, 512, device="meta"))
    assert total == pytest.approx(full, rel=1e-9)
    assert 150 < full < 180  # multiply-adds, as torchvision's tables count them
