"""The sample contract every dataset follows, and the pixel operations they share.

`SegmentationDataset` yields ``(image float[3,H,W] normalised, label int64[H,W])`` with
``IGNORE_INDEX`` for pixels that count in no loss and no metric. Decoded samples are resized once
to the input size and kept in memory (uint8) so that epochs after the first do no decoding;
augmentation (scale-up + random crop back to the input size, horizontal flip) runs on those cached
tensors and is deterministic in (seed, epoch, index), so a resumed run sees exactly the batches it
would have seen. The concrete datasets (`_synthetic`, `_folders`) build on it; `training.data`
names them and builds one.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from training.errors import TrainingError

IGNORE_INDEX = 255
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

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
        self.views: int | None = None  # fixed views per image (stage 2), None: fresh draws
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
        if self.augment and self.views is not None:
            return self.view(index, self.view_of(index))
        image, label = self.raw(index)
        if self.augment:
            gen = torch.Generator().manual_seed(_mix_seed(self.seed, self.epoch, index))
            image, label = augment_pair(image, label, gen, scale_range=self.scale_range)
        return normalise(image), label

    def with_fixed_views(self, views: int) -> SegmentationDataset:
        """This dataset (sharing its decoded samples) drawing from ``views`` fixed views per image.

        Each image gets ``views`` augmented views fixed once and for all (seed, index, view):
        views ``2k`` and ``2k + 1`` are one random scale-up + crop, unflipped and mirrored. Each
        epoch shows one of them per image. A finite set of views is what lets stage 2 compute the
        frozen backbone's features once per view (`training.feature_cache`); fresh random crops
        every epoch would need a backbone pass every epoch.
        """
        if views < 1:
            raise ValueError(f"views must be >= 1, got {views}")
        twin = copy.copy(self)
        twin.views = int(views)
        return twin

    def view_of(self, index: int) -> int:
        """The fixed view of ``index`` shown in the current epoch (fixed-view datasets only)."""
        if self.views is None:
            raise ValueError("view_of needs a dataset with fixed views (with_fixed_views)")
        return _mix_seed(self.seed, self.epoch, index, -1) % self.views

    def view(self, index: int, view: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Fixed view ``view`` of sample ``index``: (normalised image, label)."""
        image, label = self.raw(index)
        gen = torch.Generator().manual_seed(_mix_seed(self.seed, -1, index, view // 2))
        image, label = augment_pair(
            image, label, gen, scale_range=self.scale_range, flip=bool(view % 2)
        )  # fmt: skip
        return normalise(image), label


def augment_pair(
    image: torch.Tensor,
    label: torch.Tensor,
    gen: torch.Generator,
    *,
    scale_range: tuple[float, float] = (1.0, 1.5),
    flip: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random scale-up, random crop back to the same size, horizontal flip (random if None).

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
    if flip is None:
        flip = float(torch.rand((), generator=gen)) < 0.5
    if flip:
        image = image.flip(-1)
        label = label.flip(-1)
    return image.contiguous(), label.contiguous()



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
