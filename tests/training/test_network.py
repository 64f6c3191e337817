"""Running the network: all exits, cascade (real skipping), anytime, budgeted."""

from collections import defaultdict

import pytest
import torch
from torch import nn

from training.adapters import build_network
from training.errors import TrainingError
from training.heads import FINAL_EXIT
from training.network import CascadeConfig, MessNetwork
from training.policy import ExitDecision

HEADS = ["nocrm-b0-fcn", "crm16-b1-rdi-deeplabv3"]
EARLY = ("layer1.1/nocrm-b0-fcn", "layer2.1/crm16-b1-rdi-deeplabv3", "layer3.1/nocrm-b0-fcn")


@pytest.fixture(scope="module")
def net() -> MessNetwork:
    torch.manual_seed(0)
    return build_network("fcn_resnet18", num_classes=3, head_space=HEADS).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(1))


class CallLog:
    """Counts calls and input batch sizes of modules through forward hooks."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.batches: dict[str, list[int]] = defaultdict(list)
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in modules.items()]

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            first = args[0]
            self.batches[name].append(first["high"].shape[0] if isinstance(first, dict) else first.shape[0])

        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _watch(net: MessNetwork) -> CallLog:
    modules: dict[str, nn.Module] = {f"segment{i}": s for i, s in enumerate(net.segments)}
    modules.update({e: net.head(e) for e in net.exit_ids})
    modules[FINAL_EXIT] = net.final_head
    return CallLog(modules)


def test_all_exits_share_one_backbone_pass(net: MessNetwork, images: torch.Tensor) -> None:
    log = _watch(net)
    with torch.no_grad():
        out = net(images)
    log.close()
    assert set(out) == {*net.exit_ids, FINAL_EXIT}
    assert all(len(log.batches[f"segment{i}"]) == 1 for i in range(len(net.segments)))
    features, final = net.backbone_features(images)
    assert torch.allclose(net.upsample(final, (64, 64)), out[FINAL_EXIT], atol=1e-5)
    head_out = net.run_head(EARLY[1], features["layer2.1"])
    assert torch.allclose(net.upsample(head_out, (64, 64)), out[EARLY[1]], atol=1e-5)


def _image_confidences(net: MessNetwork, images: torch.Tensor, th_pix: float) -> dict[str, torch.Tensor]:
    native = net.forward_native(images)
    return {e: ExitDecision()(native[e], th_pix) for e in EARLY}


@torch.no_grad()
def test_cascade_output_equals_the_exit_it_took(net: MessNetwork, images: torch.Tensor) -> None:
    th_pix = 0.4
    conf = _image_confidences(net, images, th_pix)
    th_img = float(conf[EARLY[0]].median().clamp(min=1e-3))  # about half the images leave first
    config = CascadeConfig(exits=EARLY, th_pix=th_pix, th_img=th_img)
    result = net.cascade(images, config)
    reference = net(images)
    expected = []
    for i in range(images.shape[0]):
        taken = next((e for e in EARLY if conf[e][i] >= th_img), FINAL_EXIT)
        expected.append(taken)
        assert torch.allclose(result.logits[i], reference[taken][i], atol=1e-4), (i, taken)
    assert result.exit_ids == expected
    assert len(set(expected)) > 1, "thresholds should split the batch between exits"


@torch.no_grad()
def test_cascade_skips_later_segments_and_heads(net: MessNetwork, images: torch.Tensor) -> None:
    log = _watch(net)
    result = net.cascade(images, CascadeConfig(exits=EARLY, th_pix=0.01, th_img=1.0))  # all confident
    log.close()
    assert result.exit_ids == [EARLY[0]] * images.shape[0]
    first_segment = net.position_of(EARLY[0]).index
    for i in range(len(net.segments)):
        assert len(log.batches[f"segment{i}"]) == (1 if i <= first_segment else 0), i
    assert log.batches[EARLY[0]] == [images.shape[0]]
    assert not log.batches[EARLY[1]] and not log.batches[EARLY[2]] and not log.batches[FINAL_EXIT]
    assert all(not log.batches[e] for e in net.exit_ids if e not in EARLY)


@torch.no_grad()
def test_cascade_runs_later_segments_only_for_images_still_in(net: MessNetwork, images: torch.Tensor) -> None:
    th_pix = 0.4
    conf = _image_confidences(net, images, th_pix)
    th_img = float(conf[EARLY[0]].median().clamp(min=1e-3))
    staying = int((conf[EARLY[0]] < th_img).sum())
    log = _watch(net)
    net.cascade(images, CascadeConfig(exits=EARLY[:1], th_pix=th_pix, th_img=th_img))
    log.close()
    assert 0 < staying < images.shape[0]
    last = len(net.segments) - 1
    assert log.batches[f"segment{last}"] == [staying]
    assert log.batches[FINAL_EXIT] == [staying]


@torch.no_grad()
def test_cascade_with_no_confident_exit_answers_with_final(net: MessNetwork, images: torch.Tensor) -> None:
    result = net.cascade(images, CascadeConfig(exits=EARLY, th_pix=(1.0, 1.0, 1.0), th_img=1.0))
    assert result.exit_ids == [FINAL_EXIT] * images.shape[0]
    assert torch.allclose(result.logits, net(images)[FINAL_EXIT], atol=1e-5)


@torch.no_grad()
def test_lraspp_cascade_carries_the_low_level_feature() -> None:
    torch.manual_seed(0)
    lr = build_network("lraspp_mobilenet_v3_large", num_classes=2, head_space=["nocrm-b0-fcn"]).eval()
    x = torch.randn(3, 3, 64, 64)
    exits = ("features.2/nocrm-b0-fcn", "features.5/nocrm-b0-fcn")
    conf = ExitDecision()(lr.forward_native(x)[exits[0]], 0.5)
    th_img = float(conf.max().clamp(min=1e-3))
    result = lr.cascade(x, CascadeConfig(exits=exits, th_pix=0.5, th_img=th_img))
    reference = lr(x)
    for i, taken in enumerate(result.exit_ids):
        assert torch.allclose(result.logits[i], reference[taken][i], atol=1e-4)
    assert torch.allclose(lr.budgeted(FINAL_EXIT)(x), reference[FINAL_EXIT], atol=1e-5)


def test_cascade_rejects_bad_configurations(net: MessNetwork, images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="th_img"):
        CascadeConfig(exits=EARLY, th_pix=0.5, th_img=0.0)
    with pytest.raises(ValueError, match="th_pix"):
        CascadeConfig(exits=EARLY, th_pix=1.5, th_img=0.5)
    with pytest.raises(ValueError, match="one value per early exit"):
        CascadeConfig(exits=EARLY, th_pix=(0.5,), th_img=0.5)
    with pytest.raises(ValueError, match="implicit"):
        CascadeConfig(exits=(FINAL_EXIT,), th_pix=0.5, th_img=0.5)
    with pytest.raises(TrainingError, match="ordered along the backbone"):
        net.cascade(images, CascadeConfig(exits=(EARLY[1], EARLY[0]), th_pix=0.5, th_img=0.5))
    with pytest.raises(TrainingError, match="close matches: layer1.1/nocrm-b0-fcn"):
        net.cascade(images, CascadeConfig(exits=("layer1.1/nocrm-b0-fcm",), th_pix=0.5, th_img=0.5))


@torch.no_grad()
def test_anytime_yields_each_exit_lazily(net: MessNetwork, images: torch.Tensor) -> None:
    reference = net(images)
    log = _watch(net)
    outputs = net.anytime(images, [*EARLY, FINAL_EXIT])
    first_id, first = next(outputs)
    later = net.position_of(EARLY[0]).index + 1
    assert first_id == EARLY[0] and not log.batches[f"segment{later}"]  # nothing beyond yet
    rest = list(outputs)
    log.close()
    assert [first_id] + [e for e, _ in rest] == [*EARLY, FINAL_EXIT]
    for exit_id, logits in [(first_id, first), *rest]:
        assert torch.allclose(logits, reference[exit_id], atol=1e-5)
    assert all(len(log.batches[f"segment{i}"]) == 1 for i in range(len(net.segments)))


@torch.no_grad()
def test_budgeted_network_ends_at_its_exit(net: MessNetwork, images: torch.Tensor) -> None:
    reference = net(images)
    budget = net.budgeted(EARLY[1]).eval()
    log = _watch(net)
    assert torch.allclose(budget(images), reference[EARLY[1]], atol=1e-5)
    log.close()
    last = net.position_of(EARLY[1]).index
    assert not any(log.batches[f"segment{i}"] for i in range(last + 1, len(net.segments)))
    assert not log.batches[FINAL_EXIT]
    assert torch.allclose(net.budgeted(FINAL_EXIT)(images), reference[FINAL_EXIT], atol=1e-5)
    with pytest.raises(TrainingError, match="unknown exit"):
        net.budgeted("layer9.9/nocrm-b0-fcn")
