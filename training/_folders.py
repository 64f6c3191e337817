"""Folder datasets: CamVid (SegNet layout), Pascal VOC and Cityscapes, read with PIL.

The layout is checked when the dataset is built (missing folders, images without labels), so a
wrong --data-root fails at once with the path to fix; pixel values are checked when a sample is
first decoded, and a label outside the class range names its file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from training._dataset import IGNORE_INDEX, SegmentationDataset, resize_pair
from training.errors import TrainingError

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def _read_image(path: Path) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except OSError as exc:
        raise TrainingError(f"cannot read image {path}: {exc}") from exc
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _read_label(path: Path) -> torch.Tensor:
    """Single-channel label map; palette PNGs (VOC) give their palette indices."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16"):
                raise TrainingError(
                    f"label {path} is a {img.mode} image; expected single-channel class indices"
                )
            array = np.asarray(img, dtype=np.int64)
    except OSError as exc:
        raise TrainingError(f"cannot read label {path}: {exc}") from exc
    return torch.from_numpy(array.copy())


class FolderDataset(SegmentationDataset):
    """Pairs of (image file, label file) with a class-id remapping applied to labels."""

    def __init__(
        self,
        *,
        pairs: list[tuple[Path, Path]],
        split: str,
        input_size: tuple[int, int],
        augment: bool,
        seed: int,
        size: int | None,
        ids: list[str],
    ) -> None:
        if size is not None:
            pairs, ids = pairs[:size], ids[:size]
        super().__init__(
            split=split, input_size=input_size, sample_ids=ids, augment=augment, seed=seed
        )
        self.pairs = pairs

    def _remap(self, label: torch.Tensor) -> torch.Tensor:
        """Map raw label values to 0..C-1 / IGNORE_INDEX; anything else stays as is (then refused)."""
        return label

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, label_path = self.pairs[index]
        image = _read_image(image_path)
        label = self._remap(_read_label(label_path))
        if tuple(image.shape[1:]) != tuple(label.shape):
            raise TrainingError(
                f"image {image_path.name} is {image.shape[2]}x{image.shape[1]} but its label "
                f"{label_path} is {label.shape[1]}x{label.shape[0]}"
            )
        bad = (label >= self.num_classes) & (label != IGNORE_INDEX) | (label < 0)
        if bool(bad.any()):
            value = int(label[bad][0])
            raise TrainingError(
                f"label {label_path} has class {value}, outside 0..{self.num_classes - 1} "
                f"(and not the ignore label {IGNORE_INDEX}); is --data the right dataset?"
            )
        return resize_pair(image, label, self.input_size)


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise TrainingError(f"{what} folder {path} does not exist; check --data-root")
    return path


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)


class CamVid(FolderDataset):
    """SegNet layout: ``<split>/`` frames and ``<split>annot/`` labels with the same stem; 11 = void."""

    name = "camvid"
    class_names = (
        "sky", "building", "pole", "road", "pavement", "tree",
        "sign", "fence", "car", "pedestrian", "bicyclist",
    )  # fmt: skip
    VOID = 11

    def __init__(self, *, root: str, split: str, input_size, augment=False, seed=0, size=None):
        base = Path(root)
        _require_dir(base, "CamVid")
        images_dir = _require_dir(base / split, f"CamVid '{split}'")
        labels_dir = _require_dir(base / f"{split}annot", f"CamVid '{split}annot'")
        images = _images_in(images_dir)
        if not images:
            raise TrainingError(f"no images in {images_dir}; check --data-root")
        labels = {p.stem: p for p in _images_in(labels_dir)}
        missing = [p.name for p in images if p.stem not in labels]
        if missing:
            raise TrainingError(
                f"{len(missing)} CamVid images have no label in {labels_dir} (first: {missing[0]})"
            )
        pairs = [(p, labels[p.stem]) for p in images]
        ids = [p.stem for p in images]
        super().__init__(
            pairs=pairs, split=split, input_size=input_size, augment=augment, seed=seed,
            size=size, ids=ids,
        )  # fmt: skip

    def _remap(self, label: torch.Tensor) -> torch.Tensor:
        return torch.where(label == self.VOID, torch.full_like(label, IGNORE_INDEX), label)


