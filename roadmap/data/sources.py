"""Where the images come from: ImageFolder layouts (imagenet, imagenette with its download, imagenet22k's
one folder per class, a subset of the classes by `data.classes`), torchvision CIFAR, and seeded synthetic
tensors."""
from __future__ import annotations

import copy
import logging
import math
import os
import shutil
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision.datasets.folder import IMG_EXTENSIONS

from roadmap import schema
from roadmap.data.errors import DataError

log = logging.getLogger("roadmap.data")

DATASETS = schema.KEYS["data.name"].choices
# The datasets read from class folders (torchvision ImageFolder), where data.classes applies.
FOLDER_DATASETS = ("imagenet", "imagenet22k", "imagenette")
# data.classes: the named lists shipped with the package (<name>.txt, one WordNet id a line).
CLASS_LISTS = Path(__file__).parent / "class_lists"

# Folder that torchvision.datasets.Imagenette extracts into `root`, per `size`.
IMAGENETTE_FOLDERS = {"full": "imagenette2", "320px": "imagenette2-320", "160px": "imagenette2-160"}

# torchvision.datasets.ImageNet's layout: the official archives and devkit side by side.
IMAGENET_ARCHIVES = ("ILSVRC2012_devkit_t12.tar.gz", "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")

CIFAR = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}


class SyntheticImages(Dataset):
    """Deterministic random images, already normalized (no transform is applied to them).

    Image i is zero-mean, unit-variance uniform noise from a generator seeded by (seed, split, i),
    plus a per-class colour offset (seeded by `seed`, shared by the splits) so that the labels are
    learnable; label i is i % num_classes.
    """

    def __init__(self, size: int, num_classes: int, image_size: int, seed: int, split: int) -> None:
        self.size = size
        self.num_classes = num_classes
        self.image_size = image_size
        self.seed = seed
        self.split = split
        colors = np.random.default_rng([seed]).standard_normal((num_classes, 3, 1, 1), dtype=np.float32)
        self.class_colors = torch.from_numpy(colors)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < self.size:
            raise IndexError(index)
        # numpy's SeedSequence mixes all of (seed, split, index); torch's CPU generator keeps only 32 bits.
        rng = np.random.default_rng([self.seed, self.split, index])
        # Uniform, not normal: 4x cheaper to draw (~0.35 ms for a 224px image).
        noise = torch.from_numpy(rng.random((3, self.image_size, self.image_size), dtype=np.float32))
        label = index % self.num_classes
        return (noise - 0.5) * math.sqrt(12) + self.class_colors[label], label


def describe(error: BaseException) -> str:
    """The error's type and message on one line (some libraries' messages span several)."""
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


# Modes that hold more than 8 bits per pixel, and the value each scales to 255 from.
WIDE_MODES = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}
TRANSPARENT_MODES = ("LA", "La", "PA", "RGBA", "RGBa")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any image Pillow opens as 8-bit RGB, the one conversion of every decode path. 16-bit greyscale
    (`I;16*`, and `I`, which older Pillow gave 16-bit PNGs) scales 0..65535 to 0..255, float (`F`) 0..1;
    transparency (alpha, or a palette's or colour's `transparency`) is composited over white. A mode Pillow
    cannot convert raises, so the image counts as unreadable."""
    if image.mode in WIDE_MODES:
        pixels = np.nan_to_num(np.asarray(image, dtype=np.float32)) * (255 / WIDE_MODES[image.mode])
        return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode in TRANSPARENT_MODES or "transparency" in image.info:
        rgba = (image.convert("LA") if image.mode == "La" else image).convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV, RGB: Pillow's conversion, as torchvision's loader


def load_rgb(path: str) -> Image.Image:
    """An image file's pixels as RGB (`to_rgb`): the loader of the image folders and the in-memory cache."""
    with Image.open(path) as image:
        return to_rgb(image)


def bad_image(path: str, reason: str, on_bad_image: str) -> None:
    """An unreadable image: a DataError naming it under data.on_bad_image=error, else one log line."""
    if on_bad_image == "error":
        raise DataError(
            f"cannot read image {path} ({reason}); data.on_bad_image=skip skips unreadable images "
            "(named in the log, counted in result.json)."
        )
    log.warning("skipping unreadable image %s (%s)", path, reason)


