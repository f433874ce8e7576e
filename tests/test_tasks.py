"""The task group (`task=detection|segmentation`) through `python -m roadmap.run`: a downstream run
starts from a classification run named by its experiment, trains its head on the rung and records its
metrics; the checks before anything is written; the downstream recipes' pieces."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from roadmap.analysis import write_report
from roadmap.analysis.results_table import collect
from roadmap.model.detection import mask_rcnn
from roadmap.model.net import RoadmapNet
from roadmap.plan import RunConfigError, plan_run
from roadmap.recipe import WarmupPoly, build_optimizer
from tests.conftest import SHARED, SMOKE, TINY
from tests.test_recipe import compose_run
from tests.test_run import run_cli

COCO_TINY = SHARED / "data" / "coco-tiny"
CAMVID = SHARED / "data" / "camvid-ade"
# A downstream run as small as it can be: a quarter-width rung, tiny images, two training steps.
DETECTION = ["task=detection", "data=coco", f"data.root={COCO_TINY}", "recipe=coco_mask_rcnn_3x",
             "task.train_sizes=[64,96]", "data.image_size=96", "task.max_size=160", "recipe.epochs=1",
             "recipe.global_batch=2", "trainer.per_device_batch=2", "trainer.limit_train_batches=2",
             "trainer.limit_val_batches=2", "trainer.check_val_every_n_epoch=1", "data.num_workers=0",
             "model.width_mult=0.25"]
SEGMENTATION = ["task=segmentation", "data=camvid_ade", f"data.root={CAMVID}", "recipe=ade20k_upernet_160k",
                "data.image_size=64", "task.scale=[128,64]", "task.slide_stride=48", "recipe.max_steps=2",
                "recipe.schedule.warmup_steps=1", "recipe.global_batch=2", "trainer.per_device_batch=2",
                "trainer.limit_val_batches=2", "data.num_workers=0", "model.width_mult=0.25",
                "task.decoder_channels=32"]


@pytest.fixture(scope="module")
def classification(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """output_root holding experiment `smoke`: one finished classification run of resnet50 and of depthwise_conv."""
    out = tmp_path_factory.mktemp("out")
    for step in ("resnet50", "depthwise_conv"):
        proc = run_cli([f"step={step}", *SMOKE, *TINY], out, cwd=out)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _result(out: Path, experiment: str, step: str) -> dict:
    return json.loads((out / experiment / "r50" / step / "seed0" / "result.json").read_text())


def test_detection_starts_from_the_named_experiments_run_and_records_ap(classification: Path) -> None:
    out = classification
    proc = run_cli(["step=resnet50", *DETECTION, "init_from=smoke", "experiment_name=det", "task.eval_train=true"],
                   out, cwd=out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = _result(out, "det", "resnet50")
    assert result["status"] == "completed" and result["task"] == "detection" and result["top1"] is None
    assert result["init_from"] == str((out / "smoke" / "r50" / "resnet50" / "seed0" / "last.ckpt").resolve())
    for key in ("ap_box", "ap_box_50", "ap_box_75", "ap_mask", "ap_mask_50", "ap_mask_75"):
        assert 0 <= result[key] <= 100, key
    assert result["miou"] is None and result["dataset"] == "coco"
    assert 0 <= result["ap_box_train"] <= 100 and 0 <= result["ap_mask_train"] <= 100  # the training images, scored
    header = (out / "det" / "r50" / "resnet50" / "seed0" / "metrics.csv").read_text().splitlines()[0]
    assert "val/ap_box" in header and "val/ap_mask" in header
    results, summary = collect(out / "det")
    assert results.loc[0, "init_top1"] == _result(out, "smoke", "resnet50")["top1"]
    assert "ap_box_mean" in summary and summary.loc[0, "ap_box_mean"] == result["ap_box"]
    written = write_report(out / "det", out / "report", ["png"])
    # its own figures and table, not the classification ladder's
    assert sorted(path.name for path in written) == ["curves.png", "downstream.png", "dynamics.png", "ladder.md"]
    markdown = (out / "report" / "ladder.md").read_text()
    assert "![curves](curves.png)" in markdown and "| ap_box |" in markdown and "Spearman" not in markdown


def test_segmentation_trains_by_steps_and_records_miou(classification: Path) -> None:
    out = classification
    proc = run_cli(["step=depthwise_conv", *SEGMENTATION, "init_from=smoke", "experiment_name=seg",
                    "task.eval_ratios=[0.75,1.0]"], out, cwd=out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = _result(out, "seg", "depthwise_conv")
    assert result["status"] == "completed" and result["task"] == "segmentation"
    assert result["optimizer_steps"] == 2  # recipe.max_steps, not epochs
    assert 0 <= result["miou"] <= 100 and 0 <= result["miou_ms"] <= 100 and 0 <= result["aacc"] <= 100
    assert result["ap_box"] is None and result["num_classes"] == 11


@pytest.mark.parametrize(("overrides", "message"), [
    (["task=detection"], "task=detection does not read data.name=imagenette (a classification set); use data=coco"),
    (["data=coco"], "task=classification does not read data.name=coco (a detection set)"),
    (["task=segmentation", "data=camvid_ade", "model.depths=[3,3,9]"],
     "task=segmentation takes four feature maps at strides 4, 8, 16 and 32; rung separate_downsampling has 3 stages"),
    (["task=detection", "data=coco", "recipe=coco_mask_rcnn_3x"], "recipe=coco_mask_rcnn_3x fine-tunes: give the weights"),
    (["task=classification_x"], "task"),
])
def test_a_task_that_cannot_work_is_one_line_before_anything_is_written(overrides, message, tmp_path) -> None:
    with pytest.raises((RunConfigError, ValueError)) as error:
        plan_run(compose_run("step=separate_downsampling", f"output_root={tmp_path}", *overrides))
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not any(tmp_path.iterdir())


def test_init_from_an_experiment_without_the_rung_names_it(classification: Path) -> None:
    cfg = compose_run("step=patchify_stem", *DETECTION, "init_from=smoke", f"output_root={classification}")
    with pytest.raises(RunConfigError, match=r"init_from=smoke: the experiment has no finished epoch of rung "
                                             r"r50/patchify_stem seed 0"):
        plan_run(cfg)
    cfg = compose_run("step=resnet50", *DETECTION, "init_from=smoke", "seed=3", "init_from_seed=0",
                      f"output_root={classification}")
    assert plan_run(cfg).cfg.init_from == str(classification / "smoke" / "r50" / "resnet50" / "seed0")


def test_the_detectors_layer_decay_groups_the_backbone_as_the_official_code() -> None:
    cfg = compose_run("regime=family", "step=convnext_tiny", "model.width_mult=0.125")
    model = mask_rcnn(RoadmapNet(plan_run(cfg).arch), 81)
    recipe = {"optimizer": {"name": "adamw", "base_lr": 1e-4, "base_batch": 16, "betas": [0.9, 0.999], "eps": 1e-8,
                            "weight_decay": 0.05, "layer_decay": 0.95}}
    scales = {}
    for group in build_optimizer(model, recipe, 1e-4).param_groups:
        for param in group["params"]:
            scales[id(param)] = group["lr"] / 1e-4
    names = dict(model.named_parameters())
    # T: the stem is layer 0 of 6 + 2 (mmdetection's num_layers + 2), the heads the last: 0.95^7 ... 1.
    assert math.isclose(scales[id(names["backbone.body.stem.conv.weight"])], 0.95 ** 7)
    assert math.isclose(scales[id(names["backbone.body.stages.3.downsample.conv.weight"])], 0.95)
    assert math.isclose(scales[id(names["backbone.fpn.inner_blocks.0.0.weight"])], 1.0)
    assert math.isclose(scales[id(names["roi_heads.box_predictor.cls_score.weight"])], 1.0)


def test_warmup_poly_is_mmsegmentations_poly_under_mmcvs_linear_warmup() -> None:
    lr, total, warmup, ratio = 1e-4, 160_000, 1_500, 1e-6
    curve = WarmupPoly(lr, total, warmup, start_lr=ratio * lr, min_lr=0.0, power=1.0)
    for step in (0, 750, 1_499, 1_500, 80_000, 159_999):
        regular = lr * (1 - step / total)
        expected = regular * (1 - (1 - step / warmup) * (1 - ratio)) if step < warmup else regular
        assert math.isclose(curve(step) * lr, expected, rel_tol=1e-12), step
    assert curve(total) == 0.0


def test_a_downstream_result_table_summarizes_its_metric(tmp_path: Path) -> None:
    from roadmap.rundir import write_result

    for seed, ap in ((0, 10.0), (1, 14.0)):
        run = tmp_path / "det" / "r50" / "resnet50" / f"seed{seed}"
        run.mkdir(parents=True)
        write_result(run, {"experiment": "det", "task": "detection", "regime": "r50", "step": "resnet50", "seed": seed,
                           "status": "completed", "ap_box": ap, "ap_mask": ap / 2})
    with pytest.raises(ValueError, match="without its ap_box"):
        write_result(tmp_path, {"task": "detection", "status": "completed", "ap_box": None})
    _, summary = collect(tmp_path / "det")
    row = summary.iloc[0]
    assert row["ap_box_mean"] == 12.0 and math.isclose(row["ap_box_std"], 2 ** 0.5 * 2) and row["ap_mask_mean"] == 6.0
    assert math.isnan(row["top1_mean"])


def test_a_downstream_sweep_starts_each_rung_from_its_own_classification_run(classification: Path) -> None:
    from hydra import compose

    from roadmap.ladder import hydra_context
    from roadmap.preset import expand

    passed_on = [*DETECTION, "init_from=smoke", f"output_root={classification}"]
    with hydra_context():
        cfg = compose("sweep", overrides=["+roadmap=downstream_rungs", "roadmap.steps=[resnet50,depthwise_conv]",
                                          "roadmap.seeds=[0]", *passed_on])
    rungs, _ = expand(cfg)
    sources = {rung.step: plan_run(compose_run(*rung.overrides(passed_on))).cfg.init_from for rung in rungs}
    assert sources == {step: str(classification / "smoke" / "r50" / step / "seed0")
                       for step in ("resnet50", "depthwise_conv")}


def test_coco_without_objects_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        (root / f"{split}2017").symlink_to(COCO_TINY / f"{split}2017")
        annotations = json.loads((COCO_TINY / "annotations" / f"instances_{split}2017.json").read_text())
        annotations["annotations"] = [] if split == "train" else annotations["annotations"]
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(annotations))
    overrides = [o for o in DETECTION if not o.startswith("data.root=")]
    proc = run_cli(["step=resnet50", *overrides, f"data.root={root}", "recipe.fine_tune=false"], tmp_path / "out",
                   cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip() == f"roadmap.run: error: data.root={root}: the training annotations list no objects"
    assert not (tmp_path / "out").exists()
