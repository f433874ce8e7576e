"""ImageNet in shards (`data.format=shards`): litdata chunks, for clusters where opening 1.3M small files
on a network filesystem is the bottleneck. Each split is a folder of ~64 MB chunk files holding every
image's JPEG bytes as they were (no re-encode), its class index, its path under the split and a CRC-32; the
manifest `roadmap-shards.json` beside them names the classes (wnids, in ImageFolder order) and the
counts per split.

Written by `write_shards` (the command `python -m roadmap.shards`, see there). Read by litdata's
`StreamingDataset` (each DDP rank and loader worker streams its own chunks; the training order is
shuffled per epoch from the run seed) behind its `StreamingDataLoader`.
"""
from __future__ import annotations

import io
import json
import logging
import os
import shutil
import zlib
from bisect import bisect_right
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from roadmap import schema
from roadmap.data.errors import DataError
from roadmap.data.sources import describe, image_folder, locate_image_folder, to_rgb

log = logging.getLogger("roadmap.data")

MANIFEST = "roadmap-shards.json"
MANIFEST_VERSION = 1
SPLITS = ("train", "val")
SPLIT_INFO = "roadmap-split.json"  # per split, inside its folder: what the manifest says of it
INSTALL = "pip install 'roadmap[shards]' (litdata)"
# The item formats `shard_item`'s fields are written as; litdata's others (pickle, ...) could run code when read.
ITEM_FORMATS = ("bytes", "int")
REWRITE = "write the shards again with python -m roadmap.shards <source> <out> --force"


def require_litdata(what: str) -> Any:
    """The litdata module; a DataError naming the extra to install when it is missing."""
    try:
        import litdata
    except ImportError as err:
        raise DataError(f"{what} needs litdata, which is not installed: {INSTALL} installs it.") from err
    return litdata


# --- writing --------------------------------------------------------------------------------


def check_decodes(data: bytes) -> None:
    """Raise when PIL cannot decode `data` to RGB (empty, truncated, not an image, a mode it cannot convert)."""
    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", (1, 1))  # JPEG: decode at 1/8 scale, which still reads every byte of the stream
        to_rgb(img)


def shard_item(data: bytes, label: int, path: str, index: int) -> dict[str, Any]:
    """One stored sample. The path is bytes: a str field makes litdata read every item ~30x slower."""
    return {"jpeg": data, "label": label, "path": path.encode(), "index": index, "crc": zlib.crc32(data)}


def _write_split(split_dir: Path, out: Path, chunk_bytes: int, on_bad_image: str) -> dict[str, Any]:
    """One split into `out` (a fresh folder); its info (images, skipped, source)."""
    from litdata.streaming.writer import BinaryWriter

    dataset = image_folder(split_dir, None, on_bad_image)
    writer = BinaryWriter(str(out), chunk_bytes=chunk_bytes)
    skipped, count = [], 0
    for path, label in dataset.samples:
        data = Path(path).read_bytes()
        try:
            check_decodes(data)
        except Exception as error:  # noqa: BLE001 - any unreadable image, per on_bad_image
            if on_bad_image == "error":
                raise DataError(f"source: cannot read image {path} ({describe(error)}); --on-bad-image skip leaves "
                                "unreadable images out (listed in the manifest).") from error
            log.warning("skipping unreadable image %s (%s)", path, describe(error))
            skipped.append(path)
            continue
        writer[count] = shard_item(data, label, str(Path(path).relative_to(split_dir)), count)
        count += 1
        if count % 10_000 == 0:
            log.info("%s: %d of %d images written", split_dir, count, len(dataset))
    if count == 0:
        raise DataError(f"source: no image under {split_dir} can be read; nothing to write.")
    writer.done()
    writer.merge()
    info = {"images": count, "skipped": skipped, "source": str(split_dir), "classes": dataset.classes}
    (out / SPLIT_INFO).write_text(json.dumps(info, indent=1))
    return info


