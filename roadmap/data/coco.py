"""COCO 2017 instances as torchvision's detection targets (Mask R-CNN): the official layout
(`<root>/{train,val}2017/*.jpg`, `<root>/annotations/instances_{train,val}2017.json`), read with
pycocotools (`pip install roadmap[detection]`). Per image: boxes (x1, y1, x2, y2), labels 1..K in
sorted category-id order (0 is the background), masks decoded from polygons and RLE; crowd regions
(iscrowd) are left out of the training targets, as torchvision's reference scripts do, and counted."""
from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as F

from roadmap.data.errors import DataError


def _coco_api() -> Any:
    try:
        from pycocotools.coco import COCO
    except ImportError as error:
        raise DataError("COCO data needs pycocotools: pip install 'roadmap[detection]'") from error
    return COCO


class CocoInstances(Dataset):
    """`split` ("train" or "val") of the COCO tree at `root`: (image float [3, H, W] in [0, 1], target)."""

    def __init__(self, root: str | Path, split: str = "train") -> None:
        root = Path(root).expanduser()
        self.images = root / f"{split}2017"
        annotations = root / "annotations" / f"instances_{split}2017.json"
        for path in (self.images, annotations):
            if not path.exists():
                raise DataError(f"data.root={str(root)!r}: no {path.relative_to(root)} (the COCO 2017 layout: "
                                f"{split}2017/ and annotations/instances_{split}2017.json)")
        try:
            dataset = json.loads(annotations.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DataError(f"{annotations}: not JSON ({error})") from None
        known = {image["id"] for image in dataset.get("images", [])}
        unknown = [a["image_id"] for a in dataset.get("annotations", []) if a["image_id"] not in known]
        if unknown:
            raise DataError(f"{annotations}: {len(unknown)} annotation(s) name an image it does not list "
                            f"(image_id {unknown[0]} first)")
        self.coco = _coco_api()()
        self.coco.dataset = dataset
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            self.coco.createIndex()
        self.ids = sorted(self.coco.imgs)
        missing = [self.coco.imgs[i]["file_name"] for i in self.ids
                   if not (self.images / self.coco.imgs[i]["file_name"]).is_file()]
        if missing:
            raise DataError(f"{self.images}: {len(missing)} image(s) the annotations list are missing "
                            f"({missing[0]} first)")
        self.category_ids = sorted(self.coco.cats)
        self.label_of = {category: i + 1 for i, category in enumerate(self.category_ids)}

    @property
    def num_classes(self) -> int:
        """Categories + the background (COCO: 81 labels; torchvision's COCO models use 91, the raw ids)."""
        return len(self.category_ids) + 1

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        image = F.to_dtype(F.pil_to_tensor(Image.open(self.images / info["file_name"]).convert("RGB")), scale=True)
        annotations = [a for a in self.coco.imgToAnns[image_id] if not a.get("iscrowd", 0)]
        annotations = [a for a in annotations if a["bbox"][2] > 0 and a["bbox"][3] > 0]
        boxes = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # (x, y, w, h) -> (x1, y1, x2, y2)
        height, width = info["height"], info["width"]
        with warnings.catch_warnings():  # pycocotools' NumPy 2 copy= DeprecationWarning, once per mask
            warnings.simplefilter("ignore", DeprecationWarning)
            masks = [self.coco.annToMask(a) for a in annotations]
        return image, {
            "boxes": boxes.clamp_(min=0).minimum(torch.tensor([width, height, width, height], dtype=torch.float32)),
            "labels": torch.tensor([self.label_of[a["category_id"]] for a in annotations], dtype=torch.int64),
            # np.stack, not torch.stack: annToMask's arrays are Fortran-ordered, which torch copies ~40x slower
            "masks": torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, height, width, dtype=torch.uint8),
            "image_id": torch.tensor(image_id),
            "crowd_regions": torch.tensor(sum(1 for a in self.coco.imgToAnns[image_id] if a.get("iscrowd", 0))),
        }
