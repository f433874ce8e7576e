"""roadmap.data: datasets, transforms, the datamodule and its errors (no network, num_workers=0)."""
from __future__ import annotations

import csv
import logging
import os
import random
import shutil
import urllib.error
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
import torchvision.datasets.imagenette
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from timm.data import create_transform
from timm.data.transforms import RandomResizedCropAndInterpolation
from torch.utils.data import RandomSampler, SequentialSampler
from torchvision import transforms
from torchvision.datasets.folder import pil_loader
from torchvision.transforms import functional as F

from roadmap.data import DataError, build_datamodule, build_eval_transform, build_train_transform, memory
from roadmap.data.memory import InMemoryImages
from roadmap.data.datamodule import MAX_AUTO_WORKERS, resolve_num_workers
from tests.test_recipe import compose_run



@lru_cache(maxsize=None)
def _composed(data: str, recipe: str) -> DictConfig:
    """The run config as Hydra composes it (a recipe's `defaults:` included), without an experiment preset."""
    return compose_run(f"data={data}", f"recipe={recipe}", "~experiment")


def make_cfg(data: str, recipe: str = "paper", **overrides: object) -> DictConfig:
    base = _composed(data, recipe)
    cfg = OmegaConf.create({"seed": 0, "data": OmegaConf.to_container(base.data), "recipe": OmegaConf.to_container(base.recipe)})
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def augment(**overrides: object) -> DictConfig:
    aug = make_cfg("imagenette").recipe.augment
    for key, value in overrides.items():
        aug[key] = value
    return aug


def write_images(folder: Path, count: int, suffix: str = ".jpg") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (40, 30), (i * 40 % 256, 100, 200)).save(folder / f"img{i}{suffix}", format="JPEG")


# --- real data ------------------------------------------------------------------------------


def test_mini_imagenette_loads(mini_data: Path) -> None:
    cfg = make_cfg("imagenette", **{"data.root": str(mini_data), "data.num_workers": 0})
    dm = build_datamodule(cfg, per_device_batch=16)
    assert dm.num_classes == 10
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set)) == (200, 100)

    train = dm.train_dataloader()
    assert isinstance(train.sampler, RandomSampler) and train.drop_last and len(train) == 200 // 16
    images, labels = next(iter(train))
    assert images.shape == (16, 3, 64, 64) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and 0 <= labels.min() and labels.max() < 10

    val = dm.val_dataloader()
    assert isinstance(val.sampler, SequentialSampler) and not val.drop_last and len(val) == 7
    images, labels = next(iter(val))
    assert images.shape == (16, 3, 64, 64)
    assert labels.tolist() == [0] * 10 + [1] * 6  # sorted class folders, no shuffling


def test_grayscale_images_become_rgb(mini_data: Path) -> None:
    with open(mini_data / "labels.csv", newline="") as f:
        gray = [row["path"] for row in csv.DictReader(f) if row["mode"] == "L" and row["split"] == "val"]
    assert gray, "the mini set should hold grayscale val images"
    dm = build_datamodule(make_cfg("imagenette", **{"data.root": str(mini_data)}), per_device_batch=8)
    dm.setup("fit")
    paths = [Path(p) for p, _ in dm.val_set.samples]
    index = paths.index(mini_data / gray[0])
    with Image.open(paths[index]) as img:
        assert img.mode == "L"
    image, _ = dm.val_set[index]
    assert image.shape == (3, 64, 64)
    # Gray converted to RGB: equal channels before normalization.
    aug = augment()
    unnormalized = image * torch.tensor(list(aug.std)).view(3, 1, 1) + torch.tensor(list(aug.mean)).view(3, 1, 1)
    assert torch.allclose(unnormalized[0], unnormalized[1], atol=1e-5)


def test_loader_settings_with_workers(mini_data: Path) -> None:
    cfg = make_cfg("imagenette", **{"data.root": str(mini_data), "data.num_workers": 2})
    dm = build_datamodule(cfg, per_device_batch=8)
    dm.setup("fit")
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert train.num_workers == 2 and train.persistent_workers and train.worker_init_fn is not None
    assert val.num_workers == 2 and not val.drop_last
    assert train.pin_memory == torch.cuda.is_available()


# --- transforms -----------------------------------------------------------------------------