def write_shards(source: Path, out: Path, force: bool = False, chunk_bytes: int = 64 * 2**20,
                 on_bad_image: str = "skip") -> dict[str, Any]:
    """Write every split of the ImageNet-layout `source` as litdata chunks under `out`; the manifest."""
    require_litdata("writing shards")
    manifest_path = out / MANIFEST
    if manifest_path.is_file() and not force:
        raise DataError(f"out={out} already holds finished shards ({manifest_path}); pass --force to write them again.")
    folder = locate_image_folder({"name": "imagenet", "root": str(source)})
    if force:
        manifest_path.unlink(missing_ok=True)
        for split in SPLITS:
            shutil.rmtree(out / split, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    infos = {}
    for split in SPLITS:
        done = out / split
        if (done / SPLIT_INFO).is_file():
            infos[split] = json.loads((done / SPLIT_INFO).read_text())
            if infos[split]["source"] != str(folder / split):
                raise DataError(f"out={out}: {done} was written from {infos[split]['source']}, not {folder / split}; "
                                "pass --force to write every split again.")
            log.info("%s is complete: kept", done)
            continue
        partial = out / f".{split}.partial"  # renamed when complete: a crash never leaves half a split
        shutil.rmtree(partial, ignore_errors=True)
        log.info("writing %s into %s", folder / split, done)
        infos[split] = _write_split(folder / split, partial, chunk_bytes, on_bad_image)
        partial.rename(done)
    if infos["train"]["classes"] != infos["val"]["classes"]:
        raise DataError(f"source: {folder}/train and {folder}/val have different class folders; both need the "
                        "same classes.")
    manifest = {
        "format": "litdata", "version": MANIFEST_VERSION, "classes": infos["train"]["classes"],
        "splits": {split: {"images": info["images"], "skipped": info["skipped"]} for split, info in infos.items()},
        "source": str(folder),
    }
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return manifest


# --- reading --------------------------------------------------------------------------------


def has_manifest(root: Path) -> bool:
    return (root / MANIFEST).is_file()


def read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        ok = manifest["format"] == "litdata" and manifest["version"] == MANIFEST_VERSION
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"data.root={root}: cannot read the shard manifest {path} ({describe(err)}); {REWRITE}.") from err
    if not ok:
        raise DataError(f"data.root={root}: {path} is not a version-{MANIFEST_VERSION} litdata shard manifest; "
                        f"{REWRITE}.")
    return manifest


def chunk_files(split_dir: Path) -> list[tuple[Path, int]]:
    """The split's chunk files and their item counts, after checking the index's item formats (before litdata
    reads anything: shards are data, never code) and each file's size against the index."""
    index_path = split_dir / "index.json"
    try:
        index = json.loads(index_path.read_text())
        chunks, formats = index["chunks"], index["config"]["data_format"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"data.root: cannot read the shard index {index_path} ({describe(err)}); {REWRITE}.") from err
    if not isinstance(formats, list) or not formats or not set(formats) <= set(ITEM_FORMATS):
        raise DataError(f"data.root: the shard index {index_path} declares the item formats {formats!r}; shards are "
                        f"data, read only as {' and '.join(ITEM_FORMATS)} (what python -m roadmap.shards writes), never "
                        f"unpickled or run: {REWRITE} from the images.")
    files = []
    for chunk in chunks:
        path = split_dir / chunk["filename"]
        size = path.stat().st_size if path.is_file() else None
        if size != chunk["chunk_bytes"]:
            found = "missing" if size is None else f"{size} bytes"
            raise DataError(f"data.root: shard {path} is truncated or damaged ({found}, the index says "
                            f"{chunk['chunk_bytes']}); {REWRITE}.")
        files.append((path, int(chunk["chunk_size"])))
    return files


