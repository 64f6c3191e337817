"""Stage 2's feature cache: same gradients, same training, never reused for other weights/data."""

import copy
from pathlib import Path

import pytest
import torch

from training._stages import batch_loss, head_loss, set_train_mode
from training.adapters import build_network
from training.data import build_dataset
from training.errors import TrainingError
from training.feature_cache import CachedViews, build_feature_cache, load_or_build
from training.train import TrainConfig, train_network

META = {"input_size": [32, 32], "dataset": "synthetic"}
POSITIONS = ["layer1.1", "layer2.1"]


def _tiny(seed: int = 0):
    torch.manual_seed(seed)
    return build_network(
        "fcn_resnet18", num_classes=6, head_space=["nocrm-b0-fcn", "crm16-b1-deeplabv3"],
        positions=POSITIONS,
    )  # fmt: skip


def _views(n: int = 12, views: int = 4, size: tuple[int, int] = (32, 32)):
    data = build_dataset("synthetic", split="train", input_size=size, size=n, augment=True)
    return data.with_fixed_views(views)


def _head_grads(net) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in net.heads.named_parameters() if p.grad is not None}


def test_fixed_views_are_fixed_and_come_in_mirrored_pairs() -> None:
    data = _views()
    image, label = data.view(3, 0)
    again, _ = data.view(3, 0)
    mirror, mirror_label = data.view(3, 1)
    assert torch.equal(image, again)
    assert torch.equal(mirror, image.flip(-1)) and torch.equal(mirror_label, label.flip(-1))
    assert not torch.equal(data.view(3, 2)[0], image)  # another scale-crop
    data.set_epoch(5)
    shown = [data.view_of(i) for i in range(len(data))]
    assert all(0 <= v < 4 for v in shown) and len(set(shown)) > 1
    assert torch.equal(data[2][0], data.view(2, shown[2])[0])


def test_cache_gives_the_same_head_gradients_as_a_frozen_backbone_forward() -> None:
    net = _tiny()
    data = _views()
    exits = list(net.exit_ids)
    cache = build_feature_cache(net, data, POSITIONS, batch_size=5)
    set_train_mode(net, "stage2")
    rows = [(0, 1), (4, 2), (7, 3), (11, 0)]
    images = torch.stack([data.view(i, v)[0] for i, v in rows])
    labels = torch.stack([data.view(i, v)[1] for i, v in rows])
    kwargs = {"exit_ids": exits, "weight": None, "alpha": 1.0, "temperature": 2.0}
    torch.manual_seed(1)  # dropout draws
    batch_loss(net, "stage2", images, labels, iteration=0, early_weight=1.0, **kwargs).backward()
    direct = _head_grads(net)
    net.zero_grad(set_to_none=True)
    index = [i * 4 + v for i, v in rows]
    features = {p: cache.features[p][index] for p in POSITIONS}
    assert torch.equal(cache.labels[index].long(), labels)
    torch.manual_seed(1)
    head_loss(net, "stage2", features, cache.final[index], labels, **kwargs).backward()
    cached = _head_grads(net)
    assert direct.keys() == cached.keys() and len(direct) > 10
    for name, grad in direct.items():
        assert torch.allclose(grad, cached[name], rtol=1e-4, atol=1e-6), name
    assert all(p.grad is None for p in net.segments.parameters())


@pytest.mark.parametrize("mode", ["stage2", "ic-only"])
def test_a_stage2_run_from_the_cache_equals_one_without(tmp_path: Path, mode: str) -> None:
    start = _tiny()
    data = build_dataset("synthetic", split="train", input_size=(32, 32), size=12, augment=True)
    nets = []
    for cached in (True, False):
        net = copy.deepcopy(start)
        config = TrainConfig(
            mode=mode, epochs=2, batch_size=4, lr=0.02, stage2_views=2, feature_cache=cached,
            optimizer="adamw",
        )  # fmt: skip
        train_network(net, data, None, config, out=str(tmp_path / f"{cached}.pt"), meta=META)
        nets.append(net)
    with_cache, without = (n.state_dict() for n in nets)
    moved = 0
    for key, value in with_cache.items():
        if value.is_floating_point():
            assert torch.allclose(value, without[key], rtol=1e-4, atol=1e-5), key
            moved += int(key.startswith("heads.") and not torch.equal(value, start.state_dict()[key]))
    assert moved > 10  # the heads did train


def test_a_stored_cache_is_reused_only_for_the_same_weights_data_and_size(tmp_path: Path) -> None:
    net = _tiny()
    data = _views(8, 2)
    path = tmp_path / "features.pt"
    notes: list[str] = []
    first = load_or_build(net, data, POSITIONS, path=path, note=notes.append)
    assert path.exists() and not notes
    again = load_or_build(net, data, POSITIONS, path=path, note=notes.append)
    assert again.key == first.key and not notes
    assert torch.equal(again.features["layer2.1"], first.features["layer2.1"])
    with torch.no_grad():
        next(net.segments.parameters()).add_(0.01)  # other backbone weights
    changed = load_or_build(net, data, POSITIONS, path=path, note=notes.append)
    assert changed.key != first.key and len(notes) == 1 and "rebuilding" in notes[0]
    bigger = load_or_build(net, _views(8, 2, (40, 40)), POSITIONS, path=path, note=notes.append)
    assert bigger.labels.shape[-2:] == (40, 40) and len(notes) == 2
    assert load_or_build(net, _views(8, 2, (40, 40)), POSITIONS, path=path).key == bigger.key


def test_a_file_that_is_not_a_feature_cache_is_refused_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    before = path.read_bytes()
    with pytest.raises(TrainingError, match="not a mess-dse feature cache"):
        load_or_build(_tiny(), _views(4, 2), POSITIONS, path=path)
    path.write_text("garbage")
    with pytest.raises(TrainingError, match="not a readable feature cache"):
        load_or_build(_tiny(), _views(4, 2), POSITIONS, path=path)
    assert path.read_text() == "garbage" and before


def test_cached_views_show_the_view_of_the_epoch() -> None:
    data = _views(6, 4)
    cache = build_feature_cache(_tiny(), data, POSITIONS)
    seen = CachedViews(cache, data)
    seen.set_epoch(3)
    _, _, label = seen[5]
    assert torch.equal(label, data[5][1])
