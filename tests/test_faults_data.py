"""The data faults the project survives, one test each: what goes wrong, and what the user sees instead
(docs/troubleshooting.md lists the same cases). Small fakes in tmp_path, no network, no subprocess."""
from __future__ import annotations

import json
import logging
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.imagenette
from PIL import Image

from roadmap.data import DataError, build_datasets, locate_image_folder, memory
from roadmap.data import litdata_shards as shards
from roadmap.data.gpu_decode import decode, read_bytes
from roadmap.data.memory import InMemoryImages
from roadmap.data.sources import image_folder, load_rgb
from tests.test_data import make_cfg, write_images


class Payload:
    """Unpickled, it creates the file `marker` (as `os.system` could run anything)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return open, (str(self.marker), "w")


def test_shard_index_declaring_pickle_runs_nothing(tmp_path: Path) -> None:
    """A shard folder whose index.json declares pickled items (litdata would unpickle them, running their
    code): refused in one line naming the index file, before anything is read; the payload never runs."""
    from litdata.streaming.writer import BinaryWriter

    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(Payload(proof)))  # the payload is live
    assert proof.exists()

    root, marker = tmp_path / "shards", tmp_path / "marker"
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        writer = BinaryWriter(str(root / split), chunk_bytes=1 << 20)
        writer[0] = Payload(marker)
        writer.done()
        writer.merge()
    index_path = root / "train" / "index.json"
    assert json.loads(index_path.read_text())["config"]["data_format"] == ["pickle"]
    manifest = {"format": "litdata", "version": shards.MANIFEST_VERSION, "classes": ["a"], "splits": {}, "source": ""}
    (root / shards.MANIFEST).write_text(json.dumps(manifest))

    with pytest.raises(DataError) as err:
        train, _ = shards.open_splits(root, None, None)
        train[0]  # the first item read: litdata unpickles it
    message = str(err.value)
    assert str(index_path) in message and "'pickle'" in message and "\n" not in message
    assert not marker.exists()


def test_shard_chunk_with_damaged_item_headers_names_the_chunk(tmp_path: Path) -> None:
    """A chunk of the right size whose item headers are damaged (litdata or pyarrow raise struct.error,
    ArrowInvalid, ...): one line naming the chunk file and the command that writes the shards again."""
    source = tmp_path / "imagenet"
    for split in ("train", "val"):
        write_images(source / split / "a", 2, ".JPEG")
    shards.write_shards(source, tmp_path / "shards")
    chunk = tmp_path / "shards" / "val" / "chunk-0-0.bin"
    content = bytearray(chunk.read_bytes())
    count = struct.unpack_from("<I", content, 0)[0]
    first_item = struct.unpack_from("<I", content, 4)[0]  # past the offset table: the first item's header
    assert count == 2 and first_item == 4 * (count + 2)
    content[first_item : first_item + 20] = b"\xff" * 20
    chunk.write_bytes(bytes(content))

    dataset = shards.open_split(tmp_path / "shards", "val", None, ["a"])
    for read in (lambda: dataset[0], lambda: next(iter(dataset))):  # by index, and as the loader iterates
        with pytest.raises(DataError) as err:
            read()
        message = str(err.value)
        assert f"shard {chunk} is damaged" in message and "python -m roadmap.shards" in message
        assert "\n" not in message


def _save(path: Path, image: Image.Image, **options: object) -> Path:
    image.save(path, **options)
    return path


def _palette_with_transparency() -> Image.Image:
    image = Image.fromarray(np.array([[0, 1, 0]], dtype=np.uint8), "P")
    image.putpalette([10, 20, 30, 200, 0, 0])
    return image


GREY = np.array([0, 128, 255])
# mode: (how to write a 3x1 image of that mode, its pixels in RGB)
MODES = {
    "I;16": (lambda p: _save(p / "a.png", Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))), GREY),
    "I": (lambda p: _save(p / "a.tif", Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.int32))), GREY),
    "F": (lambda p: _save(p / "a.tif", Image.fromarray(np.array([[0, 0.5, 1]], dtype=np.float32))), GREY),
    "L": (lambda p: _save(p / "a.png", Image.fromarray(np.array([[0, 77, 255]], dtype=np.uint8))), [0, 77, 255]),
    "1": (lambda p: _save(p / "a.png", Image.fromarray(np.array([[0, 1, 1]], dtype=bool))), [0, 255, 255]),
    "P": (lambda p: _save(p / "a.png", _palette_with_transparency(), transparency=1),
          [(10, 20, 30), (255, 255, 255), (10, 20, 30)]),
    "RGBA": (lambda p: _save(p / "a.png", Image.fromarray(np.array([[(10, 20, 30, 255), (200, 0, 0, 0), (0, 0, 0, 128)]],
                                                                  dtype=np.uint8))),
             [(10, 20, 30), (255, 255, 255), (127, 127, 127)]),
    "LA": (lambda p: _save(p / "a.png", Image.fromarray(np.array([[(100, 255), (0, 0), (50, 255)]], dtype=np.uint8), "LA")),
           [100, 255, 50]),
    "CMYK": (lambda p: _save(p / "a.tif", Image.fromarray(np.array([[(255, 0, 0, 0), (0, 0, 0, 0), (0, 0, 0, 255)]],
                                                                  dtype=np.uint8), "CMYK")),
             [(0, 255, 255), (255, 255, 255), (0, 0, 0)]),
}


@pytest.mark.parametrize("mode", MODES)
def test_every_image_mode_decodes_to_its_rgb(tmp_path: Path, mode: str) -> None:
    """16-bit greyscale (a 16-bit PNG used to decode all white), 32-bit int, float, palette with transparency,
    RGBA, LA, CMYK, L and 1-bit images: the right RGB pixels (transparency over white), read from files (CPU
    decode, in-memory cache, shards) and from bytes (data.decode_on=gpu), and served by an image folder."""
    write, pixels = MODES[mode]
    path = write(tmp_path)
    assert Image.open(path).mode == mode
    expected = np.broadcast_to(np.asarray(pixels, dtype=np.uint8).reshape(1, 3, -1), (1, 3, 3))
    decoded = load_rgb(str(path))
    assert decoded.mode == "RGB" and np.abs(np.asarray(decoded, dtype=int) - expected).max() <= 1
    assert torch.equal(decode([read_bytes(str(path))], torch.device("cpu"))[0], torch.from_numpy(np.array(decoded)).permute(2, 0, 1))

    (tmp_path / "split" / "a").mkdir(parents=True)
    path.rename(tmp_path / "split" / "a" / path.name)
    folder = image_folder(tmp_path / "split", None)
    assert np.array_equal(np.asarray(folder[0][0]), np.asarray(decoded)) and folder.skipped == []


def _folder(tmp_path: Path) -> Path:
    """An image folder's train split of three small JPEGs."""
    write_images(tmp_path / "data" / "train" / "a", 3)
    return tmp_path / "data" / "train"