def read_list(path: Path) -> list[str]:
    """A text file's entries, one per line; `#` starts a comment, blank lines are skipped."""
    entries = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [entry for entry in entries if entry]


@dataclass(frozen=True)
class ClassList:
    """data.classes: its value as configured and its WordNet ids, sorted (label i is wnids[i])."""

    name: str
    wnids: list[str]


def class_list(value: str | None) -> ClassList | None:
    """data.classes: None (every class folder), a list shipped in CLASS_LISTS by name, or a text file of
    WordNet ids."""
    if value is None:
        return None
    named = sorted(path.stem for path in CLASS_LISTS.glob("*.txt"))
    path = CLASS_LISTS / f"{value}.txt" if value in named else Path(str(value)).expanduser()
    if not path.is_file():
        raise DataError(
            f"data.classes={value!r} is neither a named list ({', '.join(named)}) nor a file; give a text file "
            "of WordNet ids (one per line), or null for every class."
        )
    wnids = sorted(set(read_list(path)))
    if not wnids:
        raise DataError(f"data.classes={value!r}: {path} lists no WordNet id; give one per line.")
    return ClassList(str(value), wnids)


class CheckedImageFolder(datasets.ImageFolder):
    """An ImageFolder whose unreadable images (corrupt, truncated, empty) follow `on_bad_image`:
    "error" raises a DataError naming the file; "skip" logs the file once per process, marks it (in
    shared memory, so that loader workers' marks reach the main process) and serves the next
    readable image in its place, which keeps the batch size. `wanted` (data.classes): only these
    class folders are read, labelled in sorted order."""

    def __init__(self, root: str, transform: Any, on_bad_image: str, wanted: ClassList | None = None) -> None:
        self.wanted = wanted  # read by find_classes, which ImageFolder's __init__ calls
        # load_rgb converts to RGB: some ImageNet/Imagenette JPEGs are grayscale (mode L) or CMYK.
        super().__init__(root, transform=transform, loader=load_rgb, allow_empty=True)
        self.on_bad_image = on_bad_image
        self.bad = torch.zeros(len(self.samples), dtype=torch.bool).share_memory_()

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        if self.wanted is None:
            return super().find_classes(directory)
        missing = [wnid for wnid in self.wanted.wnids if not (Path(directory) / wnid).is_dir()]
        if missing:
            raise DataError(
                f"data.classes={self.wanted.name!r}: {len(missing)} of its {len(self.wanted.wnids)} classes have "
                f"no folder in {directory}, the first {missing[0]}; point data.root at a copy that has them, or "
                "give data.classes a list of the classes it holds."
            )
        return self.wanted.wnids, {wnid: i for i, wnid in enumerate(self.wanted.wnids)}

    def subset(self, samples: list[tuple[str, int]], transform: Any) -> CheckedImageFolder:
        """These of its samples (its classes and labels kept), under `transform`."""
        part = copy.copy(self)
        part.samples = part.imgs = samples
        part.targets = [label for _, label in samples]
        part.transform = transform
        part.bad = torch.zeros(len(samples), dtype=torch.bool).share_memory_()
        return part

    @property
    def skipped(self) -> list[str]:
        return [self.samples[i][0] for i in self.bad.nonzero().flatten().tolist()]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        for step in range(len(self)):
            i = (index + step) % len(self)
            path, label = self.samples[i]
            try:
                image = self.loader(path)
            except Exception as error:  # noqa: BLE001 - any unreadable image, per on_bad_image
                if not self.bad[i]:
                    self.bad[i] = True
                    bad_image(path, describe(error), self.on_bad_image)
                continue
            if self.transform is not None:
                image = self.transform(image)
            if self.target_transform is not None:
                label = self.target_transform(label)
            return image, label
        raise DataError(f"data.root: no image under {self.root} can be read")


