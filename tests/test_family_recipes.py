"""The family's recipes and experiments (conf/recipe/family_*.yaml, conf/experiment/family_*.yaml) equal
../shared/reference/family.md's recipe table and family.csv's drop paths field by field; evaluation
warps at 384 px; a fine-tune without weights, or a model a recipe has no value for, is one line."""
from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import DictConfig

from roadmap import ladder
from roadmap.data.transforms import eval_resize
from roadmap.plan import RunConfigError, plan_run
from tests.conftest import family_rows
from tests.test_recipe import contains, numbers

LETTER = {"T": "convnext_tiny", "S": "convnext_small", "B": "convnext_base", "L": "convnext_large",
          "XL": "convnext_xlarge"}
# family.md's recipe columns: the experiment of each, the family.csv drop-path column (or None: given in
# the cell) and the experiments' models (those with a drop path in that setting).
COLUMNS = {
    "1K from scratch": ("family_1k", "drop_path_1k"),
    "22K pre-train": ("family_22k_pretrain", "drop_path_22k_pretrain"),
    "22K→1K fine-tune (224 and 384)": ("family_22k_ft_224", "drop_path_22k_ft"),
    "1K→384 fine-tune (B, L)": ("family_1k_ft_384", None),
}


@pytest.fixture(scope="module")
def table(shared_dir: Path) -> dict[str, dict[str, str]]:
    """family.md's recipe table as {column: {row: cell}}, each "same" replaced by the cell on its left."""
    section = (shared_dir / "reference" / "family.md").read_text().split("## Recipes", 1)[1]
    lines = section.strip().split("\n\n", 1)[0].splitlines()  # the section's first paragraph: the table
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    header, body = rows[0][1:], rows[2:]
    columns: dict[str, dict[str, str]] = {name: {} for name in header}
    for row in body:
        for i, name in enumerate(header):
            cell = row[1 + i]
            columns[name][row[0]] = columns[header[i - 1]][row[0]] if cell == "same" else cell
    assert set(columns) == set(COLUMNS)
    return columns


def compose(experiment: str, step: str, *overrides: str) -> DictConfig:
    return ladder.compose_run([f"experiment={experiment}", f"step={step}", "init_from=/weights.pth", *overrides])


def models_of(column: str, drop_column: str | None, cell: str) -> dict[str, float]:
    """Each model's drop path in this setting: family.csv's column, or the cell ("B 0.8, L 0.95")."""
    if drop_column is None:
        return {LETTER[letter]: float(value) for letter, value in (part.split() for part in cell.split(","))}
    return {r["model"]: float(r[drop_column]) for r in family_rows() if r[drop_column]}