class PascalVOC(FolderDataset):
    """VOC2012 layout: JPEGImages/, SegmentationClass/ (palette PNG), ImageSets/Segmentation/<split>.txt."""

    name = "voc"
    class_names = (
        "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
        "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
        "sheep", "sofa", "train", "tvmonitor",
    )  # fmt: skip

    def __init__(self, *, root: str, split: str, input_size, augment=False, seed=0, size=None):
        base = Path(root)
        _require_dir(base, "VOC")
        for candidate in (base, base / "VOC2012", base / "VOCdevkit" / "VOC2012"):
            if (candidate / "ImageSets" / "Segmentation").is_dir():
                base = candidate
                break
        list_file = base / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not list_file.is_file():
            raise TrainingError(
                f"VOC split list {list_file} does not exist; --data-root must hold "
                "JPEGImages/, SegmentationClass/ and ImageSets/Segmentation/"
            )
        images_dir = _require_dir(base / "JPEGImages", "VOC JPEGImages")
        labels_dir = _require_dir(base / "SegmentationClass", "VOC SegmentationClass")
        stems = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
        pairs = [(images_dir / f"{s}.jpg", labels_dir / f"{s}.png") for s in stems]
        for image_path, label_path in pairs:
            for path in (image_path, label_path):
                if not path.is_file():
                    raise TrainingError(f"VOC file {path} listed in {list_file} does not exist")
        super().__init__(
            pairs=pairs, split=split, input_size=input_size, augment=augment, seed=seed,
            size=size, ids=stems,
        )  # fmt: skip


# Cityscapes labelIds -> trainIds (19 classes); every other id is ignored.
_CITYSCAPES_TRAIN_IDS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
    25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip


class Cityscapes(FolderDataset):
    """leftImg8bit/<split>/<city>/*_leftImg8bit.png with gtFine/<split>/<city>/*_gtFine_labelIds.png."""

    name = "cityscapes"
    class_names = (
        "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
        "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
        "bus", "train", "motorcycle", "bicycle",
    )  # fmt: skip

    def __init__(self, *, root: str, split: str, input_size, augment=False, seed=0, size=None):
        base = Path(root)
        _require_dir(base, "Cityscapes")
        images_dir = _require_dir(base / "leftImg8bit" / split, f"Cityscapes leftImg8bit/{split}")
        labels_dir = _require_dir(base / "gtFine" / split, f"Cityscapes gtFine/{split}")
        images = sorted(images_dir.glob("*/*_leftImg8bit.png"))
        if not images:
            raise TrainingError(f"no *_leftImg8bit.png images under {images_dir}")
        pairs, ids = [], []
        for image_path in images:
            stem = image_path.name[: -len("_leftImg8bit.png")]
            label_path = labels_dir / image_path.parent.name / f"{stem}_gtFine_labelIds.png"
            if not label_path.is_file():
                raise TrainingError(f"Cityscapes label {label_path} does not exist")
            pairs.append((image_path, label_path))
            ids.append(f"{image_path.parent.name}/{stem}")
        super().__init__(
            pairs=pairs, split=split, input_size=input_size, augment=augment, seed=seed,
            size=size, ids=ids,
        )  # fmt: skip
        lut = torch.full((256,), IGNORE_INDEX, dtype=torch.int64)
        for label_id, train_id in _CITYSCAPES_TRAIN_IDS.items():
            lut[label_id] = train_id
        self._lut = lut

    def _remap(self, label: torch.Tensor) -> torch.Tensor:
        if int(label.min()) < 0 or int(label.max()) > 255:
            return label  # refused by the range check, naming the file
        return self._lut[label]