def image_folder(split_dir: Path, transform: Any, on_bad_image: str = "skip",
                 wanted: ClassList | None = None) -> CheckedImageFolder:
    """An ImageFolder over `split_dir` (RGB images; only the `wanted` classes when given); a DataError when
    it has no classes or an empty class."""
    if split_dir.is_dir() and any(f.suffix.lower() in IMG_EXTENSIONS for f in split_dir.iterdir() if f.is_file()):
        root = split_dir.parent
        raise DataError(
            f"data.root: {split_dir} holds images directly, not in class folders (a flat ImageNet val/, as "
            f"ILSVRC2012_img_val.tar unpacks); move it aside, put ILSVRC2012_img_val.tar and "
            f"ILSVRC2012_devkit_t12.tar.gz in {root} and run python -c \"import torchvision; "
            f"torchvision.datasets.ImageNet('{root}', split='{split_dir.name}')\", which writes "
            f"{split_dir}/<wnid>/<image>."
        )
    try:
        dataset = CheckedImageFolder(str(split_dir), transform, on_bad_image, wanted)
    except FileNotFoundError as err:
        raise DataError(
            f"data.root: {split_dir} holds no class folders ({err}); expected {split_dir}/<class>/<image>."
        ) from err
    counts = Counter(dataset.targets)
    empty = [str(split_dir / name) for name, idx in dataset.class_to_idx.items() if counts[idx] == 0]
    if empty:
        raise DataError(
            f"data.root: class folder(s) without images: {', '.join(empty)}; every class folder under "
            f"{split_dir} must hold at least one image (.jpg, .jpeg, .png, ...)."
        )
    return dataset


_ROOT_HELP = (
    "or set ROADMAP_DATA_DIR to the directory that holds the dataset folder (data.root defaults to "
    "${ROADMAP_DATA_DIR}/<dataset folder>, see conf/data/; ROADMAP_DATA_DIR defaults to ./data)."
)


def _show(root: Path) -> str:
    """`root` as configured, plus where it points when relative (to the working directory)."""
    return repr(str(root)) if root.is_absolute() else f"{str(root)!r} (= {root.resolve()})"


def _missing_folder_message(name: str, root: Path, extra: str = "") -> str:
    return (
        f"data.root={_show(root)} holds no {name} copy: expected {root}/train/<class>/<image> and "
        f"{root}/val/<class>/<image>.{extra} Point data.root at a folder that has train/ and val/, {_ROOT_HELP}"
    )


def _has_splits(root: Path) -> bool:
    return (root / "train").is_dir() and (root / "val").is_dir()


@contextmanager
def removed_if_failed(root: Path) -> Iterator[None]:
    """A download into `root`: when it fails, the folders it created (the part of `root`'s path that did not
    exist) are removed, so a failed attempt leaves nothing behind."""
    created = None
    for folder in (absolute := Path(os.path.abspath(root)), *absolute.parents):
        if folder.exists():
            break
        created = folder
    try:
        yield
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise


def extract_imagenet(root: Path) -> None:
    """The official archives + devkit in `root` -> root/train/<wnid>/ and root/val/<wnid>/, once, with
    torchvision's ImageNet parsers (which check the archives' md5 first)."""
    from torchvision.datasets import imagenet

    log.info("extracting the ImageNet archives in %s into train/ and val/ (once)", root)
    try:
        if not (root / imagenet.META_FILE).is_file():
            imagenet.parse_devkit_archive(str(root))
        for split, parse in (("train", imagenet.parse_train_archive), ("val", imagenet.parse_val_archive)):
            if (root / split).is_dir():
                continue
            partial = root / f".{split}.partial"  # renamed when complete: a crash never leaves half a split
            shutil.rmtree(partial, ignore_errors=True)
            parse(str(root), folder=partial.name)
            partial.rename(root / split)
    except RuntimeError as err:  # torchvision: an archive is missing or corrupt (md5)
        raise DataError(f"data.root={_show(root)}: {err}") from err