class ShardSample:
    """litdata's per-item transform: a stored item -> (transform(RGB image), label), or (raw JPEG bytes as a
    uint8 tensor, label) when `raw` (data.decode_on=gpu). An item whose CRC does not match, or which
    does not decode, raises a DataError naming its chunk file: shards are checked when written."""

    def __init__(self, split_dir: Path, transform: Callable | None, raw: bool) -> None:
        files = chunk_files(split_dir)
        self.split_dir, self.transform, self.raw = split_dir, transform, raw
        self.files = [str(path) for path, _ in files]
        self.starts = [sum(count for _, count in files[:i]) for i in range(len(files))]

    def chunk_of(self, index: int) -> str:
        return self.files[bisect_right(self.starts, index) - 1]

    def damaged(self, index: int, error: BaseException, image: str = "") -> DataError:
        """The error for item `index` of a damaged chunk: the chunk file (and the image when known), the fix."""
        what = f"image {image} in shard" if image else "shard"
        return DataError(f"data.root: {what} {self.chunk_of(index)} is damaged ({describe(error)}); {REWRITE}.")

    def __call__(self, item: Mapping[str, Any]) -> tuple[Any, int]:
        data, label = item["jpeg"], int(item["label"])
        try:
            if zlib.crc32(data) != item["crc"]:
                raise ValueError("CRC-32 mismatch")
            if self.raw:
                return torch.frombuffer(bytearray(data), dtype=torch.uint8), label
            image = to_rgb(Image.open(io.BytesIO(data)))  # the pixels load_rgb gives
        except Exception as error:  # noqa: BLE001 - any damage, named with its file
            raise self.damaged(item["index"], error, item["path"].decode()) from error
        return (self.transform(image) if self.transform is not None else image), label


def open_split(root: Path, split: str, transform: Callable | None, classes: list[str], raw: bool = False) -> Any:
    """One split as a litdata StreamingDataset of (sample, label), with `classes` set; shuffled when training,
    from the run seed (Lightning's PL_GLOBAL_SEED, as its DistributedSampler), a new order each epoch."""
    require_litdata("data.format=shards")
    from roadmap.data.shard_dataset import ShardDataset  # imports litdata

    logging.getLogger("litdata").setLevel(logging.WARNING)  # its INFO lines (cache size, mmap) repeat every epoch
    train = split == "train"
    sample = ShardSample(root / split, transform, raw)  # checks the index first
    dataset = ShardDataset(
        str(root / split), shuffle=train, drop_last=train, seed=int(os.environ.get("PL_GLOBAL_SEED", 0)),
        transform=sample,
    )
    dataset.classes, dataset.shard_sample = classes, sample
    return dataset


def open_splits(root: Path, train_tf: Callable | None, eval_tf: Callable | None, raw: bool = False) -> tuple[Any, Any]:
    """The (train, val) splits written under `root` by `write_shards`."""
    require_litdata("data.format=shards")
    classes = read_manifest(root)["classes"]
    return open_split(root, "train", train_tf, classes, raw), open_split(root, "val", eval_tf, classes, raw)


def is_shard_split(dataset: Any) -> bool:
    return isinstance(getattr(dataset, "shard_sample", None), ShardSample)


def dataloader(dataset: Any, **kwargs: Any) -> Any:
    """litdata's StreamingDataLoader: it sets the dataset's epoch (the shuffle's key, with the seed) on every
    pass, in this process. Its workers are not persistent: a new worker copies that epoch, while litdata
    passes nothing to a persistent one."""
    from litdata import StreamingDataLoader

    return StreamingDataLoader(dataset, **{**kwargs, "persistent_workers": False})


def check_format(data_cfg: Mapping[str, Any]) -> str:
    fmt = schema.value(data_cfg, "data.format")
    try:
        schema.check_value("data.format", fmt)
    except schema.ConfigError as error:
        raise DataError(str(error)) from None
    return fmt


def resolve_format(data_cfg: Mapping[str, Any], root: Path) -> str:
    """data.format: folder or shards; auto: shards when `root` holds the shard manifest."""
    fmt = check_format(data_cfg)
    if fmt == "auto":
        return "shards" if has_manifest(root) else "folder"
    if fmt == "shards" and not has_manifest(root):
        raise DataError(f"data.format=shards but data.root={root} holds no {MANIFEST}; write shards there with "
                        "python -m roadmap.shards <source> <out>, or use data.format=folder.")
    return fmt
