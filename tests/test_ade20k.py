"""ADE20K-layout scenes (roadmap.data.ade20k) on ../shared/data/camvid-ade (CamVid's 11 classes in ADE20K's
layout): counts, reduce_zero_label, mmseg's train/eval transforms; bad trees and labels are one line."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from roadmap.data import DataError
from roadmap.data.ade20k import (
    ADE20KScenes,
    RandomCropCatMax,
    eval_transform,
    fit_size,
    train_transform,
)
from tests.conftest import SHARED

CAMVID = SHARED / "data" / "camvid-ade"
ALLOWED = set(range(11)) | {255}


@pytest.mark.parametrize(("split", "count"), [("training", 367), ("validation", 101)])
def test_camvid_ade_reads_with_reduce_zero_label(split: str, count: int) -> None:
    data = ADE20KScenes(CAMVID, split, num_classes=11)
    assert len(data) == count
    for index in range(0, count, 50):
        image, label = data[index]
        assert image.shape == (3, 360, 480) and image.dtype == torch.float32
        assert 0 <= image.min() and image.max() <= 1
        assert label.shape == (360, 480) and label.dtype == torch.int64
        assert set(label.unique().tolist()) <= ALLOWED
        raw = torch.from_numpy(np.asarray(Image.open(data.annotation(index))).astype(np.int64))
        # raw 0 (unlabelled) -> 255 (ignored), raw k -> k - 1
        assert torch.equal(label, torch.where(raw == 0, 255, raw - 1))
    assert (raw > 0).any() and (raw == 0).any()  # the last image checked has both kinds of pixels


def test_train_transform_crops_pads_and_is_seeded() -> None:
    data = ADE20KScenes(CAMVID, "training", num_classes=11)
    image, label = data[0]
    transform = train_transform(crop_size=256)
    torch.manual_seed(0)
    first = transform(image, label)
    torch.manual_seed(0)
    again = transform(image, label)
    torch.manual_seed(1)
    other = transform(image, label)
    assert first[0].shape == (3, 256, 256) and first[1].shape == (256, 256) and first[1].dtype == torch.int64
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    assert set(first[1].unique().tolist()) <= ALLOWED
    # A scale whose images are smaller than the crop (short edge 90..360 < 400): padded at the bottom and
    # right with 0 (image, after normalizing) and 255 (label).
    small = train_transform(crop_size=400, scale=(720, 180))
    for seed in range(3):
        torch.manual_seed(seed)
        padded_image, padded_label = small(image, label)
        assert padded_image.shape == (3, 400, 400) and padded_label.shape == (400, 400)
        assert (padded_label[-1] == 255).all() and (padded_image[:, -1] == 0).all()
        assert padded_label[0, 0] != 255 or label.eq(255).any()


def test_cat_max_ratio_redraws_one_class_crops() -> None:
    # Left half class 0, right half class 1, top rows ignored; a 40-wide crop at left offset x (0..60) is
    # balanced (each class < 75% of the labelled pixels) only for 20 < x < 40: about 1 draw in 3. With up
    # to 10 redraws nearly every crop is balanced; without (cat_max_ratio=1) about a third.
    label = torch.zeros(100, 100, dtype=torch.int64)
    label[:, 50:], label[:5] = 1, 255
    image = torch.rand(3, 100, 100)

    def balanced(cat_max_ratio: float) -> int:
        count = 0
        for seed in range(20):
            torch.manual_seed(seed)
            _, crop = RandomCropCatMax(40, cat_max_ratio)(tv_tensors.Image(image), tv_tensors.Mask(label))
            pixels = torch.bincount(crop[crop != 255], minlength=2)
            count += int(pixels.min() > 0 and pixels.max() / pixels.sum() < 0.75)
        return count

    assert balanced(0.75) >= 17 and balanced(1.0) <= 10


def test_eval_transform_keeps_the_label_size() -> None:
    image, label = ADE20KScenes(CAMVID, "validation", num_classes=11)[0]
    out_image, out_label = eval_transform()(image, label)
    # mmcv's fit of 480x360 into (2048, 512): factor min(2048/480, 512/360) = 1.4222 -> 683x512.
    assert fit_size(360, 480, (2048, 512)) == (512, 683)
    assert out_image.shape == (3, 512, 683) and torch.equal(out_label, label)
    assert out_image.mean(dim=(1, 2)).abs().max() < 2  # normalized


def copy_tree(root: Path, names: list[str]) -> None:
    for folder in ("images/training", "annotations/training"):
        (root / folder).mkdir(parents=True)
    for name in names:
        shutil.copy(CAMVID / "images" / "training" / f"{name}.jpg", root / "images" / "training")
        shutil.copy(CAMVID / "annotations" / "training" / f"{name}.png", root / "annotations" / "training")


def one_line(error: pytest.ExceptionInfo[DataError]) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_bad_trees_are_one_line(tmp_path: Path) -> None:
    names = sorted(p.stem for p in (CAMVID / "images" / "training").glob("*.jpg"))[:3]
    root = tmp_path / "ade"
    with pytest.raises(DataError, match=r"no images/training/ \(the ADE20K layout") as error:
        ADE20KScenes(root)
    one_line(error)
    with pytest.raises(DataError, match=r"split='train': expected 'training' or 'validation'") as error:
        ADE20KScenes(root, "train")
    copy_tree(root, [])
    with pytest.raises(DataError, match=r"images/training: no \.jpg images") as error:
        ADE20KScenes(root)
    one_line(error)
    shutil.rmtree(root)
    copy_tree(root, names)
    for name in names[1:]:
        (root / "annotations" / "training" / f"{name}.png").unlink()
    with pytest.raises(DataError, match=rf"2 image\(s\) have no annotation png \({names[1]}\.png first") as error:
        ADE20KScenes(root)
    one_line(error)


def test_bad_items_are_one_line(tmp_path: Path) -> None:
    name = min(p.stem for p in (CAMVID / "images" / "training").glob("*.jpg"))
    root = tmp_path / "ade"
    copy_tree(root, [name])
    png = root / "annotations" / "training" / f"{name}.png"
    # A raw label 12 with 11 classes: found on read, naming the file, the value and the key.
    raw = np.asarray(Image.open(png)).copy()
    raw[5, 7] = 12
    Image.fromarray(raw).save(png)
    data = ADE20KScenes(root, num_classes=11)
    with pytest.raises(DataError, match=rf"{name}\.png: label value 12 > data\.num_classes=11") as error:
        data[0]
    one_line(error)
    Image.open(png).convert("RGB").save(png)
    with pytest.raises(DataError, match=rf"cannot read annotation .*{name}\.png \(mode RGB") as error:
        ADE20KScenes(root, num_classes=11)[0]
    one_line(error)
    Image.new("L", (10, 10)).save(png)
    with pytest.raises(DataError, match=r"annotation is 10x10 but its image .* is 480x360") as error:
        ADE20KScenes(root, num_classes=11)[0]
    one_line(error)
    (root / "images" / "training" / f"{name}.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=rf"cannot read image .*{name}\.jpg \(") as error:
        ADE20KScenes(root, num_classes=11)[0]
    one_line(error)
