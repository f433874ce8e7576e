"""CocoEvaluator (roadmap.evaluation.coco) on ../shared/data/coco-tiny val: its AP equals pycocotools'
COCOeval run directly on the same detections, over the images it was given; the DDP gather path
reproduces it."""
from __future__ import annotations

import contextlib
import io
import json
import pickle

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from roadmap.data.coco import CocoInstances
from roadmap.evaluation.coco import CocoEvaluator
from tests.conftest import SHARED

COCO_TINY = SHARED / "data" / "coco-tiny"
KEYS = [f"ap_{kind}{suffix}" for kind in ("box", "mask") for suffix in ("", "_50", "_75", "_s", "_m", "_l")]
Outputs = dict[int, dict[str, torch.Tensor]]


@pytest.fixture(scope="module")
def val() -> tuple[CocoInstances, dict[int, dict[str, torch.Tensor]]]:
    data = CocoInstances(COCO_TINY, "val")
    return data, {int(target["image_id"]): target for _, target in (data[i] for i in range(len(data)))}


def as_outputs(boxes: list, labels: list, masks: list, scores: list, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """MaskRCNN's eval-mode output, but with binary masks (`probabilities` makes them MaskRCNN's)."""
    return {"boxes": torch.tensor(np.array(boxes), dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64), "scores": torch.tensor(scores, dtype=torch.float32),
            "masks": torch.from_numpy(np.stack(masks) if masks else np.zeros((0, *size), np.uint8))[:, None]}


def probabilities(outputs: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """The outputs with mask probabilities 0.7 on the binary masks and 0.3 off them (kept binary in the
    fixture: all of them as floats would take a gigabyte)."""
    return [{**output, "masks": output["masks"].float().mul_(0.4).add_(0.3)} for output in outputs]


@pytest.fixture(scope="module")
def fake(val: tuple[CocoInstances, dict]) -> tuple[list[dict], Outputs]:
    """The same detections as COCO results and as MaskRCNN outputs, built from the ground truth: a fifth of
    the objects dropped, boxes jittered, masks shifted or eroded, a third repeated under the next category
    (false positives), seeded scores."""
    data, targets = val
    rng = np.random.default_rng(0)
    k = len(data.category_ids)
    results, outputs = [], {}
    for image_id, target in targets.items():
        # The target's objects, in the annotations' order: non-crowd, with a positive width and height.
        anns = [a for a in data.coco.imgToAnns[image_id] if not a["iscrowd"] and a["bbox"][2] > 0 and a["bbox"][3] > 0]
        boxes, labels, masks, scores = [], [], [], []
        for ann, box, label, mask in zip(anns, target["boxes"], target["labels"].tolist(), target["masks"]):
            if rng.random() < 0.2:
                continue
            w, h = (box[2:] - box[:2]).tolist()
            box = np.round((box.numpy() + rng.normal(0, 0.1, 4) * [w, h, w, h]) * 8) / 8  # exact in float32
            box[2:] = np.maximum(box[2:], box[:2] + 1)
            mask = mask.numpy()
            if rng.random() < 0.5:
                mask = np.roll(mask, (rng.integers(-3, 4), rng.integers(-3, 4)), (0, 1))
            else:  # eroded: the pixels whose upper and left neighbours are in the mask too
                mask = mask & np.roll(mask, 1, 0) & np.roll(mask, 1, 1)
            rle = mask_util.encode(np.asfortranarray(mask))
            copies = [(ann["category_id"], label)]
            if rng.random() < 0.3:
                copies.append((data.category_ids[label % k], label % k + 1))  # the next category
            for category, label in copies:
                score = float(np.float32(rng.random()))
                results.append({"image_id": image_id, "category_id": category, "score": score,
                                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "segmentation": rle})
                boxes.append(box)
                labels.append(label)
                masks.append(mask)
                scores.append(score)
        outputs[image_id] = as_outputs(boxes, labels, masks, scores, tuple(target["masks"].shape[1:]))
    return results, outputs


def pycocotools_ap(results: list[dict], image_ids: list[int]) -> dict[str, float]:
    """pycocotools' COCOeval, as its README runs it, in percent (-1: no ground truth of that size)."""
    gt = COCO()
    gt.dataset = json.loads((COCO_TINY / "annotations" / "instances_val2017.json").read_text())
    stats = []
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        for iou_type in ("bbox", "segm"):
            drop = "segmentation" if iou_type == "bbox" else "bbox"
            evaluator = COCOeval(gt, gt.loadRes([{k: v for k, v in r.items() if k != drop} for r in results]), iou_type)
            evaluator.params.imgIds = image_ids
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            stats += [s * 100 if s >= 0 else s for s in evaluator.stats[:6]]
    return dict(zip(KEYS, stats))


def assert_matches(ours: dict[str, float | None], reference: dict[str, float]) -> None:
    assert list(ours) == KEYS
    for key in KEYS:
        if reference[key] == -1:
            assert ours[key] is None, key
        else:
            assert ours[key] == pytest.approx(reference[key], rel=0, abs=1e-9), key


def test_ap_equals_pycocotools(val: tuple[CocoInstances, dict], fake: tuple[list[dict], Outputs]) -> None:
    data, _ = val
    results, outputs = fake
    evaluator = CocoEvaluator(data)
    ids = sorted(outputs)
    for start in range(0, len(ids), 8):  # batches of 8
        evaluator.update(ids[start:start + 8], probabilities([outputs[i] for i in ids[start:start + 8]]))
    ours = evaluator.compute()
    assert_matches(ours, pycocotools_ap(results, ids))
    assert 20 < ours["ap_box"] < 80 and 20 < ours["ap_mask"] < 80  # neither trivial nor perfect

    # The DDP path: each rank's share (DistributedSampler's interleave) gathered as pickles into another
    # evaluator; rank 0's twice, as the sampler's padding repeats images: they count once.
    merged = CocoEvaluator(data)
    for rank in (0, 1, 0):
        share = ids[rank::2]
        gathered = ([d for d in evaluator.detections() if d["image_id"] in share], share)
        merged.add(*pickle.loads(pickle.dumps(gathered)))
    assert merged.compute() == ours
    json.dumps(merged.detections())  # plain Python values: RLE counts are str

    evaluator.reset()
    with pytest.raises(ValueError, match="no images were scored"):
        evaluator.compute()


def test_subset_is_scored_over_the_images_given(val: tuple[CocoInstances, dict],
                                                fake: tuple[list[dict], Outputs]) -> None:
    data, _ = val
    results, outputs = fake
    # The images without large objects: AP_l is None; the last five get no detections (their objects are misses).
    ids = sorted({a["image_id"] for a in data.coco.anns.values()} - {a["image_id"] for a in data.coco.anns.values()
                                                                      if a["area"] >= 96**2})
    assert len(ids) > 8
    evaluator = CocoEvaluator(data)
    empty = {k: v[:0] for k, v in outputs[ids[0]].items()}
    evaluator.update(ids, probabilities([outputs[i] for i in ids[:-5]] + [empty] * 5))
    ours = evaluator.compute()
    assert_matches(ours, pycocotools_ap([r for r in results if r["image_id"] in ids[:-5]], ids))
    assert ours["ap_box_l"] is None and ours["ap_mask_l"] is None
    full = CocoEvaluator(data)
    full.update(ids[:-5], probabilities([outputs[i] for i in ids[:-5]]))
    assert full.compute()["ap_box"] > ours["ap_box"]  # the five images' objects counted as misses above


def test_perfect_detections_score_100(val: tuple[CocoInstances, dict]) -> None:
    data, targets = val
    evaluator = CocoEvaluator(data)
    for image_id, target in targets.items():
        n = len(target["labels"])
        evaluator.update([image_id], [{"boxes": target["boxes"], "labels": target["labels"], "scores": torch.ones(n),
                                       "masks": target["masks"][:, None].float()}])
    assert evaluator.compute() == dict.fromkeys(KEYS, 100.0)  # pycocotools gives exactly 100 here too


def test_no_detections_score_zero(val: tuple[CocoInstances, dict]) -> None:
    data, targets = val
    evaluator = CocoEvaluator(data)
    nothing = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0),
               "masks": torch.zeros(0, 1, 1, 1)}
    evaluator.update(list(targets), [nothing] * len(targets))
    assert evaluator.detections() == []
    assert evaluator.compute() == dict.fromkeys(KEYS, 0.0)
    with pytest.raises(ValueError, match="no images were scored"):
        CocoEvaluator(data).compute()


