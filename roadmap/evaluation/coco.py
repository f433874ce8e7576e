"""COCO box and mask AP of torchvision Mask R-CNN outputs (AP^box, AP^mask as the ConvNeXt paper reports
them), scored with faster-coco-eval (`pip install 'roadmap[detection]'`), whose figures equal pycocotools'
COCOeval. All values are in percent; DDP: gather `image_ids()` and `detections()` from every rank and
`add()` them to one evaluator before `compute()`."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from roadmap.data.coco import CocoInstances
from roadmap.data.errors import DataError

IOU_TYPES = {"bbox": "box", "segm": "mask"}
# COCOeval's first six stats: AP over IoU 0.50:0.95, at 0.50, at 0.75, then small, medium, large objects.
STATS = ("", "_50", "_75", "_s", "_m", "_l")


def _faster_coco_eval() -> Any:
    try:
        import faster_coco_eval
    except ImportError as error:
        raise DataError("COCO evaluation needs faster-coco-eval: pip install 'roadmap[detection]'") from error
    return faster_coco_eval


def _quiet(*args: Any, **kwargs: Any) -> None:
    pass


class CocoEvaluator:
    """Scores torchvision Mask R-CNN outputs on a CocoInstances split with a maintained COCO evaluator."""

    def __init__(self, dataset: CocoInstances, iou_types: Sequence[str] = ("bbox", "segm"),
                 mask_threshold: float = 0.5) -> None:
        unknown = [t for t in iou_types if t not in IOU_TYPES]
        if unknown or not iou_types:
            raise ValueError(f"iou_types={list(iou_types)!r}: expected one or both of {list(IOU_TYPES)}")
        self._api = _faster_coco_eval()
        # COCOeval adds keys (its RLE cache, ignore flags) to the ground truth's annotations: ours are copies.
        ground_truth = dataset.coco.dataset
        self._gt = self._api.COCO({**ground_truth, "annotations": [dict(a) for a in ground_truth["annotations"]]})
        self.iou_types = tuple(iou_types)
        self.mask_threshold = mask_threshold
        self.category_ids = list(dataset.category_ids)
        self._results: dict[int, list[dict]] = {}

    def update(self, image_ids: Sequence[int], outputs: Sequence[dict[str, torch.Tensor]]) -> None:
        """Adds one batch of eval-mode MaskRCNN outputs (boxes xyxy, labels 1..K, scores, masks [N, 1, H, W]
        probabilities) in each image's own pixels. An image id seen before keeps its first outputs, as a
        DistributedSampler pads the last batch with repeated images."""
        if len(image_ids) != len(outputs):
            raise ValueError(f"update: {len(image_ids)} image id(s) but {len(outputs)} output(s)")
        for image_id, output in zip(image_ids, outputs):
            image_id = int(image_id)
            if image_id not in self._gt.imgs:
                raise ValueError(f"update: image_id {image_id} is not in the dataset's annotations")
            if image_id not in self._results:
                self._results[image_id] = self._to_coco(image_id, output)

    def _to_coco(self, image_id: int, output: dict[str, torch.Tensor]) -> list[dict]:
        labels = output["labels"].detach().cpu()
        if len(labels) and not (1 <= labels.min() and labels.max() <= len(self.category_ids)):
            raise ValueError(f"update: image {image_id} has labels outside 1..{len(self.category_ids)} "
                             f"(contiguous labels; 0 is the background)")
        boxes = output["boxes"].detach().cpu().double()
        boxes[:, 2:] -= boxes[:, :2]  # (x1, y1, x2, y2) -> (x, y, w, h)
        detections = [{"image_id": image_id, "category_id": self.category_ids[label - 1], "bbox": box,
                       "score": score}
                      for label, box, score in zip(labels.tolist(), boxes.tolist(),
                                                   output["scores"].detach().cpu().tolist())]
        if "segm" in self.iou_types and detections:
            masks = (output["masks"].detach()[:, 0] > self.mask_threshold).cpu().numpy()
            size = (self._gt.imgs[image_id]["height"], self._gt.imgs[image_id]["width"])
            if masks.shape[1:] != size:
                raise ValueError(f"update: image {image_id}'s masks are {masks.shape[1:]}, the image is {size} "
                                 f"(masks must be in the image's own pixels)")
            for detection, mask in zip(detections, masks):
                rle = self._api.mask.encode(np.asfortranarray(mask, dtype=np.uint8))
                detection["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        return detections

    def image_ids(self) -> list[int]:
        """The image ids scored so far (passed to update() or add())."""
        return sorted(self._results)

    def detections(self) -> list[dict]:
        """The COCO-results dicts gathered so far (bbox x, y, w, h; segmentation as RLE with str counts)."""
        return [detection for image_id in self.image_ids() for detection in self._results[image_id]]

    def add(self, detections: list[dict], image_ids: Sequence[int]) -> None:
        """Adds another rank's `detections()` over its `image_ids()` (images without detections count as
        misses, so both are needed); images already scored here are kept as they are."""
        per_image: dict[int, list[dict]] = {int(i): [] for i in image_ids}
        for detection in detections:
            if detection["image_id"] not in per_image:
                raise ValueError(f"add: a detection names image_id {detection['image_id']}, not in image_ids")
            per_image[detection["image_id"]].append(detection)
        for image_id, image_detections in per_image.items():
            if image_id not in self._gt.imgs:
                raise ValueError(f"add: image_id {image_id} is not in the dataset's annotations")
            self._results.setdefault(image_id, image_detections)

    def compute(self) -> dict[str, float | None]:
        """AP in percent over the scored images: ap_{box,mask}{,_50,_75,_s,_m,_l} for the iou_types.
        A size with no ground truth among these images gives None; the three headline keys per type are
        always numbers (0.0 when the images hold no ground truth at all, or when nothing was detected)."""
        if not self._results:
            raise ValueError("CocoEvaluator.compute: no images were scored (call update() or add() first)")
        metrics: dict[str, float | None] = {}
        for iou_type in self.iou_types:
            drop = "segmentation" if iou_type == "bbox" else "bbox"  # segm: object size from the mask, not the box
            results = [{k: v for k, v in d.items() if k != drop} for d in self.detections()]
            # Its summary table goes to print_function (logging at INFO by default: Hydra's run log).
            evaluator = self._api.COCOeval_faster(self._gt, self._gt.loadRes(results), iou_type,
                                                  print_function=_quiet)
            evaluator.params.imgIds = self.image_ids()
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            for index, suffix in enumerate(STATS):
                stat = float(evaluator.stats[index])
                if stat < 0:  # COCOeval's -1: no ground truth to score
                    value = None if index >= 3 else 0.0
                else:
                    value = stat * 100
                metrics[f"ap_{IOU_TYPES[iou_type]}{suffix}"] = value
        return metrics

    def reset(self) -> None:
        """Forgets every image and detection (for the next validation epoch)."""
        self._results.clear()
