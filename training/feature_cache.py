"""Stage 2's feature cache: the frozen backbone runs once per training view, not once per epoch.

Stage 2 (and IC-only) train heads on a backbone that never changes, in eval mode. The backbone's
output for a given input is therefore a constant, and recomputing it every epoch is waste: the
cache computes, for every training image and each of its fixed views
(`SegmentationDataset.with_fixed_views`), the feature at every position the heads read and the
final exit's native logits (the PFD teacher), once. A stage-2 epoch then costs the heads alone.

The augmentation a cache allows is a finite set of views per image, fixed in advance (random
scale-up + crop, each with its mirror image); a fresh random crop every epoch would need a fresh
backbone pass. Photometric augmentation is excluded for the same reason.

A cache is valid only for the weights, data and views it was computed from: its key hashes the
backbone and final-head weights, the decoded training samples (which fixes the input size), the
number of views, the seed and the scale range. A stored cache with another key is rebuilt (and
the caller is told why); a file that is not a feature cache is refused.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from training.checkpoint import atomic_torch_save, weights_sha256
from training.data import SegmentationDataset, dataset_content_hash
from training.errors import TrainingError

if TYPE_CHECKING:
    from training.network import MessNetwork

FORMAT = "mess-dse-feature-cache"
VERSION = 1


def cache_key(network: MessNetwork, dataset: SegmentationDataset, positions: Sequence[str]) -> str:
    """sha256 of what the cached tensors depend on: frozen weights, samples, views, positions."""
    if dataset.views is None:
        raise ValueError("a feature cache needs a dataset with fixed views (with_fixed_views)")
    frozen = nn.ModuleList([network.segments, network.final_head])
    digest = hashlib.sha256()
    digest.update(f"{FORMAT}|{VERSION}|{network.arch}|".encode())
    digest.update(weights_sha256(frozen).encode())
    digest.update(dataset_content_hash(dataset).encode())
    digest.update(f"|{dataset.views}|{dataset.seed}|{dataset.scale_range}|".encode())
    digest.update(",".join(positions).encode())
    return digest.hexdigest()


@dataclass
class FeatureCache:
    """Backbone outputs of every (image, view): row ``index * views + view``.

    Attributes:
        key: `cache_key` of what it was computed from.
        views: fixed views per image.
        features: position name -> float [N * views, C, h, w].
        final: the final exit's native logits, float [N * views, classes, h, w] (PFD's teacher).
        labels: int16 [N * views, H, W] (the view's label; IGNORE_INDEX kept).
    """

    key: str
    views: int
    features: dict[str, Tensor]
    final: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0]) // self.views


def build_feature_cache(
    network: MessNetwork,
    dataset: SegmentationDataset,
    positions: Sequence[str],
    *,
    batch_size: int = 8,
    device: str = "cpu",
    key: str | None = None,
) -> FeatureCache:
    """One backbone pass per (image, view) in eval mode, no gradients."""
    views = dataset.views
    if views is None:
        raise ValueError("a feature cache needs a dataset with fixed views (with_fixed_views)")
    key = key if key is not None else cache_key(network, dataset, positions)
    rows = [(i, v) for i in range(len(dataset)) for v in range(views)]
    parts: dict[str, list[Tensor]] = {p: [] for p in positions}
    finals: list[Tensor] = []
    labels: list[Tensor] = []
    was_training = network.training
    network.eval()
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = [dataset.view(i, v) for i, v in rows[start : start + batch_size]]
            images = torch.stack([b[0] for b in batch]).to(
                device, memory_format=torch.channels_last
            )  # fmt: skip
            features, final_native = network.backbone_features(images)
            for p in positions:
                parts[p].append(features[p].cpu().contiguous())
            finals.append(final_native.cpu().contiguous())
            labels.append(torch.stack([b[1] for b in batch]).to(torch.int16))
    network.train(was_training)
    return FeatureCache(
        key=key, views=views, features={p: torch.cat(t) for p, t in parts.items()},
        final=torch.cat(finals), labels=torch.cat(labels),
    )  # fmt: skip


def load_or_build(
    network: MessNetwork,
    dataset: SegmentationDataset,
    positions: Sequence[str],
    *,
    path: str | os.PathLike[str] | None,
    batch_size: int = 8,
    device: str = "cpu",
    note: Callable[[str], None] | None = None,
) -> FeatureCache:
    """The cache stored at ``path`` if its key matches, else a new one (stored at ``path``).

    Raises:
        TrainingError: ``path`` exists but is not a feature cache (never overwritten then).
    """
    key = cache_key(network, dataset, positions)
    if path is not None and Path(path).exists():
        stored = _read(Path(path))
        if stored.key == key:
            return stored
        if note is not None:
            note(
                f"feature cache {path} was computed for other backbone weights, data, input size "
                "or views; rebuilding it"
            )
    cache = build_feature_cache(
        network, dataset, positions, batch_size=batch_size, device=device, key=key
    )
    if path is not None:
        payload = {
            "format": FORMAT, "version": VERSION, "key": cache.key, "views": cache.views,
            "features": cache.features, "final": cache.final, "labels": cache.labels,
        }  # fmt: skip
        atomic_torch_save(payload, path)
    return cache


def _read(path: Path) -> FeatureCache:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise TrainingError(
            f"{path} is not a readable feature cache ({type(exc).__name__}); delete it or choose "
            "another feature-cache path"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise TrainingError(
            f"{path} is not a mess-dse feature cache; delete it or choose another path"
        )
    return FeatureCache(
        key=str(payload["key"]), views=int(payload["views"]), features=dict(payload["features"]),
        final=payload["final"], labels=payload["labels"],
    )  # fmt: skip


class CachedViews(Dataset):
    """The training set seen through a cache: item ``index`` is this epoch's view of it.

    Yields ``(features by position, final native logits, label int64)``; the view drawn per
    (seed, epoch, index) is the one `SegmentationDataset.__getitem__` would draw, so a run from
    the cache sees exactly the batches an uncached run sees.
    """

    def __init__(self, cache: FeatureCache, dataset: SegmentationDataset) -> None:
        if dataset.views != cache.views or len(dataset) != len(cache):
            raise ValueError("the cache and the dataset disagree on views or size")
        self.cache = cache
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        row = index * self.cache.views + self.dataset.view_of(index)
        features = {p: t[row] for p, t in self.cache.features.items()}
        return features, self.cache.final[row], self.cache.labels[row].long()

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)


__all__ = ["CachedViews", "FeatureCache", "build_feature_cache", "cache_key", "load_or_build"]
