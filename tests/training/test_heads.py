"""Head specs, exit ids and the head design space."""

import pytest
import torch

from training.errors import TrainingError
from training.heads import (
    ExitHead,
    ExitSpec,
    HeadSpec,
    PositionInfo,
    default_head_space,
    parse_head_space,
)


def test_ids_match_the_contract_examples() -> None:
    assert HeadSpec(crm=128, blocks=1, rdi=True, kind="fcn").id == "crm128-b1-rdi-fcn"
    assert HeadSpec(kind="deeplabv3").id == "nocrm-b0-deeplabv3"
    spec = ExitSpec(position="layer3.2", head=HeadSpec(crm=128, blocks=1, rdi=True))
    assert spec.id == "layer3.2/crm128-b1-rdi-fcn"


def test_default_space_size_and_id_round_trip() -> None:
    space = default_head_space()
    assert len(space) == 20
    assert len({s.id for s in space}) == 20
    for spec in space:
        assert HeadSpec.parse(spec.id) == spec
        exit_spec = ExitSpec(position="features.7", head=spec)
        assert ExitSpec.parse(exit_spec.id) == exit_spec
    larger = default_head_space(crm_channels=(None, 32, 128), max_blocks=3)
    assert len(larger) == 3 * 7 * 2


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"blocks": 4}, "blocks"),
        ({"blocks": -1}, "blocks"),
        ({"crm": 0}, "crm"),
        ({"rdi": True, "blocks": 0}, "rdi"),
        ({"kind": "unet"}, "kind"),
    ],
)
def test_invalid_specs_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        HeadSpec(**kwargs)


@pytest.mark.parametrize("bad", ["crm-b1-fcn", "nocrm-b1-rdi", "crm64-b9-fcn", "nocrm-b0-rdi-fcn", "x"])
def test_bad_head_ids_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        HeadSpec.parse(bad)


def test_parse_head_space_dedups_and_wraps_errors() -> None:
    specs = parse_head_space(["nocrm-b0-fcn", HeadSpec(), "crm16-b2-rdi-deeplabv3"])
    assert [s.id for s in specs] == ["nocrm-b0-fcn", "crm16-b2-rdi-deeplabv3"]
    with pytest.raises(TrainingError, match="not of the form"):
        parse_head_space(["nocrm-b0-fcn", "bogus"])
    with pytest.raises(TrainingError, match="empty"):
        parse_head_space([])


def test_exit_spec_rejects_bad_positions() -> None:
    with pytest.raises(ValueError, match="position"):
        ExitSpec(position="final", head=HeadSpec())
    with pytest.raises(ValueError, match="form"):
        ExitSpec.parse("layer3.2")
    with pytest.raises(ValueError, match="channels"):
        PositionInfo(name="layer1.0", index=0, channels=0, stride=4)


@pytest.mark.parametrize("head_id", ["nocrm-b0-fcn", "crm8-b2-rdi-deeplabv3", "crm12-b1-fcn"])
def test_exit_head_keeps_native_resolution(head_id: str) -> None:
    torch.manual_seed(0)
    calls: list[int] = []

    def block(channels: int, dilation: int) -> torch.nn.Module:
        calls.append(dilation)
        return torch.nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)

    spec = HeadSpec.parse(head_id)
    head = ExitHead(spec, in_channels=24, num_classes=5, block_factory=block).eval()
    out = head(torch.randn(2, 24, 8, 8))
    assert out.shape == (2, 5, 8, 8)
    assert calls == list(spec.dilations)
    if spec.rdi:
        assert calls == [2, 4][: spec.blocks]