def test_train_transform_shape_and_dtype() -> None:
    tf = build_train_transform(48, augment())
    out = tf(Image.new("RGB", (100, 70), (10, 200, 30)))
    assert out.shape == (3, 48, 48) and out.dtype == torch.float32


def test_eval_transform_center_crop() -> None:
    aug = augment()
    tf = build_eval_transform(64, aug)
    resize, crop = tf.transforms[:2]
    assert resize.size == 73 and crop.size == (64, 64)  # floor(64 / 0.875) = 73
    assert resize.interpolation == transforms.InterpolationMode.BICUBIC

    img = Image.linear_gradient("L").convert("RGB").resize((120, 90))
    out = tf(img)
    cropped = F.center_crop(F.resize(img, 73, F.InterpolationMode.BICUBIC), 64)
    expected = F.normalize(F.to_tensor(cropped), aug.mean, aug.std)
    assert out.shape == (3, 64, 64) and torch.allclose(out, expected)
    assert build_eval_transform(224, aug).transforms[0].size == 256


def _describe(step: object) -> tuple:
    """The type family and parameters of one transform step, in a form comparable across libraries."""
    if isinstance(step, (transforms.RandomResizedCrop, RandomResizedCropAndInterpolation)):
        return ("rrc", tuple(step.size), tuple(step.scale), tuple(step.ratio), step.interpolation)
    if isinstance(step, transforms.RandomHorizontalFlip):
        return ("hflip", step.p)
    if type(step).__name__ == "RandAugment":
        ops = [(op.name, op.prob, op.magnitude, op.magnitude_std, op.hparams, op.kwargs) for op in step.ops]
        return ("randaugment", step.num_layers, step.choice_weights, ops)
    if isinstance(step, transforms.ColorJitter):
        return ("jitter", step.brightness, step.contrast, step.saturation, step.hue)
    if isinstance(step, transforms.ToTensor):
        return ("to_tensor",)
    if isinstance(step, transforms.Normalize):
        # timm stores float32 tensors, we store the config's floats: equal up to float32 rounding.
        return ("normalize", [round(float(m), 6) for m in step.mean], [round(float(s), 6) for s in step.std])
    if type(step).__name__ == "RandomErasing":
        return ("erasing", step.probability, step.mode, step.min_count, step.max_count, step.num_splits, step.device,
                step.min_area, step.max_area, step.log_aspect_ratio)
    raise AssertionError(f"unexpected transform step {step!r}")


@pytest.mark.parametrize(
    "image_size, overrides",
    [
        (224, {}),  # the paper's recipe
        (64, {"scale": [0.35, 1.0], "randaugment": "rand-m6-mstd0.5-inc1", "random_erasing": 0.1}),  # proxy
        (32, {"randaugment": None, "random_erasing": 0.0, "hflip": 0.0}),  # colour jitter instead
    ],
)
def test_train_transform_matches_timm(image_size: int, overrides: dict) -> None:
    aug = augment(**overrides)
    ours = build_train_transform(image_size, aug)
    timm_tf = create_transform(
        image_size,
        is_training=True,
        scale=tuple(aug.scale),
        ratio=tuple(aug.ratio),
        hflip=aug.hflip,
        color_jitter=aug.color_jitter,
        auto_augment=aug.randaugment,
        interpolation=aug.interpolation,
        re_prob=aug.random_erasing,
        re_mode=aug.random_erasing_mode,
        re_count=aug.random_erasing_count,
        mean=tuple(aug.mean),
        std=tuple(aug.std),
    )
    assert [_describe(s) for s in ours.transforms] == [_describe(s) for s in timm_tf.transforms]


def test_randaugment_posterize_zero_bits() -> None:
    """At magnitude 10 'inc1' posterize keeps 0 bits: Pillow 13 raises there, ours gives black."""
    aug = augment(randaugment="rand-m10-p1.0-inc1")
    rand_augment = build_train_transform(32, aug).transforms[2]
    op = next(op for op in rand_augment.ops if op.name == "PosterizeIncreasing")
    out = op(Image.new("RGB", (32, 32), (200, 120, 40)))
    assert out.size == (32, 32) and out.getextrema() == ((0, 0), (0, 0), (0, 0))


def test_eval_transform_matches_timm() -> None:
    aug = augment()
    ours = build_eval_transform(64, aug)
    timm_tf = create_transform(64, is_training=False, interpolation="bicubic", crop_pct=aug.crop_pct,
                               mean=tuple(aug.mean), std=tuple(aug.std))
    img = Image.linear_gradient("L").convert("RGB").resize((97, 81))
    assert torch.equal(ours(img), timm_tf(img))