def test_labels_map_to_sorted_category_ids(val: tuple[CocoInstances, dict]) -> None:
    data, targets = val
    image_id, other_id = list(targets)[:2]
    height, width = targets[image_id]["masks"].shape[1:]
    masks = torch.zeros(2, 1, height, width)
    masks[0, 0, 2:5, 3:7] = 0.9  # 3 x 4 pixels at x 3, y 2
    masks[1, 0, :, :] = 0.4  # below the threshold everywhere
    output = {"boxes": torch.tensor([[3.0, 2.0, 7.0, 5.0], [0.0, 0.0, 10.5, 20.0]]),
              "labels": torch.tensor([1, 80]), "scores": torch.tensor([0.75, 0.25]), "masks": masks}
    evaluator = CocoEvaluator(data)
    evaluator.update([image_id], [output])
    first, last = evaluator.detections()
    assert (first["category_id"], last["category_id"]) == (data.category_ids[0], data.category_ids[79]) == (1, 90)
    assert (first["image_id"], first["score"], first["bbox"], last["bbox"]) == (image_id, 0.75, [3, 2, 4, 3], [0, 0, 10.5, 20])
    assert mask_util.area(first["segmentation"]) == 12 and mask_util.area(last["segmentation"]) == 0
    assert mask_util.toBbox(first["segmentation"]).tolist() == [3, 2, 4, 3]
    with pytest.raises(ValueError, match=r"labels outside 1..80"):
        evaluator.update([other_id], [{**output, "labels": torch.tensor([0, 1])}])
    with pytest.raises(ValueError, match="not in the dataset"):
        evaluator.update([-1], [output])
    with pytest.raises(ValueError, match="masks must be in the image's own pixels"):
        CocoEvaluator(data).update([image_id], [{**output, "masks": masks[..., :-1]}])
    boxes_only = CocoEvaluator(data, iou_types=("bbox",))  # Faster R-CNN: no masks needed
    boxes_only.update([image_id], [{k: v for k, v in output.items() if k != "masks"}])
    assert list(boxes_only.compute()) == KEYS[:6] and "segmentation" not in boxes_only.detections()[0]
    with pytest.raises(ValueError, match="iou_types"):
        CocoEvaluator(data, iou_types=("keypoints",))