def locate_image_folder(data_cfg: Mapping[str, Any]) -> Path:
    """The folder holding train/ and val/ for imagenet or imagenette; downloads Imagenette when
    `data.download` and no copy is found."""
    name = data_cfg["name"]
    root = Path(data_cfg["root"]).expanduser()
    if _has_splits(root):
        return root
    if name == "imagenet":
        if all((root / archive).is_file() for archive in IMAGENET_ARCHIVES):
            extract_imagenet(root)
            return root
        raise DataError(_missing_folder_message(
            "ImageNet", root, " ImageNet is never downloaded; torchvision's ImageNet archives in it "
            f"({', '.join(IMAGENET_ARCHIVES)}) are extracted there once."
        ))

    size = str(schema.value(data_cfg, "data.download_size"))
    if size not in IMAGENETTE_FOLDERS:
        raise DataError(
            f"data.download_size={size!r} is not an Imagenette size; use one of {tuple(IMAGENETTE_FOLDERS)}."
        )
    extracted = root / IMAGENETTE_FOLDERS[size]
    if _has_splits(extracted):
        return extracted
    if not schema.value(data_cfg, "data.download"):
        raise DataError(
            _missing_folder_message(
                "Imagenette", root, f" Nor does {extracted}; data.download=false, so nothing was downloaded."
            )
        )
    try:
        with removed_if_failed(root):
            datasets.Imagenette(str(root), split="train", size=size, download=True)
    except Exception as err:  # offline, DNS, HTTP, checksum: all mean "no copy here"
        raise DataError(
            _missing_folder_message(
                "Imagenette",
                root,
                f" Downloading Imagenette ({size}) into it failed ({type(err).__name__}: {err}); on a machine "
                f"with network access, torchvision.datasets.Imagenette('{root}', size='{size}', download=True) "
                f"fetches it (into {extracted}), then copy it here.",
            )
        ) from err
    if not _has_splits(extracted):
        raise DataError(f"data.root={_show(root)}: the Imagenette download did not produce {extracted}/train, /val.")
    return extracted


HELD_OUT_HELP = "list held-out images relative to data.root, one per line (e.g. n01440764/n01440764_10026.JPEG)"


def locate_imagenet22k(data_cfg: Mapping[str, Any]) -> Path:
    """ImageNet-22K's root: one folder per WordNet id directly in it, as fall11_whole / winter21_whole unpack."""
    root = Path(data_cfg["root"]).expanduser()
    if not root.is_dir():
        raise DataError(
            f"data.root={_show(root)} holds no ImageNet-22K copy: expected {root}/<wnid>/<image>, one folder per "
            f"WordNet id (as fall11_whole / winter21_whole unpack). Point data.root at that folder, {_ROOT_HELP}"
        )
    return root


def split_held_out(dataset: CheckedImageFolder, held_out: str | None, eval_tf: Any,
                   ) -> tuple[CheckedImageFolder, CheckedImageFolder | None]:
    """data.held_out: (the images not listed, the listed images under `eval_tf`); (dataset, None) without a
    list. A listed image of a class that data.classes leaves out is not read, so it is dropped."""
    if held_out is None:
        return dataset, None
    path = Path(str(held_out)).expanduser()
    if not path.is_file():
        raise DataError(f"data.held_out={held_out!r} is not a file; {HELD_OUT_HELP}, or null for no validation.")
    entries = [e for e in read_list(path) if dataset.wanted is None or e.split("/", 1)[0] in dataset.class_to_idx]
    listed = {os.path.join(dataset.root, entry): entry for entry in entries}
    if not listed:
        of = " of the classes of data.classes" if dataset.wanted is not None else ""
        raise DataError(f"data.held_out={held_out!r} lists no image{of}; {HELD_OUT_HELP}")
    val = [sample for sample in dataset.samples if sample[0] in listed]
    found = {image for image, _ in val}
    missing = [entry for image, entry in listed.items() if image not in found]
    if missing:
        raise DataError(
            f"data.held_out={held_out!r}: {len(missing)} of its {len(listed)} images are not under "
            f"data.root={dataset.root}, the first {missing[0]}; {HELD_OUT_HELP}"
        )
    train = [sample for sample in dataset.samples if sample[0] not in listed]
    return dataset.subset(train, dataset.transform), dataset.subset(val, eval_tf)


def cifar(data_cfg: Mapping[str, Any], train: bool, transform: Any) -> Dataset:
    name = data_cfg["name"]
    root = Path(data_cfg["root"]).expanduser()
    download = bool(schema.value(data_cfg, "data.download"))
    try:
        with removed_if_failed(root):
            return CIFAR[name](str(root), train=train, transform=transform, download=download)
    except Exception as err:
        how = (
            f"downloading it there failed ({type(err).__name__}: {err}); on a machine with network access "
            f"torchvision.datasets.{CIFAR[name].__name__}('{root}', download=True) fetches it, then copy it here"
            if download
            else "data.download=false, so nothing was downloaded; set data.download=true when online"
        )
        raise DataError(
            f"data.root={_show(root)} holds no valid {name} copy (torchvision's python-pickle batches); {how}. "
            f"Point data.root at an existing copy, {_ROOT_HELP}"
        ) from err