# --- synthetic ------------------------------------------------------------------------------


def test_synthetic_is_deterministic() -> None:
    cfg = make_cfg("synthetic", **{"data.num_workers": 0, "data.train_size": 64, "data.val_size": 16})
    a, b = build_datamodule(cfg, per_device_batch=8), build_datamodule(cfg, per_device_batch=8)
    a.setup("fit")
    b.setup("fit")
    assert a.num_classes == 10 and (len(a.train_set), len(a.val_set)) == (64, 16)
    x0, y0 = a.train_set[5]
    assert x0.shape == (3, 32, 32) and x0.dtype == torch.float32
    assert torch.equal(x0, b.train_set[5][0]) and y0 == b.train_set[5][1] == 5
    assert torch.equal(x0, a.train_set[5][0])  # same index, same image, every time
    assert not torch.equal(x0, a.train_set[6][0])
    assert not torch.equal(x0, a.val_set[5][0])  # the splits differ
    images, labels = next(iter(a.train_dataloader()))
    assert images.shape == (8, 3, 32, 32) and labels.dtype == torch.int64

    other = make_cfg("synthetic", **{"data.seed": 1, "data.train_size": 64, "data.val_size": 16})
    c = build_datamodule(other, per_device_batch=8)
    c.setup("fit")
    assert not torch.equal(x0, c.train_set[5][0])


# --- errors ---------------------------------------------------------------------------------


def test_missing_imagenet_root(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "imagenet"
    dm = build_datamodule(make_cfg("imagenet", **{"data.root": str(missing)}), per_device_batch=8)
    with pytest.raises(DataError) as err:
        dm.setup("fit")
    message = str(err.value)
    assert "data.root" in message and str(missing) in message
    assert "train/" in message and "val/" in message and "ROADMAP_DATA_DIR" in message


def test_default_root_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ROADMAP_DATA_DIR", str(tmp_path))
    assert make_cfg("imagenette").data.root == f"{tmp_path}/imagenette2-64"
    assert make_cfg("cifar100").data.root == f"{tmp_path}/cifar100"


def test_empty_class_folder(tmp_path: Path) -> None:
    for split in ("train", "val"):
        write_images(tmp_path / split / "a", 3)
        (tmp_path / split / "b").mkdir()
    cfg = make_cfg("imagenet", **{"data.root": str(tmp_path), "data.num_classes": 2})
    with pytest.raises(DataError, match="data.root") as err:
        build_datamodule(cfg, per_device_batch=2).setup("fit")
    assert str(tmp_path / "train" / "b") in str(err.value)


def test_split_without_class_folders(tmp_path: Path) -> None:
    write_images(tmp_path / "train" / "a", 3)
    (tmp_path / "val").mkdir()
    cfg = make_cfg("imagenet", **{"data.root": str(tmp_path), "data.num_classes": 1})
    with pytest.raises(DataError, match="data.root") as err:
        build_datamodule(cfg, per_device_batch=2).setup("fit")
    assert str(tmp_path / "val") in str(err.value)


def test_flat_val_folder_is_explained(tmp_path: Path) -> None:
    write_images(tmp_path / "train" / "n01440764", 2, ".JPEG")
    write_images(tmp_path / "val", 2, ".JPEG")  # ILSVRC2012_img_val.tar unpacked as it is
    cfg = make_cfg("imagenet", **{"data.root": str(tmp_path), "data.num_classes": 1})
    with pytest.raises(DataError) as err:
        build_datamodule(cfg, per_device_batch=2).setup("fit")
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "val") in message and "flat ImageNet val/" in message
    assert f"torchvision.datasets.ImageNet('{tmp_path}', split='val')" in message


