"""Segmentation datasets by name: the built-in procedural one and folder layouts.

`build_dataset(name, ...)` builds one (a split may be a selection, `val[0:50]`, see
`training.selection`); the sample contract they share (`SegmentationDataset`, `IGNORE_INDEX`,
resizing, augmentation) lives in `training._dataset` and is re-exported here. Also the
calibration-set provenance (`dataset_content_hash`) and class weights.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import torch

from training._dataset import (
    IGNORE_INDEX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SegmentationDataset,
    augment_pair,
    normalise,
    resize_pair,
)
from training.errors import TrainingError
from training.selection import parse_selection

__all__ = [
    "DATASET_NAMES", "IGNORE_INDEX", "IMAGENET_MEAN", "IMAGENET_STD", "SegmentationDataset",
    "SubsetDataset", "augment_pair", "build_dataset", "class_frequencies", "class_weights",
    "dataset_content_hash", "normalise", "resize_pair",
]

DATASET_NAMES = ("synthetic", "camvid", "voc", "cityscapes")


class SubsetDataset(SegmentationDataset):
    """Images picked from one or more whole splits (a calibration selection), same classes.

    Each image keeps the sample id it has in its split; ``split`` is the selection text
    (``val[::2]``), so each selection has its own content hash.
    """

    def __init__(
        self,
        wholes: dict[str, SegmentationDataset],
        picks: Sequence[tuple[str, int]],
        *,
        split: str,
        augment: bool,
    ) -> None:
        first = next(iter(wholes.values()))
        super().__init__(
            split=split, input_size=first.input_size,
            sample_ids=[wholes[name].sample_ids[i] for name, i in picks],
            augment=augment, seed=first.seed, scale_range=first.scale_range,
        )  # fmt: skip
        self.name = first.name
        self.class_names = first.class_names
        self.wholes = wholes
        self.picks = list(picks)

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        name, position = self.picks[index]
        return self.wholes[name].raw(position)


def build_dataset(
    name: str,
    *,
    root: str | os.PathLike[str] | None = None,
    split: str,
    input_size: tuple[int, int] = (64, 64),
    augment: bool = False,
    seed: int = 0,
    size: int | None = None,
) -> SegmentationDataset:
    """Build a dataset by name.

    Args:
        name: ``synthetic`` (built-in, no root), ``camvid``, ``voc`` or ``cityscapes``.
        root: folder of a folder dataset.
        split: ``train``, ``val`` or ``test`` (VOC: any ImageSets/Segmentation list name), or a
            selection of images from splits: ``val[0:50]``, ``val[::2]``,
            ``val[random=50,seed=0]``, ``train[0001TP_*]``, ``train+val`` (see
            `training.selection`).
        input_size: (H, W) every sample is resized to.
        augment: random scale/crop/flip (training only).
        seed: synthetic content seed and augmentation seed.
        size: number of samples (synthetic: required count, default 64, at most
            `training._synthetic.MAX_SIZE`; folders: first N). With a selection: the first N
            selected images (synthetic generates each split up to the first slice's stop, default
            64; above MAX_SIZE is refused before anything is generated).

    Raises:
        TrainingError: unknown name, missing or malformed folder, labels out of range, a slice
            outside the split, a selection that selects nothing or an image twice.
    """
    if size is not None and size <= 0:
        raise TrainingError(f"dataset size must be positive, got {size}")
    selection = parse_selection(split)
    if not selection.is_plain:
        if name not in DATASET_NAMES:
            raise TrainingError(
                f"unknown dataset '{name}'; choose one of {', '.join(DATASET_NAMES)}"
            )
        wholes: dict[str, SegmentationDataset] = {}
        for part in selection.parts:
            if part.split not in wholes:
                wholes[part.split] = build_dataset(
                    name, root=root, split=part.split, input_size=input_size, seed=seed,
                    size=selection.synthetic_size(part.split) if name == "synthetic" else None,
                )  # fmt: skip
        picks = selection.resolve(lambda part_split: wholes[part_split].sample_ids)
        if size is not None:
            picks = picks[:size]
        return SubsetDataset(wholes, picks, split=selection.text, augment=augment)
    split = selection.text
    if name == "synthetic":
        from training._synthetic import SyntheticDataset

        return SyntheticDataset(
            split=split, input_size=input_size, augment=augment, seed=seed, size=size or 64
        )
    if name in ("camvid", "voc", "cityscapes"):
        if root is None:
            raise TrainingError(f"dataset '{name}' needs --data-root PATH (the dataset folder)")
        from training import _folders

        builder = {
            "camvid": _folders.CamVid,
            "voc": _folders.PascalVOC,
            "cityscapes": _folders.Cityscapes,
        }[name]
        return builder(
            root=str(root),
            split=split,
            input_size=input_size,
            augment=augment,
            seed=seed,
            size=size,
        )
    raise TrainingError(f"unknown dataset '{name}'; choose one of {', '.join(DATASET_NAMES)}")


def class_frequencies(ds: SegmentationDataset) -> torch.Tensor:
    """Share of labelled pixels per class over the (un-augmented) dataset, float64 [C]."""
    counts = torch.zeros(ds.num_classes, dtype=torch.float64)
    for index in range(len(ds)):
        label = ds.raw(index)[1]
        valid = label[label != IGNORE_INDEX]
        counts += torch.bincount(valid.flatten(), minlength=ds.num_classes)[: ds.num_classes]
    total = counts.sum()
    if total == 0:
        raise TrainingError(f"dataset '{ds.name}' split '{ds.split}' has no labelled pixels")
    return counts / total


def class_weights(ds: SegmentationDataset, *, method: str = "enet") -> torch.Tensor:
    """Loss weights against class imbalance, float32 [C].

    ``enet``: 1 / ln(1.02 + p) (ENet; bounded for rare classes); ``median``: median(p) / p
    (median frequency balancing; absent classes get 0); ``none``: all ones.
    """
    if method == "none":
        return torch.ones(ds.num_classes)
    freq = class_frequencies(ds)
    if method == "enet":
        return (1.0 / torch.log(1.02 + freq)).float()
    if method == "median":
        present = freq[freq > 0]
        median = present.median() if present.numel() else torch.tensor(1.0, dtype=torch.float64)
        weights = torch.where(freq > 0, median / freq.clamp_min(1e-12), torch.zeros_like(freq))
        return weights.float()
    raise TrainingError(f"unknown class weighting '{method}'; choose enet, median or none")


def dataset_content_hash(ds: SegmentationDataset) -> str:
    """sha256 over what a network actually sees: input size, sample ids and decoded pixels/labels.

    Two calibration sets with the same hash give the same measurements; a changed file, a
    different resize or another sample order gives another hash.
    """
    digest = hashlib.sha256()
    digest.update(f"{ds.name}|{ds.split}|{ds.input_size[0]}x{ds.input_size[1]}|{len(ds)}".encode())
    for index, sample_id in enumerate(ds.sample_ids):
        image, label = ds.raw(index)
        digest.update(sample_id.encode() + b"\0")
        digest.update(image.contiguous().numpy().tobytes())
        digest.update(label.to(torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()
