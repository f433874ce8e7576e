"""data.augment_on=gpu (roadmap/data/gpu_transforms.py): the batched augmentation draws from the
same distribution as the CPU path (timm's samplers), op for op, on CPU tensors; the datamodule hook,
the config key and a smoke run on each path. Seeds are fixed: every p-value here is deterministic."""
from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from scipy import stats
from timm.data import Mixup
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision.transforms import functional as F
from torchvision.transforms.v2 import functional as TF

from roadmap.data import DataError, build_datamodule, build_train_transform
from roadmap.data.gpu_transforms import (
    LEVEL_TO_ARG, OPS, BatchAugment, RandAugmentSampler, SourceTransform, _warp, crop_flip_matrix, erase,
    sample_crops, sample_erasing,
)
from roadmap.data.transforms import _posterize, build_rand_augment
from roadmap.classifier import Classifier
from tests.test_data import augment, make_cfg
from tests.conftest import MINI_DATA, SMOKE
from tests.test_run import result_of, run_cli

# Two-sample tests at fixed seeds; a real mismatch of the samplers gives p far below this.
P_MIN = 1e-3


def mini_images(count: int, folder: Path = MINI_DATA / "train") -> list[Image.Image]:
    files = sorted(folder.rglob("*.JPEG")) or sorted(folder.rglob("*.jpg"))
    return [Image.open(f).convert("RGB") for f in files[:: max(1, len(files) // count)][:count]]


def as_batch(images: list[Image.Image]) -> torch.Tensor:
    return torch.stack([TF.pil_to_tensor(img) for img in images]).float()


def recipe_augment(name: str) -> DictConfig:
    """recipe.augment of conf/recipe/<name>.yaml merged onto paper.yaml (what `recipe=<name>` composes)."""
    recipe = make_cfg("imagenette", name).recipe
    return OmegaConf.merge(make_cfg("imagenette", "paper").recipe.augment, recipe.augment)


class FakeTrainer:
    """What the datamodule reads of a Lightning Trainer."""

    def __init__(self, rank: int = 0) -> None:
        self.training, self.world_size, self.global_rank, self.num_devices = True, 1, rank, 1


def no_randomness(**overrides: object) -> DictConfig:
    """The paper's augmentation with only what `overrides` turns on."""
    base = dict(scale=[1.0, 1.0], ratio=[1.0, 1.0], hflip=0.0, randaugment=None, color_jitter=0.0, random_erasing=0.0)
    return augment(**{**base, **overrides})


# --- RandomResizedCrop and flip -----------------------------------------------------------------------


@pytest.mark.parametrize("height, width", [(64, 64), (40, 300)])
@pytest.mark.parametrize("recipe_scale", [(0.08, 1.0), (0.35, 1.0)])
def test_crop_distribution_matches_timm(height: int, width: int, recipe_scale: tuple[float, float]) -> None:
    """Crop area fraction, aspect, position and the central fallback, against timm's get_params
    (40 x 300 takes the fallback often)."""
    n, ratio = 20_000, (3 / 4, 4 / 3)
    random.seed(0)
    img = Image.new("RGB", (width, height))
    timm = np.array([RandomResizedCropAndInterpolation.get_params(img, recipe_scale, ratio) for _ in range(n)], float)
    torch.manual_seed(0)
    ours = sample_crops(torch.tensor([[height, width]]).expand(n, 2), recipe_scale, ratio).numpy()

    def summary(crops: np.ndarray) -> dict[str, np.ndarray]:
        top, left, h, w = crops.T
        return {
            "area": h * w / (height * width), "log_aspect": np.log(w / h),
            "top": top / np.maximum(1, height - h), "left": left / np.maximum(1, width - w),
        }

    for key, theirs in summary(timm).items():
        assert stats.ks_2samp(summary(ours)[key], theirs).pvalue > P_MIN, key
    assert (ours[:, 2] <= height).all() and (ours[:, 3] <= width).all() and (ours[:, :2] >= 0).all()
    assert (ours[:, 0] + ours[:, 2] <= height).all() and (ours[:, 1] + ours[:, 3] <= width).all()
    # The joint (h, w) distribution, the fallback's central crop included (half the crops at 40 x 300).
    sizes = Counter(map(tuple, timm[:, 2:])), Counter(map(tuple, ours[:, 2:]))
    common = [s for s in set(sizes[0]) | set(sizes[1]) if sizes[0][s] + sizes[1][s] >= 20]
    table = [[sizes[0][s] for s in common], [sizes[1][s] for s in common]]
    assert len(common) == 1 and table[0] == table[1] or stats.chi2_contingency(table).pvalue > P_MIN


def test_flip_rate_and_identity_crop() -> None:
    """A whole-image crop at the image's own size is the image or its mirror, pixel for pixel; the
    mirror comes at rate `hflip` (binomial test)."""
    images = as_batch(mini_images(8)).to(torch.uint8)
    sizes = torch.tensor([[64, 64]] * len(images))
    aug = BatchAugment(64, no_randomness(hflip=0.5, crop_pct=1.0), seed=0)
    flips = 0
    for _ in range(250):
        out = aug(images, sizes) * aug.std + aug.mean
        out = (out * 255).round()
        same = (out == images.float()).flatten(1).all(1)
        mirrored = (out == images.float().flip(-1)).flatten(1).all(1)
        assert (same | mirrored).all()
        flips += int(mirrored.sum())
    assert stats.binomtest(flips, 250 * len(images), 0.5).pvalue > P_MIN


def test_crop_pixels_match_pil() -> None:
    """The batched resized crop (+ flip) against torchvision's PIL resized_crop of the same boxes, at
    the recipe's size (crops enlarge; shrinking is bounded by the canvas, SourceTransform): torch's
    bicubic kernel (a = -0.75) is not PIL's (a = -0.5): ~1.2 grey levels apart on average."""
    images = mini_images(16)
    torch.manual_seed(1)
    boxes = sample_crops(torch.tensor([[64, 64]] * len(images)), (0.08, 1.0), (3 / 4, 4 / 3))
    flip = torch.arange(len(images)) % 2 == 1
    ours = _warp(as_batch(images), crop_flip_matrix(boxes, flip, 64), "bicubic", None, 64)
    ref = []
    for img, (top, left, h, w), mirror in zip(images, boxes.int().tolist(), flip):
        out = F.resized_crop(img, top, left, h, w, [64, 64], F.InterpolationMode.BICUBIC)
        ref.append(TF.pil_to_tensor(F.hflip(out) if mirror else out))
    diff = (ours - torch.stack(ref).float()).abs()
    assert diff.mean() < 2.0 and (diff > 16).float().mean() < 0.005


def test_source_transform_fits_the_canvas() -> None:
    tf = SourceTransform(64, augment())  # canvas floor(64 / 0.875) = 73
    canvas, size = tf(Image.new("RGB", (300, 150), (10, 20, 30)))
    assert canvas.shape == (3, 73, 73) and canvas.dtype == torch.uint8 and size.tolist() == [36, 73]
    assert (canvas[:, :36, :73].float().mean((1, 2)).round() == torch.tensor([10.0, 20.0, 30.0])).all()
    canvas, size = tf(Image.new("RGB", (64, 64)))
    assert size.tolist() == [64, 64]  # not enlarged


# --- RandAugment ----------------------------------------------------------------------------------------


def timm_choices(rand_augment, n: int) -> list[list[tuple[str, tuple]]]:  # noqa: ANN001
    """What timm's own RandAugment applies to `n` images: per image, the (op name, level args) it runs."""
    calls: list[tuple[str, tuple]] = []
    for op in rand_augment.ops:
        op.aug_fn = lambda img, *args, _name=op.name, **_: calls.append((_name, args)) or img
    random.seed(0)
    np.random.seed(0)
    img, per_image = Image.new("RGB", (1, 1)), []
    for _ in range(n):
        calls.clear()
        rand_augment(img)
        per_image.append(list(calls))
    return per_image


@pytest.mark.parametrize("recipe_name", ["paper", "proxy"])
def test_randaugment_matches_timm_sampler(recipe_name: str) -> None:
    """Op frequencies (chi-square), ops per image, and each op's argument distribution (KS, or
    chi-square for the integer ones) against timm's RandAugment, seeded, with its ops recording."""
    n = 20_000
    aug_cfg = recipe_augment(recipe_name)
    theirs = timm_choices(build_rand_augment(64, aug_cfg), n)
    sampler = RandAugmentSampler(build_rand_augment(64, aug_cfg))
    torch.manual_seed(0)
    choice, args = sampler.sample(n)
    ours = [[(sampler.names[k], float(a)) for k, a in zip(choice[:, i].tolist(), args[:, i].tolist()) if k >= 0]
            for i in range(n)]

    names = sampler.names
    count_t = Counter(name for image in theirs for name, _ in image)
    count_o = Counter(name for image in ours for name, _ in image)
    assert stats.chi2_contingency([[count_t[x] for x in names], [count_o[x] for x in names]]).pvalue > P_MIN
    per_image = [Counter(len(image) for image in side) for side in (theirs, ours)]
    assert stats.chi2_contingency([[c[k] for k in range(3)] for c in per_image]).pvalue > P_MIN
    assert abs(sum(count_o.values()) / (2 * n) - 0.5) < 0.01  # each of the 2 layers applies with p = 0.5

    for name in names:
        if LEVEL_TO_ARG[name] is None:
            continue
        a = np.array([args[0] for image in theirs for op, args in image if op == name], float)
        b = np.array([arg for image in ours for op, arg in image if op == name], float)
        if name.startswith(("Posterize", "Solarize")):  # integer arguments
            values = sorted(set(a) | set(b))
            table = np.array([[np.sum(a == v) for v in values], [np.sum(b == v) for v in values]])
            table = table[:, table.sum(0) >= 10]
            assert table.shape[1] <= 1 or stats.chi2_contingency(table).pvalue > P_MIN, name
            assert set(b) <= set(a) | {v for v in values if np.sum(a == v) < 5}, name
        else:
            assert stats.ks_2samp(a, b).pvalue > P_MIN, name


def test_level_functions_are_timms(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each op's argument at a magnitude equals timm's level function, with or without its random sign."""
    aug_cfg = augment()
    rand_augment = build_rand_augment(64, aug_cfg)
    magnitudes = torch.linspace(0, 10, 201, dtype=torch.float64)
    for op in rand_augment.ops:
        if op.level_fn is None:
            continue
        torch.manual_seed(0)
        ours = LEVEL_TO_ARG[op.name](magnitudes / 10, op.hparams).tolist()
        for m, value in zip(magnitudes.tolist(), ours):
            options = []
            for draw in (0.0, 1.0):  # timm negates when random.random() > 0.5
                monkeypatch.setattr(random, "random", lambda _draw=draw: _draw)
                options.append(float(op.level_fn(m, op.hparams)[0]))
            monkeypatch.undo()
            assert min(abs(value - o) for o in options) < 1e-9, (op.name, m, value, options)


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_pixels_match_pil(name: str) -> None:
    """Each batched op against timm's PIL op at the same argument, on mini Imagenette images."""
    rand_augment = build_rand_augment(64, augment())
    op = next((o for o in rand_augment.ops if o.name == name), None)
    if op is None:
        from timm.data.auto_augment import AugmentOp

        op = AugmentOp(name, hparams=rand_augment.ops[0].hparams)
        op.aug_fn = _posterize if name.startswith("Posterize") else op.aug_fn  # roadmap's, as the CPU path
    images = mini_images(12)
    sampler_args = {
        "Rotate": [-27.0, 13.0], "ShearX": [0.27, -0.1], "ShearY": [-0.27], "TranslateXRel": [0.4, -0.2],
        "TranslateYRel": [-0.4], "TranslateX": [20.0], "TranslateY": [-11.0], "SolarizeAdd": [99, 30],
        "Posterize": [0, 2, 4], "PosterizeIncreasing": [0, 3], "PosterizeOriginal": [5, 8],
        "Solarize": [26, 256], "SolarizeIncreasing": [128, 0],
    }.get(name, [0.19, 1.0, 1.81] if op.level_fn is not None else [None])
    fill = torch.tensor(op.kwargs["fillcolor"], dtype=torch.float32)
    geometric = name.startswith(("Rotate", "Shear", "Translate"))
    for arg in sampler_args:
        level_args = () if arg is None else (arg,)
        ref = as_batch([op.aug_fn(img, *level_args, **op.kwargs) for img in images])
        value = torch.full((len(images),), 0.0 if arg is None else float(arg), dtype=torch.float64)
        diff = (OPS[name](as_batch(images), value, "bicubic", fill) - ref).abs()
        if geometric:  # torch's bicubic kernel and edge handling, not PIL's
            assert diff.mean() < 2.0 and (diff > 16).float().mean() < 0.02, (name, arg)
        else:
            assert diff.max() <= 1 and diff.mean() < 0.05, (name, arg)


# --- RandomErasing --------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_count", [1, 3])
def test_erasing_matches_timm(max_count: int) -> None:
    """Erased or not (chi-square), the erased fraction of the image and, for one box, its height and
    width (KS), against timm's RandomErasing(mode='pixel') on a constant image."""
    n, size, p = 6_000, 24, 0.25
    random.seed(0)
    torch.manual_seed(0)
    timm = RandomErasing(p, mode="pixel", max_count=max_count, device="cpu")(torch.full((n, 1, size, size), 7.0))
    torch.manual_seed(0)
    ours = erase(torch.full((n, 1, size, size), 7.0), sample_erasing(n, size, size, p, max_count))

    def summary(x: torch.Tensor) -> dict[str, np.ndarray]:
        mask = (x != 7.0)[:, 0]
        erased = mask.flatten(1).any(1)
        rows, cols = mask.any(2)[erased], mask.any(1)[erased]
        return {"erased": erased.numpy(), "fraction": mask.flatten(1).float().mean(1)[erased].numpy(),
                "h": rows.sum(1).numpy(), "w": cols.sum(1).numpy()}

    theirs, mine = summary(timm), summary(ours)
    table = [[theirs["erased"].sum(), n - theirs["erased"].sum()], [mine["erased"].sum(), n - mine["erased"].sum()]]
    assert stats.chi2_contingency(table).pvalue > P_MIN
    assert abs(mine["erased"].mean() - p) < 0.02
    keys = ["fraction", "h", "w"] if max_count == 1 else ["fraction"]
    for key in keys:
        assert stats.ks_2samp(theirs[key], mine[key]).pvalue > P_MIN, key


# --- the whole pipeline, the datamodule, MixUp ----------------------------------------------------------


@pytest.mark.parametrize("recipe_name, image_size", [("paper", 64), ("proxy", 32)])
def test_whole_pipeline_matches_cpu_path(recipe_name: str, image_size: int) -> None:
    """CPU path (PIL, per image) against GPU path (per batch, on CPU tensors) on the same mini images:
    per-image channel means and standard deviations of the normalized outputs (KS), erased share."""
    aug_cfg = recipe_augment(recipe_name)
    images, repeats = mini_images(200), 6
    cpu_tf = build_train_transform(image_size, aug_cfg)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    cpu = torch.stack([cpu_tf(img) for _ in range(repeats) for img in images])
    source = SourceTransform(image_size, aug_cfg)
    canvases, sizes = zip(*(source(img) for img in images))
    batch, sizes = torch.stack(canvases), torch.stack(sizes)
    aug = BatchAugment(image_size, aug_cfg, seed=0)
    gpu = torch.cat([aug(batch, sizes) for _ in range(repeats)])
    assert gpu.shape == cpu.shape and gpu.dtype == cpu.dtype
    for stat in (lambda x: x.mean((2, 3)), lambda x: x.std((2, 3))):
        for channel in range(3):
            a, b = stat(cpu)[:, channel].numpy(), stat(gpu)[:, channel].numpy()
            assert stats.ks_2samp(a, b).pvalue > P_MIN


def test_mixup_is_shared_and_lambdas_do_not_depend_on_the_path() -> None:
    """MixUp/CutMix is the LightningModule's timm Mixup on either path: the same object type and
    settings, and with the same numpy seed the same lambda and mode for a CPU- or GPU-path batch."""
    recipe = OmegaConf.to_container(make_cfg("imagenette", "paper").recipe)
    module = Classifier(torch.nn.Linear(1, 10), recipe, num_classes=10, global_batch=recipe["global_batch"])
    assert isinstance(module.mixup, Mixup)
    assert (module.mixup.mixup_alpha, module.mixup.cutmix_alpha, module.mixup.mix_prob, module.mixup.switch_prob) == (
        0.8, 1.0, 1.0, 0.5)
    labels = torch.arange(8) % 10
    targets = []
    for batch in (torch.randn(8, 3, 32, 32), BatchAugment(32, augment())(
            torch.randint(0, 256, (8, 3, 36, 36), dtype=torch.uint8), torch.tensor([[36, 36]] * 8))):
        np.random.seed(3)
        targets.append(module.mixup(batch.clone(), labels)[1])
    torch.testing.assert_close(targets[0], targets[1])


def test_datamodule_gpu_path(mini_data: Path) -> None:
    """Workers give uint8 canvases and sizes; the hook augments training batches only."""
    cfg = make_cfg("imagenette", "paper", **{"data.root": str(mini_data), "data.num_workers": 0,
                                             "data.augment_on": "gpu", "data.image_size": 32})
    dm = build_datamodule(cfg, per_device_batch=8)
    dm.setup("fit")
    (canvases, sizes), labels = next(iter(dm.train_dataloader()))
    val_images, _ = next(iter(dm.val_dataloader()))  # the eval transform, as on the CPU path
    assert canvases.shape == (8, 3, 36, 36) and canvases.dtype == torch.uint8 and sizes.tolist() == [[36, 36]] * 8
    dm.trainer = FakeTrainer()
    images, same_labels = dm.on_after_batch_transfer(((canvases, sizes), labels), 0)
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32 and same_labels is labels
    dm.trainer.training = False
    assert dm.on_after_batch_transfer((val_images, labels), 0)[0] is val_images
    assert val_images.shape == (8, 3, 32, 32)


def test_gpu_path_generator_is_per_rank_and_checkpointed(mini_data: Path) -> None:
    """Each DDP rank draws its own augmentation (as the CPU path's workers, seeded per rank), from the
    run's seed; the datamodule's state_dict carries the generator, so a resumed run draws the same."""
    cfg = make_cfg("imagenette", "paper", **{"data.root": str(mini_data), "data.augment_on": "gpu"})
    canvases = torch.randint(0, 256, (8, 3, 73, 73), dtype=torch.uint8)
    sizes = torch.tensor([[64, 64]] * 8)

    def datamodule(rank: int) -> object:
        torch.manual_seed(5)  # seed_everything(5), the same on every rank
        dm = build_datamodule(cfg, per_device_batch=8)
        dm.trainer = FakeTrainer(rank)
        dm.setup("fit")
        return dm

    rank0, rank1, again = datamodule(0), datamodule(1), datamodule(0)
    first = rank0.batch_augment(canvases, sizes)
    assert not torch.equal(first, rank1.batch_augment(canvases, sizes))
    assert torch.equal(first, again.batch_augment(canvases, sizes))
    resumed = datamodule(0)
    resumed.load_state_dict(rank0.state_dict())
    assert torch.equal(rank0.batch_augment(canvases, sizes), resumed.batch_augment(canvases, sizes))
    assert build_datamodule(make_cfg("imagenette"), per_device_batch=8).state_dict() == {}


def test_augment_on_is_validated() -> None:
    cfg = make_cfg("imagenette", **{"data.augment_on": "tpu"})
    with pytest.raises(DataError, match=r"data.augment_on='tpu' must be one of \('cpu', 'gpu'\)"):
        build_datamodule(cfg, per_device_batch=8)
    cfg = make_cfg("imagenette", **{"data.augment_on": "gpu", "recipe.augment.random_erasing_mode": "const"})
    with pytest.raises(DataError, match="random_erasing_mode='const'"):
        build_datamodule(cfg, per_device_batch=8)


def test_smoke_run_on_the_gpu_path(tmp_path: Path) -> None:
    """experiment=smoke end to end with data.augment_on=gpu (on the CPU here; tests/test_run.py runs the
    CPU path). A few steps: it checks the wiring, not accuracy (the proxy comparison of the two paths is
    in benchmarks/README.md); result.json records the path."""
    proc = run_cli(["step=resnet50", *SMOKE, "data.augment_on=gpu"], tmp_path, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = result_of(tmp_path, "resnet50")
    assert result["status"] == "completed" and result["augment_on"] == "gpu"
    checkpoint = torch.load(tmp_path / "smoke" / "r50" / "resnet50" / "seed0" / "last.ckpt", weights_only=True)
    assert checkpoint["RoadmapDataModule"]["batch_augment_rng"].dtype == torch.uint8  # resumes its draws
    assert result["train_loss_sum"] == result["train_loss_sum"]  # finite: not NaN


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batch_equals_cpu_batch() -> None:
    """The same seed gives the same per-sample parameters on any device (drawn on the CPU): a CUDA
    batch (no erasing, whose noise is drawn on the device) equals the CPU batch up to float rounding."""
    aug_cfg = augment(random_erasing=0.0)
    images = as_batch(mini_images(64)).to(torch.uint8)
    sizes = torch.tensor([[64, 64]] * len(images))
    aug = BatchAugment(64, aug_cfg)
    aug.seed(0)
    cpu = aug(images, sizes)
    aug.seed(0)
    cuda = aug(images.cuda(), sizes.cuda()).cpu()
    assert ((cuda - cpu).abs() > 0.05).float().mean() < 0.01  # a few pixels may round to the next grey level


def test_augment_on_is_the_same_run() -> None:
    """Not in the config hash (the same distribution, as data.num_workers): a run recorded on one path
    resumes or skips on the other; result.json tells them apart (test_smoke_run_on_the_gpu_path)."""
    from roadmap.results import config_hash
    from tests.test_recipe import compose_run

    hashes = {path: config_hash(compose_run("experiment=smoke", f"data.augment_on={path}")) for path in ("cpu", "gpu")}
    assert hashes["cpu"] == hashes["gpu"]
    assert config_hash(compose_run("experiment=smoke", "recipe.augment.hflip=0.4")) != hashes["cpu"]