def write_fake_imagenet_archives(root: Path, wnids: list[str], per_class: int) -> list[str]:
    """torchvision.datasets.ImageNet's layout in small: devkit (meta.mat, val ground truth), a train tar of
    per-class tars, a flat val tar. Returns the val images' wnids, in file order."""
    import scipy.io
    import tarfile

    work = root / "work"
    devkit = work / "ILSVRC2012_devkit_t12" / "data"
    devkit.mkdir(parents=True)
    fields = [(name, "O") for name in ("ILSVRC2012_ID", "WNID", "words", "gloss", "num_children")]
    synsets = np.array([(i + 1, wnid, f"class {i}", "", 0) for i, wnid in enumerate(wnids)], dtype=fields)
    scipy.io.savemat(devkit / "meta.mat", {"synsets": synsets})
    val_wnids = [wnids[i % len(wnids)] for i in range(per_class * len(wnids))]
    (devkit / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{wnids.index(w) + 1}\n" for w in val_wnids))
    with tarfile.open(root / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
        tar.add(work / "ILSVRC2012_devkit_t12", "ILSVRC2012_devkit_t12")
    with tarfile.open(root / "ILSVRC2012_img_train.tar", "w") as train:
        for wnid in wnids:
            write_images(work / wnid, per_class, ".JPEG")
            with tarfile.open(work / f"{wnid}.tar", "w") as inner:
                for image in sorted((work / wnid).iterdir()):
                    inner.add(image, f"{wnid}_{image.name}")
            train.add(work / f"{wnid}.tar", f"{wnid}.tar")
    write_images(work / "val", len(val_wnids), ".JPEG")
    with tarfile.open(root / "ILSVRC2012_img_val.tar", "w") as val:
        for i, image in enumerate(sorted((work / "val").iterdir(), key=lambda p: int(p.stem[3:]))):
            val.add(image, f"ILSVRC2012_val_{i + 1:08d}.JPEG")
    shutil.rmtree(work)
    return val_wnids


def test_imagenet_archives_are_extracted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.imagenet

    wnids = ["n01440764", "n02102040", "n02979186"]
    val_wnids = write_fake_imagenet_archives(tmp_path, wnids, per_class=2)
    monkeypatch.setattr(torchvision.datasets.imagenet, "_verify_archive", lambda *args: None)  # fakes: no real md5
    cfg = make_cfg("imagenet", **{"data.root": str(tmp_path), "data.num_classes": 3, "data.num_workers": 0})
    dm = build_datamodule(cfg, per_device_batch=2)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.train_set.classes == dm.val_set.classes == wnids and len(dm.train_set) == 6
    by_file = {Path(path).name: wnids[label] for path, label in dm.val_set.samples}
    assert [by_file[f"ILSVRC2012_val_{i + 1:08d}.JPEG"] for i in range(6)] == val_wnids
    assert not list(tmp_path.glob(".*.partial"))


def test_num_classes_mismatch(mini_data: Path) -> None:
    cfg = make_cfg("imagenette", **{"data.root": str(mini_data), "data.num_classes": 1000})
    with pytest.raises(DataError, match=r"data.num_classes=1000 .* 10 classes"):
        build_datamodule(cfg, per_device_batch=8).setup("fit")


def test_unknown_dataset_name() -> None:
    cfg = make_cfg("imagenet", **{"data.name": "mnist"})
    with pytest.raises(DataError, match=r"data.name='mnist'.*imagenette"):
        build_datamodule(cfg, per_device_batch=8)


def test_batch_larger_than_train_split(mini_data: Path) -> None:
    cfg = make_cfg("imagenette", **{"data.root": str(mini_data)})
    with pytest.raises(DataError, match="per_device_batch=256"):
        build_datamodule(cfg, per_device_batch=256).setup("fit")


def _offline(*args: object, **kwargs: object) -> None:
    raise urllib.error.URLError("network unreachable")


def test_imagenette_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(torchvision.datasets.imagenette, "download_and_extract_archive", _offline)
    root = tmp_path / "imagenette2-64"
    dm = build_datamodule(make_cfg("imagenette", **{"data.root": str(root)}), per_device_batch=8)
    with pytest.raises(DataError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert "data.root" in message and str(root) in message and "ROADMAP_DATA_DIR" in message
    assert "network unreachable" in message and "train/" in message


def test_imagenette_download_is_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def fake_download(url: str, download_root: str, **kwargs: object) -> None:
        assert url.endswith("imagenette2-160.tgz")
        for split in ("train", "val"):
            for wnid in ("n01440764", "n02102040"):
                write_images(Path(download_root) / "imagenette2-160" / split / wnid, 4, ".JPEG")

    monkeypatch.setattr(torchvision.datasets.imagenette, "download_and_extract_archive", fake_download)
    cfg = make_cfg("imagenette", **{"data.root": str(tmp_path), "data.num_classes": 2, "data.num_workers": 0})
    dm = build_datamodule(cfg, per_device_batch=4)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) == 8 and Path(dm.train_set.root) == tmp_path / "imagenette2-160" / "train"
    images, _ = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 64, 64)


def test_imagenette_without_download(tmp_path: Path) -> None:
    cfg = make_cfg("imagenette", **{"data.root": str(tmp_path), "data.download": False})
    with pytest.raises(DataError, match="data.download=false"):
        build_datamodule(cfg, per_device_batch=8).setup("fit")


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str) -> None:
    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", _offline)
    dm = build_datamodule(make_cfg(name, **{"data.root": str(tmp_path / name)}), per_device_batch=8)
    for step in (dm.prepare_data, lambda: dm.setup("fit")):
        with pytest.raises(DataError) as err:
            step()
        message = str(err.value)
        assert "data.root" in message and str(tmp_path / name) in message and "ROADMAP_DATA_DIR" in message


