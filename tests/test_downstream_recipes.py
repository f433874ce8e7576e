"""The downstream presets (experiment=coco_mask_rcnn_3x, experiment=ade20k_upernet_160k) against
../shared/reference/family.md's COCO and ADE20K settings, field by field, for every model they name."""
from __future__ import annotations

import csv
import re

import pytest

from roadmap.finetune import layer_id
from roadmap.plan import plan_run
from roadmap.reference import PAPER_DOWNSTREAM
from tests.conftest import SHARED
from tests.test_recipe import compose_run

FAMILY_MD = (SHARED / "reference" / "family.md").read_text()
COCO = FAMILY_MD.split("## COCO", 1)[1].split("## ADE20K", 1)[0]
ADE = FAMILY_MD.split("## ADE20K", 1)[1]
PROSE_COCO, PROSE_ADE = (" ".join(text.split()) for text in (COCO, ADE))  # the settings' lines wrap
MODELS = {"T": "convnext_tiny", "S": "convnext_small", "B": "convnext_base", "L": "convnext_large",
          "XL": "convnext_xlarge"}


def _plan(experiment: str, step: str, tmp_path) -> dict:
    cfg = compose_run(f"experiment={experiment}", "regime=family", f"step={step}", "init_from=/weights.pth",
                      f"output_root={tmp_path}")
    return plan_run(cfg)


def _layers(plan) -> int:
    """The official code's `num_layers` for the model: its last stage's layer."""
    return layer_id("stages.3.blocks.0.conv1.weight", plan.arch.depths)


def test_mask_rcnn_3x_equals_family_md(tmp_path) -> None:
    row = re.search(r"\| Mask R-CNN T \| ([\d.e-]+) \| ([\d.]+) \| ([\d.]+), (\d+) \|", COCO).groups()
    plan = _plan("coco_mask_rcnn_3x", "convnext_tiny", tmp_path)
    cfg, recipe = plan.cfg, plan.cfg.recipe
    assert plan.lr == float(row[0]) and recipe.optimizer.base_batch == recipe.global_batch == 16
    assert recipe.drop_path == float(row[1]) and recipe.optimizer.layer_decay == float(row[2])
    assert _layers(plan) == int(row[3])
    assert re.search(r"3× schedule = (\d+) epochs", PROSE_COCO)[1] == str(recipe.epochs)
    assert recipe.optimizer.name == "adamw" and f"weight decay {recipe.optimizer.weight_decay}" in PROSE_COCO
    steps = re.search(r"lr steps ×([\d.]+) at epochs (\d+) and (\d+)", PROSE_COCO).groups()
    assert (recipe.schedule.name, recipe.schedule.gamma, list(recipe.schedule.milestones)) == (
        "step", float(steps[0]), [int(steps[1]), int(steps[2])])
    short = re.search(r"short side (\d+)–(\d+), long side ≤ (\d+)", PROSE_COCO).groups()
    assert (cfg.task.train_sizes[0], cfg.task.train_sizes[-1], cfg.task.max_size) == tuple(map(int, short))
    assert cfg.data.image_size == int(short[1])  # evaluation at the largest short side, as mmdetection's test scale
    assert f"batch {recipe.global_batch} (2 per GPU × 8)" in PROSE_COCO and cfg.trainer.per_device_batch == 2
    assert f"FPN ({cfg.task.fpn_channels} channels)" in PROSE_COCO
    assert "without EMA" in PROSE_COCO and recipe.ema_decay is None and not cfg.init_from_ema
    assert cfg.trainer.precision in ("auto", "bf16-mixed") and "mixed precision" in PROSE_COCO


@pytest.mark.parametrize("size", MODELS)
def test_upernet_160k_equals_family_md(size: str, tmp_path) -> None:
    plan = _plan("ade20k_upernet_160k", MODELS[size], tmp_path)
    cfg, recipe = plan.cfg, plan.cfg.recipe
    lr = re.search(r"AdamW lr ([\d.e-]+) \(XL ([\d.e-]+)\)", PROSE_ADE).groups()
    assert plan.lr == float(lr[1] if size == "XL" else lr[0]) and recipe.global_batch == 16
    assert re.search(r"UperNet, (\d+)k iterations, batch (\d+)", FAMILY_MD).groups() == (
        str(recipe.max_steps // 1000), str(recipe.global_batch))
    assert f"weight decay {recipe.optimizer.weight_decay}" in PROSE_ADE
    warmup = re.search(r"poly schedule \(power (\d+)\) after ([\d,]+) linear warmup", PROSE_ADE).groups()
    assert (recipe.schedule.name, recipe.schedule.power, recipe.schedule.warmup_steps) == (
        "warmup_poly", float(warmup[0]), int(warmup[1].replace(",", "")))
    decay = re.search(r"layer-wise lr decay ([\d.]+) \((\d+) layers for T, (\d+) for the others\)", PROSE_ADE).groups()
    assert recipe.optimizer.layer_decay == float(decay[0]) and _layers(plan) == int(decay[1] if size == "T" else decay[2])
    drop = dict(re.findall(r"(T|S|B/L/XL) ([\d.]+)", re.search(r"drop path (T [\d.]+, S [\d.]+, B/L/XL [\d.]+)", PROSE_ADE)[1]))
    assert recipe.drop_path == float(drop[size] if size in drop else drop["B/L/XL"])
    assert f"UperNet head with {cfg.task.decoder_channels} channels and pooling scales (1, 2, 3, 6)" in PROSE_ADE
    assert f"(loss weight {cfg.task.aux_weight})" in PROSE_ADE and cfg.trainer.sync_batchnorm and "SyncBN" in PROSE_ADE
    assert f"{cfg.data.num_classes} classes with label 0" in PROSE_ADE
    slide = re.search(r"slides a (\d+) window with stride (\d+)", PROSE_ADE).groups()
    assert (cfg.data.image_size, cfg.task.slide_stride) == tuple(map(int, slide))
    ratios = re.search(r"ratios ([\d.]+)–([\d.]+) and flip", PROSE_ADE).groups()
    assert (cfg.task.eval_ratios[0], cfg.task.eval_ratios[-1]) == tuple(map(float, ratios))
    assert recipe.ema_decay is None and "without EMA" in PROSE_COCO  # ImageNet weights without EMA, as for COCO


def test_the_paper_endpoints_equal_family_md() -> None:
    coco = re.search(r"\| Mask R-CNN, ConvNeXt-T \| \d+G \| (.*) \|", COCO)[1].split(" | ")
    assert list(PAPER_DOWNSTREAM["detection"].values())[:-1] == [float(v) for v in coco]
    ade = re.search(r"\| T \| 512 \| ([\d.]+) \| ([\d.]+) \|", ADE).groups()
    assert list(PAPER_DOWNSTREAM["segmentation"].values())[:-1] == [float(v) for v in ade]
    family = {row["model"]: row for row in csv.DictReader((SHARED / "reference" / "family.csv").open())}
    for task in PAPER_DOWNSTREAM.values():
        assert task["init_top1"] == float(family["convnext_tiny"]["top1_1k_224"])
