"""Decoded images in memory for small sets (`data.in_memory`): a split is decoded once to uint8 RGB
(the pixels `load_rgb` gives), written to a cache file keyed by its folder's real path and its files'
paths, sizes and mtimes, and memory-mapped by every loader worker. The cache lives in the user's cache
folder (`user_cache_dir`), never in the data folder; a truncated or unreadable cache file is rebuilt once.
Unreadable images are found while decoding and follow `data.on_bad_image`."""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets

from roadmap.data.errors import DataError
from roadmap.data.sources import bad_image, describe

log = logging.getLogger("roadmap.data")

CACHE_VERSION = 1
# data.in_memory=auto: in memory when the decoded splits fit in this (estimated from a sample of headers).
AUTO_MAX_BYTES = 2 * 2**30
AUTO_MAX_IMAGES = 200_000  # beyond this, do not even read headers to decide
AUTO_SAMPLE = 64
INDEX_KEYS = ("offsets", "shapes", "bad", "reasons")


def user_cache_dir() -> Path:
    """$XDG_CACHE_HOME/roadmap, else ~/.cache/roadmap: beside torch's and Hugging Face's caches."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "roadmap"


def cache_dir(configured: str | None) -> Path:
    """`data.cache_dir` when set, else `user_cache_dir()`."""
    return Path(configured).expanduser() if configured else user_cache_dir()


def cache_key(split_dir: Path, samples: Sequence[tuple[str, int]]) -> str:
    """A hash of the split folder's real path and every file's path under it, label, size and mtime: the
    same for every spelling of the folder (relative, absolute, through a link)."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}\n{split_dir.resolve()}\n".encode())
    for path, label in samples:
        stat = os.stat(path)
        digest.update(f"{os.path.relpath(path, split_dir)}\t{label}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def fits_in_memory(splits: Sequence[datasets.ImageFolder]) -> bool:
    """data.in_memory=auto: whether the decoded splits would take at most AUTO_MAX_BYTES."""
    paths = [path for split in splits for path, _ in split.samples]
    if not paths or len(paths) > AUTO_MAX_IMAGES:
        return False
    sizes = []
    for path in paths[:: max(1, len(paths) // AUTO_SAMPLE)]:
        try:
            with Image.open(path) as img:  # the header only
                sizes.append(img.width * img.height * 3)
        except Exception:  # noqa: BLE001 - a bad image is dealt with when decoding
            continue
    return bool(sizes) and sum(sizes) / len(sizes) * len(paths) <= AUTO_MAX_BYTES


def _decode(split: datasets.ImageFolder, on_bad_image: str, pixels_path: Path) -> dict[str, np.ndarray]:
    """Decode every image of `split` into `pixels_path` (raw uint8, HWC, one after another); the index."""
    offsets, shapes, bad, reasons = [], [], [], []
    offset = 0
    with open(pixels_path, "wb") as f:
        for i, (path, _) in enumerate(split.samples):
            try:
                pixels = np.asarray(split.loader(path))
            except Exception as error:  # noqa: BLE001 - any unreadable image, per data.on_bad_image
                if on_bad_image == "error":
                    bad_image(path, describe(error), on_bad_image)
                bad.append(i)
                reasons.append(describe(error))
                continue
            f.write(pixels.tobytes())
            offsets.append(offset)
            shapes.append(pixels.shape[:2])
            offset += pixels.size
    return {
        "offsets": np.asarray(offsets, dtype=np.int64),
        "shapes": np.asarray(shapes, dtype=np.int64).reshape(-1, 2),
        "bad": np.asarray(bad, dtype=np.int64),
        "reasons": np.asarray(reasons, dtype=str),
    }


def _build(split: datasets.ImageFolder, on_bad_image: str, pixels_path: Path, index_path: Path) -> None:
    pixels_path.parent.mkdir(parents=True, exist_ok=True)
    log.info("decoding %d images of %s into %s (once, data.in_memory)", len(split), split.root, pixels_path)
    # Temporary names, then renames, index last: a crash or a concurrent rank never sees half a cache.
    fd, tmp_pixels = tempfile.mkstemp(dir=pixels_path.parent, prefix=f".{pixels_path.name}.")
    os.close(fd)
    try:
        index = _decode(split, on_bad_image, Path(tmp_pixels))
        with tempfile.NamedTemporaryFile(dir=index_path.parent, prefix=f".{index_path.name}.", delete=False) as f:
            np.savez(f, **index)
        for path in (tmp_pixels, f.name):
            os.chmod(path, 0o644)  # mkstemp's 0600 would hide a shared cache from other users
        os.replace(tmp_pixels, pixels_path)
        os.replace(f.name, index_path)
    finally:
        Path(tmp_pixels).unlink(missing_ok=True)


class DamagedCache(Exception):
    """A cache file that is truncated or unreadable; the message names it."""


def _check_cache(pixels_path: Path, index_path: Path) -> dict[str, np.ndarray]:
    """The cache's index, once it and the pixel file are whole."""
    try:
        with np.load(index_path) as index:
            loaded = {key: index[key] for key in INDEX_KEYS}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:
        raise DamagedCache(f"{index_path} ({describe(error)})") from error
    expected = int(loaded["shapes"].prod(axis=1).sum()) * 3
    size = pixels_path.stat().st_size if pixels_path.is_file() else None
    if size != expected:
        raise DamagedCache(f"{pixels_path} ({'missing' if size is None else f'{size} bytes'}, its index says {expected})")
    return loaded


def _read_cache(split: datasets.ImageFolder, on_bad_image: str, pixels_path: Path, index_path: Path) -> dict[str, np.ndarray]:
    """The cache's index; a truncated or unreadable cache is rebuilt once (a warning), then an error naming it."""
    try:
        return _check_cache(pixels_path, index_path)
    except DamagedCache as damage:
        log.warning("the in-memory cache %s is truncated or unreadable: rebuilding it", damage)
    try:
        _build(split, on_bad_image, pixels_path, index_path)
        return _check_cache(pixels_path, index_path)
    except (OSError, DamagedCache) as error:
        raise DataError(
            f"data.cache_dir: the in-memory cache {pixels_path} cannot be rebuilt ({describe(error)}); free space in "
            f"{pixels_path.parent}, or set data.cache_dir to another folder, or data.in_memory=false."
        ) from error


class InMemoryImages(Dataset):
    """An ImageFolder's split served from its decoded cache: the same (transform(image), label) pairs,
    without the unreadable images (named in `skipped`)."""

    def __init__(self, split: datasets.ImageFolder, cache: Path, on_bad_image: str) -> None:
        split_dir = Path(split.root)
        real = split_dir.resolve()
        stem = f"{real.parent.name}-{real.name}-{cache_key(split_dir, split.samples)}"
        self.pixels_path, index_path = cache / f"{stem}.u8", cache / f"{stem}.npz"
        if not (index_path.is_file() and self.pixels_path.is_file()):
            _build(split, on_bad_image, self.pixels_path, index_path)
        index = _read_cache(split, on_bad_image, self.pixels_path, index_path)
        self.offsets, self.shapes = index["offsets"], index["shapes"]
        bad, reasons = index["bad"].tolist(), index["reasons"].tolist()
        self.skipped = [split.samples[i][0] for i in bad]
        for path, reason in zip(self.skipped, reasons):
            bad_image(path, reason, on_bad_image)
        bad = set(bad)
        self.root, self.classes, self.class_to_idx = split.root, split.classes, split.class_to_idx
        self.samples = [s for i, s in enumerate(split.samples) if i not in bad]
        self.targets = [label for _, label in self.samples]
        self.transform, self.target_transform = split.transform, split.target_transform
        self._pixels: np.ndarray | None = None  # opened lazily, in each loader worker

    def __len__(self) -> int:
        return len(self.samples)

    def image(self, index: int) -> Image.Image:
        """The decoded RGB image, as `load_rgb` gives it."""
        if self._pixels is None:
            self._pixels = np.memmap(self.pixels_path, dtype=np.uint8, mode="r")
        (height, width), start = self.shapes[index], self.offsets[index]
        return Image.fromarray(np.array(self._pixels[start : start + height * width * 3]).reshape(height, width, 3))

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label = self.image(index), self.targets[index]
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            label = self.target_transform(label)
        return image, label

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pixels": None}  # workers map the file themselves, never a pickled copy