@pytest.mark.parametrize("damaged", [".u8", ".npz"])
def test_truncated_in_memory_cache_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture, damaged: str) -> None:
    """A truncated in-memory cache file (used to fail with `cannot reshape array of size 0`): one warning
    naming it, rebuilt once, and the images served as decoded."""
    split, cache = _folder(tmp_path), tmp_path / "cache"
    InMemoryImages(image_folder(split, None), cache, "skip")
    (file,) = cache.glob(f"*{damaged}")
    file.write_bytes(file.read_bytes()[:10])
    with caplog.at_level(logging.INFO, "roadmap.data"):
        images = InMemoryImages(image_folder(split, None), cache, "skip")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(file) in warnings[0] and "rebuilding" in warnings[0]
    assert caplog.text.count("decoding") == 1
    assert np.array_equal(np.asarray(images.image(2)), np.asarray(load_rgb(images.samples[2][0])))


def test_in_memory_cache_that_cannot_be_rebuilt_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An in-memory cache still truncated after its rebuild (a full or failing disk): one line naming the
    file and what to do (free space, another data.cache_dir, or data.in_memory=false)."""
    split, cache = _folder(tmp_path), tmp_path / "cache"
    build = memory._build

    def truncating_build(*args: object) -> None:
        build(*args)
        for file in cache.glob("*.u8"):
            file.write_bytes(b"")

    monkeypatch.setattr(memory, "_build", truncating_build)
    with pytest.raises(DataError) as err:
        InMemoryImages(image_folder(split, None), cache, "skip")
    message = str(err.value)
    (file,) = cache.glob("*.u8")
    assert str(file) in message and "data.cache_dir" in message and "data.in_memory=false" in message
    assert "\n" not in message


def test_in_memory_cache_lives_in_the_user_cache_keyed_by_real_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """The in-memory cache used to be written into the data folder, one per spelling of its path: it goes to
    $XDG_CACHE_HOME/roadmap, and a relative, an absolute and a linked spelling share one cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = tmp_path / "data"
    for split in ("train", "val"):
        write_images(root / split / "a", 2)
    (tmp_path / "link").symlink_to(root)
    spellings = [root, Path(os.path.relpath(root)), tmp_path / "link", tmp_path / "link" / ".." / "data"]
    with caplog.at_level(logging.INFO, "roadmap.data"):
        for spelling in spellings:
            cfg = make_cfg("imagenet", **{"data.root": str(spelling), "data.num_classes": 1, "data.in_memory": True})
            train, _ = build_datasets(cfg.data, cfg.recipe.augment)
            assert isinstance(train, InMemoryImages)
    assert caplog.text.count("decoding") == 2  # train and val, once
    assert sorted(p.name for p in root.iterdir()) == ["train", "val"]
    assert len(list((tmp_path / "xdg" / "roadmap").glob("data-*.u8"))) == 2


def test_failed_download_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing data.root whose download fails (offline) used to leave an empty folder behind: the folders
    the download created are removed, the ones that existed are kept."""
    def failing_download(url: str, download_root: str, **kwargs: object) -> None:
        Path(download_root).mkdir(parents=True, exist_ok=True)  # as torchvision does before fetching
        (Path(download_root) / "imagenette2-160.tgz").write_bytes(b"partial")
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets.imagenette, "download_and_extract_archive", failing_download)
    root = tmp_path / "new" / "imagenette"
    with pytest.raises(DataError, match="network unreachable"):
        locate_image_folder({"name": "imagenette", "root": str(root), "download": True, "download_size": "160px"})
    assert not (tmp_path / "new").exists() and tmp_path.is_dir()