# --- in memory ------------------------------------------------------------------------------


def seed_all(seed: int) -> None:
    """Every generator the transforms draw from (timm's RandAugment uses random and numpy)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _splits(cfg: DictConfig) -> tuple:
    dm = build_datamodule(cfg, per_device_batch=2)
    dm.setup("fit")
    return dm.train_set, dm.val_set


def test_in_memory_feeds_the_same_pixels(mini_data: Path, tmp_path: Path) -> None:
    """Every decoded image equals pil_loader's, and the transformed samples are bitwise equal."""
    common = {"data.root": str(mini_data), "data.num_workers": 0, "data.cache_dir": str(tmp_path)}
    in_memory = _splits(make_cfg("imagenette", **common, **{"data.in_memory": True}))
    from_files = _splits(make_cfg("imagenette", **common, **{"data.in_memory": False}))
    for memory_set, file_set in zip(in_memory, from_files):
        assert isinstance(memory_set, InMemoryImages) and not isinstance(file_set, InMemoryImages)
        assert memory_set.samples == file_set.samples and memory_set.classes == file_set.classes
        for i, (path, _) in enumerate(file_set.samples):
            decoded = memory_set.image(i)
            assert decoded.mode == "RGB" and np.array_equal(np.asarray(decoded), np.asarray(pil_loader(path)))
            seed_all(i)
            a, label_a = memory_set[i]
            seed_all(i)
            b, label_b = file_set[i]
            assert torch.equal(a, b) and label_a == label_b


