"""Segmentation datasets: the built-in procedural one and folder layouts, one sample contract.

Every dataset yields ``(image float[3,H,W] normalised, label int64[H,W])`` with ``IGNORE_INDEX``
for pixels that count in no loss and no metric. Decoded samples are resized once to the input
size and kept in memory (uint8) so that epochs after the first do no decoding; augmentation
(scale-up + random crop back to the input size, horizontal flip) runs on those cached tensors and is
deterministic in (seed, epoch, index), so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from training.errors import TrainingError
from training.selection import parse_selection

IGNORE_INDEX = 255
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DATASET_NAMES = ("synthetic", "camvid", "voc", "cityscapes")

_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def normalise(image_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [3,H,W] -> float [3,H,W] with ImageNet statistics (what pretrained backbones expect)."""
    return (image_u8.float() / 255.0 - _MEAN) / _STD


def _mix_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers (Python's hash() is salted per process)."""
    digest = hashlib.sha256(",".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class SegmentationDataset(Dataset):
    """Base class: subclasses implement ``_load(index) -> (uint8[3,H,W], int64[H,W])`` at input size.

    Attributes:
        name: dataset name (``synthetic``, ``camvid``, ...).
        split: split name.
        input_size: (H, W) of every sample.
        num_classes: number of real classes (labels are 0..num_classes-1 or IGNORE_INDEX).
        class_names: one name per class.
        sample_ids: stable string per sample, in order.
    """

    name: str = ""
    class_names: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        split: str,
        input_size: tuple[int, int],
        sample_ids: Sequence[str],
        augment: bool = False,
        seed: int = 0,
        scale_range: tuple[float, float] = (1.0, 1.5),
    ) -> None:
        height, width = input_size
        if height < 2 or width < 2:
            raise TrainingError(f"input size {height}x{width} is too small; use at least 2x2")
        if scale_range[0] < 1.0 or scale_range[1] < scale_range[0]:
            raise ValueError("scale_range must satisfy 1 <= low <= high")
        self.split = split
        self.input_size = (int(height), int(width))
        self.sample_ids = list(sample_ids)
        self.augment = augment
        self.seed = seed
        self.scale_range = scale_range
        self.epoch = 0
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.sample_ids)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draw of this epoch (a DataLoader cannot pass it per item)."""
        self.epoch = int(epoch)

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def raw(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached, un-augmented sample: (uint8[3,H,W], int64[H,W])."""
        if index < 0 or index >= len(self):
            raise IndexError(index)
        cached = self._cache.get(index)
        if cached is None:
            cached = self._load(index)
            self._cache[index] = cached
        return cached

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.raw(index)
        if self.augment:
            gen = torch.Generator().manual_seed(_mix_seed(self.seed, self.epoch, index))
            image, label = augment_pair(image, label, gen, scale_range=self.scale_range)
        return normalise(image), label


def augment_pair(
    image: torch.Tensor,
    label: torch.Tensor,
    gen: torch.Generator,
    *,
    scale_range: tuple[float, float] = (1.0, 1.5),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random scale-up, random crop back to the same size, random horizontal flip.

    The image is resized bilinearly, the label with nearest neighbour (a label is never blended).
    """
    height, width = label.shape
    low, high = scale_range
    scale = low + (high - low) * float(torch.rand((), generator=gen))
    if scale > 1.0:
        new_h, new_w = max(height, round(height * scale)), max(width, round(width * scale))
        big = F.interpolate(
            image[None].float(), size=(new_h, new_w), mode="bilinear", align_corners=False
        )[0]
        big_label = F.interpolate(label[None, None].float(), size=(new_h, new_w), mode="nearest")
        top = int(torch.randint(0, new_h - height + 1, (), generator=gen))
        left = int(torch.randint(0, new_w - width + 1, (), generator=gen))
        image = (
            big[:, top : top + height, left : left + width].round().clamp(0, 255).to(torch.uint8)
        )
        label = big_label[0, 0, top : top + height, left : left + width].long()
    if float(torch.rand((), generator=gen)) < 0.5:
        image = image.flip(-1)
        label = label.flip(-1)
    return image.contiguous(), label.contiguous()


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
        size: number of samples (synthetic: required count, default 64; folders: first N). With a
            selection: the first N selected images (synthetic generates each split up to the
            first slice's stop, default 64).

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


def resize_pair(
    image: torch.Tensor, label: torch.Tensor, input_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize uint8 image (bilinear, antialiased) and label (nearest) to ``input_size``."""
    if tuple(label.shape) == tuple(input_size):
        return image, label
    resized = F.interpolate(
        image[None].float(), size=input_size, mode="bilinear", align_corners=False, antialias=True
    )[0]
    image = resized.round().clamp(0, 255).to(torch.uint8)
    label = F.interpolate(label[None, None].float(), size=input_size, mode="nearest")[0, 0].long()
    return image, label
