"""COCO 2017 instances (roadmap.data.coco) on ../shared/data/coco-tiny: targets as torchvision's Mask
R-CNN takes them; bad trees and annotation files are one line."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from roadmap.data import DataError
from roadmap.data.coco import CocoInstances
from tests.conftest import SHARED

COCO_TINY = SHARED / "data" / "coco-tiny"


@pytest.mark.parametrize("split", ["train", "val"])
def test_coco_tiny_gives_mask_rcnn_targets(split: str) -> None:
    data = CocoInstances(COCO_TINY, split)
    raw = json.loads((COCO_TINY / "annotations" / f"instances_{split}2017.json").read_text())
    assert len(data) == len(raw["images"]) == 80 and data.num_classes == 81
    crowd = 0
    for index in range(len(data)):
        image, target = data[index]
        height, width = image.shape[1:]
        assert image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
        n = len(target["labels"])
        assert target["boxes"].shape == (n, 4) and target["masks"].shape == (n, height, width)
        assert (target["boxes"][:, 2:] > target["boxes"][:, :2]).all()
        assert ((1 <= target["labels"]) & (target["labels"] <= 80)).all()
        assert (target["masks"].flatten(1).sum(1) > 0).all()  # every polygon decodes to pixels
        crowd += int(target["crowd_regions"])
    assert crowd == sum(a["iscrowd"] for a in raw["annotations"])
    # The first annotation of the first image: its box and its category's label.
    first = min(raw["images"], key=lambda i: i["id"])
    anns = [a for a in raw["annotations"] if a["image_id"] == first["id"] and not a["iscrowd"]]
    x, y, w, h = anns[0]["bbox"]
    _, target = data[0]
    expected = [x, y, min(x + w, first["width"]), min(y + h, first["height"])]
    torch.testing.assert_close(target["boxes"][0], torch.tensor(expected, dtype=torch.float32))
    assert target["labels"][0] == sorted(c["id"] for c in raw["categories"]).index(anns[0]["category_id"]) + 1


def test_bad_coco_trees_are_one_line(tmp_path: Path) -> None:
    root = tmp_path / "coco"
    with pytest.raises(DataError, match=r"no val2017 \(the COCO 2017 layout"):
        CocoInstances(root, "val")
    (root / "annotations").mkdir(parents=True)
    shutil.copytree(COCO_TINY / "val2017", root / "val2017")
    annotations = root / "annotations" / "instances_val2017.json"
    annotations.write_text("{not json")
    with pytest.raises(DataError, match="instances_val2017.json: not JSON"):
        CocoInstances(root, "val")
    raw = json.loads((COCO_TINY / "annotations" / "instances_val2017.json").read_text())
    raw["annotations"][0]["image_id"] = 123456789
    annotations.write_text(json.dumps(raw))
    with pytest.raises(DataError, match=r"1 annotation\(s\) name an image it does not list \(image_id 123456789"):
        CocoInstances(root, "val")
    raw = json.loads((COCO_TINY / "annotations" / "instances_val2017.json").read_text())
    annotations.write_text(json.dumps(raw))
    (root / "val2017" / raw["images"][0]["file_name"]).unlink()
    with pytest.raises(DataError, match=r"1 image\(s\) the annotations list are missing"):
        CocoInstances(root, "val")
    raw["images"], raw["annotations"] = raw["images"][1:], []  # no annotations at all: empty targets
    annotations.write_text(json.dumps(raw))
    _, target = CocoInstances(root, "val")[0]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,) and target["masks"].shape[0] == 0
