"""Datasets: the procedural one, folder layouts, augmentation, class weights, content hash."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.data import (
    IGNORE_INDEX,
    augment_pair,
    build_dataset,
    class_weights,
    dataset_content_hash,
)
from training.errors import TrainingError


def test_synthetic_is_deterministic_and_any_size() -> None:
    a = build_dataset("synthetic", split="train", input_size=(40, 56), size=6, seed=3)
    b = build_dataset("synthetic", split="train", input_size=(40, 56), size=6, seed=3)
    other = build_dataset("synthetic", split="val", input_size=(40, 56), size=6, seed=3)
    image, label = a[2]
    assert image.shape == (3, 40, 56) and image.dtype == torch.float32
    assert label.shape == (40, 56) and label.dtype == torch.int64
    assert torch.equal(image, b[2][0]) and torch.equal(label, b[2][1])
    assert not torch.equal(label, other[2][1])
    assert int(label.max()) < a.num_classes == len(a.class_names) == 6
    assert a.sample_ids == b.sample_ids and len(set(a.sample_ids)) == 6


def test_synthetic_difficulty_varies_and_hard_scenes_have_smaller_objects() -> None:
    ds = build_dataset("synthetic", split="train", input_size=(64, 64), size=40)
    difficulty = np.array([ds.difficulty(i) for i in range(len(ds))])
    assert difficulty.min() < 0.2 and difficulty.max() > 0.8
    object_share = np.array([float((ds.raw(i)[1] >= 2).float().mean()) for i in range(len(ds))])
    objects = np.array([len(torch.unique(ds.raw(i)[1])) for i in range(len(ds))])
    easy, hard = difficulty < 0.35, difficulty > 0.65
    # hard scenes: more distinct classes in less area per object
    assert objects[hard].mean() >= objects[easy].mean()
    per_object_easy = object_share[easy].mean() / max(1, objects[easy].mean() - 1)
    per_object_hard = object_share[hard].mean() / max(1, objects[hard].mean() - 1)
    assert per_object_hard < per_object_easy


def test_synthetic_colour_names_the_class_only_in_easy_scenes() -> None:
    """Hard scenes must need shape, texture and context (depth), not a colour lookup."""
    from training._synthetic import _COLOURS

    ds = build_dataset("synthetic", split="train", input_size=(64, 64), size=200)
    hits: dict[str, list[bool]] = {"easy": [], "hard": []}
    for i in range(len(ds)):
        d = ds.difficulty(i)
        if 0.2 <= d <= 0.8:
            continue
        image, label = ds.raw(i)
        image = image.float() / 255
        for cls in (2, 3):  # discs, squares (flat fill): is the median colour their own class's?
            region = label == cls
            if int(region.sum()) < 20:
                continue
            median = image[:, region].median(dim=1).values
            nearest = int((_COLOURS[2:] - median).norm(dim=1).argmin()) + 2
            hits["easy" if d < 0.2 else "hard"].append(nearest == cls)
    easy, hard = np.mean(hits["easy"]), np.mean(hits["hard"])
    assert len(hits["easy"]) > 20 and len(hits["hard"]) > 20
    assert easy > 0.9 and hard < 0.65, (easy, hard)


def test_augmentation_is_deterministic_per_epoch_and_keeps_labels_whole() -> None:
    ds = build_dataset("synthetic", split="train", input_size=(32, 32), size=4, augment=True)
    first = ds[1]
    assert torch.equal(first[1], ds[1][1])
    labels_by_epoch = []
    for epoch in range(4):
        ds.set_epoch(epoch)
        labels_by_epoch.append(ds[1][1])
    assert any(not torch.equal(labels_by_epoch[0], other) for other in labels_by_epoch[1:])
    raw_classes = set(torch.unique(ds.raw(1)[1]).tolist())
    for label in labels_by_epoch:  # nearest neighbour: no blended class ids appear
        assert set(torch.unique(label).tolist()) <= raw_classes


def test_augment_pair_flips_image_and_label_together() -> None:
    image = torch.zeros(3, 8, 8, dtype=torch.uint8)
    image[:, :, :4] = 200
    label = torch.zeros(8, 8, dtype=torch.long)
    label[:, :4] = 1
    for seed in range(10):
        aug_image, aug_label = augment_pair(image, label, torch.Generator().manual_seed(seed))
        bright, dark = aug_image[0] >= 190, aug_image[0] <= 10  # away from the blended edge
        assert bool((aug_label[bright] == 1).all()) and bool((aug_label[dark] == 0).all())
        assert int(bright.sum()) > 0 and int(dark.sum()) > 0


def test_class_weights_favour_rare_classes() -> None:
    ds = build_dataset("synthetic", split="train", input_size=(32, 32), size=16)
    enet = class_weights(ds, method="enet")
    counts = torch.bincount(torch.stack([ds.raw(i)[1] for i in range(16)]).flatten(), minlength=6)
    assert enet[counts.argmin()] > enet[counts.argmax()]
    assert torch.equal(class_weights(ds, method="none"), torch.ones(6))
    with pytest.raises(TrainingError, match="class weighting"):
        class_weights(ds, method="bogus")


def test_content_hash_tracks_pixels_size_and_order() -> None:
    a = build_dataset("synthetic", split="val", input_size=(32, 32), size=4)
    same = build_dataset("synthetic", split="val", input_size=(32, 32), size=4)
    bigger = build_dataset("synthetic", split="val", input_size=(32, 40), size=4)
    other_seed = build_dataset("synthetic", split="val", input_size=(32, 32), size=4, seed=1)
    h = dataset_content_hash(a)
    assert h == dataset_content_hash(same)
    assert h != dataset_content_hash(bigger)
    assert h != dataset_content_hash(other_seed)


def _write_camvid(
    root: Path, split: str, n: int, *, bad_value: int | None = None, prefix: str = "f"
) -> None:
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / f"{split}annot").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(
            root / split / f"{prefix}{i}.png"
        )
        label = rng.integers(0, 12, (12, 16), dtype=np.uint8)
        label[0, 0] = 11
        if bad_value is not None and i == n - 1:
            label[1, 1] = bad_value
        Image.fromarray(label, mode="L").save(root / f"{split}annot" / f"{prefix}{i}.png")


def test_camvid_folder_maps_void_to_ignore(tmp_path: Path) -> None:
    _write_camvid(tmp_path, "train", 3)
    ds = build_dataset("camvid", root=str(tmp_path), split="train", input_size=(12, 16))
    assert ds.num_classes == 11 and ds.sample_ids == ["f0", "f1", "f2"]
    image, label = ds[0]
    assert image.shape == (3, 12, 16)
    assert int(label[0, 0]) == IGNORE_INDEX
    assert set(torch.unique(label).tolist()) <= set(range(11)) | {IGNORE_INDEX}
    resized = build_dataset("camvid", root=str(tmp_path), split="train", input_size=(6, 8))
    assert resized[0][1].shape == (6, 8)


def test_camvid_bad_inputs_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="needs --data-root"):
        build_dataset("camvid", split="train")
    with pytest.raises(TrainingError, match="does not exist"):
        build_dataset("camvid", root=str(tmp_path / "nowhere"), split="train")
    (tmp_path / "train").mkdir()
    with pytest.raises(TrainingError, match="trainannot"):
        build_dataset("camvid", root=str(tmp_path), split="train")
    _write_camvid(tmp_path, "val", 2, bad_value=40)
    ds = build_dataset("camvid", root=str(tmp_path), split="val", input_size=(12, 16))
    ds[0]
    with pytest.raises(TrainingError, match=r"valannot/f1\.png has class 40"):
        ds[1]
    with pytest.raises(TrainingError, match="unknown dataset 'kitti'"):
        build_dataset("kitti", split="train")


def test_voc_layout(tmp_path: Path) -> None:
    base = tmp_path / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True)
    Image.new("RGB", (10, 8), (10, 20, 30)).save(base / "JPEGImages" / "a.jpg")
    label = Image.fromarray(
        np.array([[0, 15, 255, 3]] * 8, dtype=np.uint8).repeat(3, axis=1)[:, :10], mode="L"
    ).convert("P")
    label.save(base / "SegmentationClass" / "a.png")
    (base / "ImageSets" / "Segmentation" / "train.txt").write_text("a\n")
    ds = build_dataset("voc", root=str(tmp_path), split="train", input_size=(8, 10))
    assert ds.num_classes == 21 and ds.sample_ids == ["a"]
    assert set(torch.unique(ds[0][1]).tolist()) == {0, 3, 15, IGNORE_INDEX}
    with pytest.raises(TrainingError, match="split list"):
        build_dataset("voc", root=str(tmp_path), split="val")


def test_cityscapes_layout_maps_label_ids_to_train_ids(tmp_path: Path) -> None:
    img_dir = tmp_path / "leftImg8bit" / "val" / "city"
    gt_dir = tmp_path / "gtFine" / "val" / "city"
    img_dir.mkdir(parents=True)
    gt_dir.mkdir(parents=True)
    Image.new("RGB", (4, 2)).save(img_dir / "city_0_0_leftImg8bit.png")
    Image.fromarray(np.array([[7, 26, 0, 33], [7, 7, 7, 7]], dtype=np.uint8), mode="L").save(
        gt_dir / "city_0_0_gtFine_labelIds.png"
    )
    ds = build_dataset("cityscapes", root=str(tmp_path), split="val", input_size=(2, 4))
    assert ds.num_classes == 19 and ds.sample_ids == ["city/city_0_0"]
    assert ds[0][1][0].tolist() == [0, 13, IGNORE_INDEX, 18]


def test_split_slice_selects_images_by_position_with_stable_ids(tmp_path: Path) -> None:
    _write_camvid(tmp_path, "val", 5)
    whole = build_dataset("camvid", root=str(tmp_path), split="val", input_size=(12, 16))
    head = build_dataset("camvid", root=str(tmp_path), split="val[0:2]", input_size=(12, 16))
    tail = build_dataset("camvid", root=str(tmp_path), split="val[2:]", input_size=(12, 16))
    assert head.sample_ids == ["f0", "f1"] and tail.sample_ids == ["f2", "f3", "f4"]
    assert head.split == "val[0:2]" and head.name == "camvid" and head.num_classes == 11
    for index in range(3):
        assert torch.equal(tail[index][0], whole[index + 2][0])
        assert torch.equal(tail[index][1], whole[index + 2][1])
    limited = build_dataset(
        "camvid", root=str(tmp_path), split="val[1:]", input_size=(12, 16), size=2
    )
    assert limited.sample_ids == ["f1", "f2"]
    hashes = {dataset_content_hash(d) for d in (whole, head, tail, limited)}
    assert len(hashes) == 4  # each part is its own calibration set


def test_split_slice_on_synthetic_matches_the_whole_split() -> None:
    whole = build_dataset("synthetic", split="val", input_size=(16, 16), size=6)
    part = build_dataset("synthetic", split="val[4:6]", input_size=(16, 16))
    assert part.sample_ids == whole.sample_ids[4:6]
    assert torch.equal(part.raw(1)[0], whole.raw(5)[0])


def test_split_slice_mistakes_are_one_clear_error(tmp_path: Path) -> None:
    _write_camvid(tmp_path, "val", 3)
    root = str(tmp_path)
    with pytest.raises(TrainingError, match=r"has 3; use bounds within 0:3"):
        build_dataset("camvid", root=root, split="val[1:9]", input_size=(12, 16))
    with pytest.raises(TrainingError, match="selects no images"):
        build_dataset("camvid", root=root, split="val[2:2]", input_size=(12, 16))
    with pytest.raises(TrainingError, match=r"cannot read; use NAME"):
        build_dataset("camvid", root=root, split="val[-1:]", input_size=(12, 16))
    with pytest.raises(TrainingError, match="has 3"):
        build_dataset("camvid", root=root, split="val[3:]", input_size=(12, 16))


def test_strided_random_glob_and_union_selections_keep_ids_and_hash_apart(tmp_path: Path) -> None:
    _write_camvid(tmp_path, "val", 6)
    _write_camvid(tmp_path, "train", 4, prefix="t")
    root, size = str(tmp_path), (12, 16)
    whole = build_dataset("camvid", root=root, split="val", input_size=size)
    even = build_dataset("camvid", root=root, split="val[::2]", input_size=size)
    odd = build_dataset("camvid", root=root, split="val[1::2]", input_size=size)
    assert even.sample_ids == ["f0", "f2", "f4"] and odd.sample_ids == ["f1", "f3", "f5"]
    assert torch.equal(odd.raw(2)[0], whole.raw(5)[0]) and torch.equal(odd[2][1], whole[5][1])
    drawn = build_dataset("camvid", root=root, split="val[random=3,seed=7]", input_size=size)
    again = build_dataset("camvid", root=root, split="val[random=3,seed=7]", input_size=size)
    other_seed = [
        build_dataset("camvid", root=root, split=f"val[random=3,seed={s}]", input_size=size)
        for s in range(8)
    ]
    assert drawn.sample_ids == again.sample_ids and len(drawn) == 3
    assert drawn.sample_ids == sorted(drawn.sample_ids, key=lambda i: int(i[1:]))  # data order
    assert len({tuple(d.sample_ids) for d in other_seed}) > 1  # the seed matters
    union = build_dataset("camvid", root=root, split="train[1:3]+val[4:]", input_size=size)
    assert union.sample_ids == ["t1", "t2", "f4", "f5"] and union.name == "camvid"
    globbed = build_dataset("camvid", root=root, split="train[t*][1::2]+val[::5]", input_size=size)
    assert globbed.sample_ids == ["t1", "t3", "f0", "f5"]
    assert torch.equal(globbed.raw(2)[0], whole.raw(0)[0])
    chained = build_dataset("camvid", root=root, split="val[1:][::2]", input_size=size)
    assert chained.sample_ids == ["f1", "f3", "f5"]
    limited = build_dataset("camvid", root=root, split="val[::2]", input_size=size, size=2)
    assert limited.sample_ids == ["f0", "f2"]
    sets = (whole, even, odd, drawn, union, globbed, chained, limited)
    assert len({dataset_content_hash(d) for d in sets}) == len(sets)
    assert dataset_content_hash(odd) == dataset_content_hash(
        build_dataset("camvid", root=root, split="val[1::2]", input_size=size)
    )


def test_synthetic_selections_generate_the_split_they_cut() -> None:
    whole = build_dataset("synthetic", split="val", input_size=(16, 16), size=64)
    odd = build_dataset("synthetic", split="val[1::2]", input_size=(16, 16))
    parts = build_dataset("synthetic", split="val[0:2]+val[10:12]", input_size=(16, 16))
    assert odd.sample_ids == whole.sample_ids[1::2]
    assert parts.sample_ids == whole.sample_ids[0:2] + whole.sample_ids[10:12]
    assert torch.equal(parts.raw(3)[0], whole.raw(11)[0])


@pytest.mark.parametrize(
    ("split", "message"),
    [
        ("val[::2]+val[0:1]", "selects image 'f0' twice"),
        ("val+val[1:]", "twice"),
        ("val[zz*]", "selects no images"),
        ("val[::0]", "step 0"),
        ("val[random=0]", "selects no images"),
        ("val[random=9]", "at most random=4"),
        ("val[::2", "not a selection"),
        ("val[a=b]", "cannot read"),
        ("val+", "not a selection"),
        ("val[5:]", "has 4; use bounds within 0:4"),
        ("+".join(f"val[{i}:{i + 1}]" for i in range(4)) + "+val" * 30, "at most 100"),
    ],
)
def test_bad_selections_are_one_clear_error(tmp_path: Path, split: str, message: str) -> None:
    _write_camvid(tmp_path, "val", 4)
    with pytest.raises(TrainingError, match=re.escape(message)):
        build_dataset("camvid", root=str(tmp_path), split=split, input_size=(12, 16))