@pytest.mark.parametrize("column", COLUMNS)
def test_family_recipes_equal_family_md(table: dict[str, dict[str, str]], column: str) -> None:
    experiment, drop_column = COLUMNS[column]
    cells = table[column]
    paper = compose("family_1k", "convnext_tiny").recipe
    drop_paths = models_of(column, drop_column, cells["drop path"])
    assert len(drop_paths) >= 2
    for model, drop_path in drop_paths.items():
        cfg = compose(experiment, model)
        r = cfg.recipe
        assert r.drop_path == drop_path and cfg.model.drop_path == drop_path
        assert numbers(cells["epochs / warmup"]) == [r.epochs, r.schedule.warmup_epochs]
        assert contains(cells["global batch"], r.global_batch)
        optimizer = cells["optimizer, lr"]
        assert "AdamW" in optimizer and r.optimizer.name == "adamw" and "cosine" in optimizer
        assert contains(optimizer, r.optimizer.base_lr * r.global_batch / r.optimizer.base_batch)
        assert list(r.optimizer.betas) == [0.9, 0.999] and r.schedule.min_lr == 1e-6
        assert contains(cells["weight decay"], r.optimizer.weight_decay)
        decay = cells["layer-wise lr decay"]
        assert r.optimizer.layer_decay is None if decay == "none" else contains(decay, r.optimizer.layer_decay)
        ema = cells["EMA"]  # "0.9999", "none", "none (XL: 0.9999)", "none (L starts from its EMA weights)"
        xl_ema = "XL: 0.9999" in ema and model == "convnext_xlarge"
        assert r.ema_decay == (0.9999 if ema == "0.9999" or xl_ema else None)
        assert cfg.init_from_ema is ("L starts from its EMA" in ema and model == "convnext_large")
        assert contains(cells["head init scale"], r.head_init_scale)
        assert r.fine_tune is (r.head_init_scale != 1.0)  # the fine-tunes require init_from
        mix = cells["mixup / cutmix"]
        assert [r.augment.mixup, r.augment.cutmix] == ([0, 0] if mix == "off" else numbers(mix))
        for key in ("randaugment", "random_erasing", "random_erasing_mode", "crop_pct", "interpolation"):
            assert r.augment[key] == paper.augment[key]
        assert r.label_smoothing == paper.label_smoothing == 0.1
        assert r.augment.randaugment in cells["RandAugment, erasing, smoothing"]
        # The released models' layer scale and init, whatever the recipe says for the ladder's rungs.
        assert cfg.model.layer_scale == 1e-6 and cfg.model.init == "trunc_normal"


def test_the_22k_experiments_read_22k_and_the_fine_tunes_1k_at_their_size() -> None:
    pretrain = compose("family_22k_pretrain", "convnext_base")
    assert pretrain.data.name == "imagenet22k" and pretrain.data.num_classes == 21841
    assert pretrain.data.held_out is None  # evaluation off, as the official pre-training
    for experiment, size in (("family_22k_ft_224", 224), ("family_22k_ft_384", 384), ("family_1k_ft_384", 384)):
        cfg = compose(experiment, "convnext_base")
        assert cfg.data.name == "imagenet" and cfg.data.num_classes == 1000 and cfg.data.image_size == size
        assert cfg.recipe.global_batch == cfg.trainer.per_device_batch * cfg.trainer.devices * 2  # 8 x 32 x 2
    assert compose("family_1k", "convnext_base").recipe.global_batch == 4096


def test_evaluation_crops_below_384_and_warps_from_384() -> None:
    augment = compose("family_22k_ft_384", "convnext_base").recipe.augment
    for size, resize in ((224, 256), (288, 329), (384, [384, 384]), (512, [512, 512])):  # 288 / 0.875 = 329.1
        assert eval_resize(size, augment) == resize
    paper = ladder.compose_run(["experiment=paper_imagenet"]).recipe.augment
    assert paper.eval_warp_from is None and eval_resize(384, paper) == 438  # the ladder's recipe: crop_pct


def test_a_fine_tune_without_weights_and_a_model_without_a_value_are_one_line() -> None:
    cfg = ladder.compose_run(["experiment=family_22k_ft_224", "step=convnext_small"])
    with pytest.raises(RunConfigError, match=r"^recipe=family_22k_ft fine-tunes: give the weights it starts from, "
                                             r"init_from=<a run directory"):
        plan_run(cfg)
    with pytest.raises(RunConfigError) as error:
        plan_run(compose("family_1k_ft_384", "convnext_small"))
    assert str(error.value) == ("recipe.drop_path has a value per model (convnext_base, convnext_large), none for "
                                "step=convnext_small: set recipe.drop_path=<value> on the command line")
    assert plan_run(compose("family_1k_ft_384", "convnext_small", "recipe.drop_path=0.5")).cfg.model.drop_path == 0.5
    # A rung of the ladder scaled up takes the family recipe with its own drop path.
    cfg = ladder.compose_run(["step=kernel_7", "recipe=family_1k", "recipe.drop_path=0.4", "model.depths=[3,3,27,3]"])
    assert plan_run(cfg).cfg.model.drop_path == 0.4