def test_in_memory_cache_reused_until_a_file_changes(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    for split in ("train", "val"):
        write_images(root / split / "a", 3)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cfg = make_cfg("imagenet", **{"data.root": str(root), "data.num_classes": 1, "data.num_workers": 0})
    with caplog.at_level(logging.INFO, "roadmap.data"):
        _splits(cfg)
        assert caplog.text.count("decoding") == 2
        cached = sorted((tmp_path / "xdg" / "roadmap").iterdir())
        assert [p.suffix for p in cached] == [".npz", ".u8", ".npz", ".u8"]
        caplog.clear()
        train, _ = _splits(cfg)  # the same files: read from the cache, not decoded again
        assert "decoding" not in caplog.text and len(train) == 3
        image = root / "train" / "a" / "img1.jpg"
        Image.new("RGB", (40, 30), (1, 2, 3)).save(image, format="JPEG")  # a changed file: a new key
        train, _ = _splits(cfg)
        assert caplog.text.count("decoding") == 1
        assert np.array_equal(np.asarray(train.image(1)), np.asarray(pil_loader(str(image))))


def test_in_memory_cache_of_read_only_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    for split in ("train", "val"):
        write_images(root / split / "a", 2)
    root.chmod(0o555)  # as root, only the permission bits say "read-only"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    try:
        _splits(make_cfg("imagenet", **{"data.root": str(root), "data.num_classes": 1}))
    finally:
        root.chmod(0o755)
    assert not (root / ".roadmap-cache").exists()
    assert len(list((tmp_path / "xdg" / "roadmap").glob("*.u8"))) == 2


def test_in_memory_auto(mini_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = make_cfg("imagenette", **{"data.root": str(mini_data), "data.in_memory": "auto"})
    assert isinstance(_splits(cfg)[0], InMemoryImages)  # 300 images of 64 px
    monkeypatch.setattr(memory, "AUTO_MAX_BYTES", 300 * 64 * 64 * 3 - 1)
    assert not isinstance(_splits(cfg)[0], InMemoryImages)


def test_in_memory_with_workers(mini_data: Path) -> None:
    cfg = make_cfg("imagenette", **{"data.root": str(mini_data), "data.num_workers": 2, "data.in_memory": True})
    dm = build_datamodule(cfg, per_device_batch=16)
    dm.setup("fit")
    batches = list(dm.val_dataloader())
    assert sum(len(labels) for _, labels in batches) == 100 and dm.val_set._pixels is None  # workers mapped it


def test_num_workers_auto(mini_data: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    assert resolve_num_workers("auto", 1) == min(cores, MAX_AUTO_WORKERS)
    assert resolve_num_workers("auto", 10_000) == 1 and resolve_num_workers(3, 8) == 3
    dm = build_datamodule(make_cfg("imagenette", **{"data.root": str(mini_data)}), per_device_batch=8)
    dm.setup("fit")
    assert dm.train_dataloader().num_workers == min(cores, MAX_AUTO_WORKERS)


@pytest.mark.parametrize("key, value", [("num_workers", -1), ("num_workers", "many"), ("in_memory", "yes"),
                                        ("on_bad_image", "ignore")])
def test_invalid_data_keys(key: str, value: object) -> None:
    with pytest.raises(DataError, match=f"data.{key}="):
        build_datamodule(make_cfg("imagenette", **{f"data.{key}": value}), per_device_batch=8)


# --- unreadable images ----------------------------------------------------------------------


def write_bad_images(folder: Path, good: Path) -> list[Path]:
    """A zero-byte, a truncated and a garbage JPEG in `folder`; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    data = good.read_bytes()
    bad = {"empty.jpg": b"", "truncated.jpg": data[: len(data) // 2], "garbage.jpg": b"not a jpeg" * 50}
    for name, content in bad.items():
        (folder / name).write_bytes(content)
    return sorted(folder / name for name in bad)


def bad_image_set(mini_data: Path, root: Path) -> list[Path]:
    """Two classes of the mini set (train 20 + val 10 each) with three unreadable train images added."""
    for split in ("train", "val"):
        for wnid in sorted(p.name for p in (mini_data / split).iterdir())[:2]:
            shutil.copytree(mini_data / split / wnid, root / split / wnid)
    first = root / "train" / "n01440764"
    return write_bad_images(first, sorted(first.iterdir())[0])


@pytest.mark.parametrize("in_memory, workers", [(False, 0), (False, 2), (True, 0)])
def test_bad_images_skipped(mini_data: Path, tmp_path: Path, in_memory: bool, workers: int,
                            caplog: pytest.LogCaptureFixture) -> None:
    bad = bad_image_set(mini_data, tmp_path / "data")
    cfg = make_cfg("imagenet", **{"data.root": str(tmp_path / "data"), "data.num_classes": 2,
                                           "data.in_memory": in_memory, "data.num_workers": workers})
    dm = build_datamodule(cfg, per_device_batch=8)
    with caplog.at_level(logging.WARNING, "roadmap.data"):
        dm.setup("fit")
        loader = dm.train_dataloader()
        sizes = [len(labels) for _, labels in loader] + [len(labels) for _, labels in loader]  # two epochs
    assert sizes == [8] * (2 * (len(dm.train_set) // 8))  # every batch full
    assert sorted(map(Path, dm.skipped_images())) == bad
    if workers == 0:  # workers log to their own stderr
        assert all(caplog.text.count(f"skipping unreadable image {path} ") == 1 for path in bad)  # named once
    assert len(dm.train_set) == (40 if in_memory else 43)


@pytest.mark.parametrize("in_memory", [False, True])
def test_bad_image_error_names_the_file(mini_data: Path, tmp_path: Path, in_memory: bool) -> None:
    bad = bad_image_set(mini_data, tmp_path / "data")
    cfg = make_cfg("imagenet", **{"data.root": str(tmp_path / "data"), "data.num_classes": 2, "data.num_workers": 0,
                                  "data.in_memory": in_memory, "data.on_bad_image": "error"})
    dm = build_datamodule(cfg, per_device_batch=8)
    with pytest.raises(DataError, match="data.on_bad_image=skip") as err:
        dm.setup("fit")
        for _ in dm.train_dataloader():
            pass
    assert any(str(path) in str(err.value) for path in bad)
