"""roadmap.data.litdata_shards: the litdata shard writer and reader, on a tiny fake ImageNet (no network)."""
from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from litdata.utilities.env import _DistributedEnv
from PIL import Image
from torchvision.datasets.folder import pil_loader

from roadmap import shards as shards_command
from roadmap.data import DataError, build_datamodule
from roadmap.data import litdata_shards as shards
from tests.test_data import make_cfg, seed_all, write_bad_images, write_fake_imagenet_archives, write_images

WNIDS = ["n01440764", "n02102040", "n02979186"]


def fake_imagenet(root: Path, train: int = 6, val: int = 2) -> Path:
    """train/ and val/ class folders of small JPEGs, one of them grayscale (as some ImageNet JPEGs are)."""
    for split, count in (("train", train), ("val", val)):
        for k, wnid in enumerate(WNIDS):
            write_images(root / split / wnid, count + k, ".JPEG")
    Image.new("L", (33, 47), 90).save(root / "val" / WNIDS[0] / "gray.JPEG", format="JPEG")
    return root


def cfg(root: Path, **overrides: object):
    return make_cfg("imagenet", **{"data.root": str(root), "data.num_classes": len(WNIDS), "data.num_workers": 0,
                                   "data.in_memory": False, **overrides})


def splits(root: Path, **overrides: object) -> tuple:
    dm = build_datamodule(cfg(root, **overrides), per_device_batch=4)
    dm.setup("fit")
    return dm


def items(dataset) -> list[tuple[bytes, int]]:  # noqa: ANN001
    return [(np.asarray(image).tobytes(), label) for image, label in dataset]


@pytest.fixture
def written(tmp_path: Path) -> tuple[Path, Path]:
    source = fake_imagenet(tmp_path / "imagenet")
    shards.write_shards(source, tmp_path / "shards", chunk_bytes=8000)  # several chunks per split
    return source, tmp_path / "shards"


def test_manifest(written: tuple[Path, Path]) -> None:
    source, out = written
    manifest = json.loads((out / shards.MANIFEST).read_text())
    assert manifest["classes"] == WNIDS and manifest["source"] == str(source)
    assert manifest["splits"] == {"train": {"images": 6 + 7 + 8, "skipped": []},
                                  "val": {"images": 3 + 3 + 4, "skipped": []}}
    assert len(list((out / "train").glob("chunk-*.bin"))) > 1 and not list(out.glob(".*.partial"))


def test_shards_serve_the_folder_samples(written: tuple[Path, Path]) -> None:
    """Same classes, the same val samples in the same order, and the same decoded pixels and labels."""
    source, out = written
    folder, sharded = splits(source, **{"data.format": "folder"}), splits(out)  # data.format=auto finds the manifest
    assert shards.is_shard_split(sharded.train_set) and not shards.is_shard_split(folder.train_set)
    assert sharded.train_set.classes == folder.train_set.classes == WNIDS
    val_folder, val_shards = list(folder.val_dataloader()), list(sharded.val_dataloader())
    for (a, y_a), (b, y_b) in zip(val_folder, val_shards, strict=True):
        assert torch.equal(a, b) and torch.equal(y_a, y_b)  # val: unshuffled, the same eval transform

    # Training: the same images under another order; the decoded pixels as pil_loader gives them.
    in_order = [(np.asarray(pil_loader(path)).tobytes(), label) for path, label in folder.train_set.samples]
    decoded = items(shards.open_split(out, "train", None, WNIDS))
    assert len(decoded) == 21 and sorted(decoded) == sorted(in_order) and decoded != in_order  # shuffled

    loader = sharded.train_dataloader()
    sizes = [len(labels) for images, labels in loader]
    assert sizes == [4] * 5 and next(iter(loader))[0].shape == (4, 3, 224, 224)  # full batches (drop_last)


def test_ddp_ranks_get_distinct_parts(written: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Two simulated ranks: disjoint parts of equal size; the order is fixed by the seed and the epoch."""
    _, out = written

    def rank_items(rank: int, epoch: int = 1) -> list[tuple[bytes, int]]:
        dataset = shards.open_split(out, "train", None, WNIDS)
        dataset.distributed_env = _DistributedEnv(world_size=2, global_rank=rank, num_nodes=1)
        dataset.set_epoch(epoch)
        return items(dataset)

    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # the run seed, as seed_everything sets it
    first, second = rank_items(0), rank_items(1)
    assert len(first) == len(second) == 10  # 21 images, drop_last: 10 each
    assert not set(first) & set(second) and len(set(first) | set(second)) == 20
    assert rank_items(0) == first and rank_items(0, epoch=2) != first
    monkeypatch.setenv("PL_GLOBAL_SEED", "1")
    assert rank_items(0) != first


def test_writes_from_archives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.imagenet

    val_wnids = write_fake_imagenet_archives(tmp_path / "archives", WNIDS, per_class=2)
    monkeypatch.setattr(torchvision.datasets.imagenet, "_verify_archive", lambda *args: None)  # fakes: no real md5
    manifest = shards.write_shards(tmp_path / "archives", tmp_path / "shards")
    assert manifest["classes"] == WNIDS and manifest["splits"]["val"]["images"] == 6
    val = shards.open_split(tmp_path / "shards", "val", None, WNIDS)
    assert [WNIDS[label] for _, label in val] == sorted(val_wnids)  # ImageFolder order: by class, then file


def test_writer_refuses_to_overwrite(written: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    source, out = written
    with pytest.raises(DataError, match="--force") as err:
        shards.write_shards(source, out)
    assert str(out) in str(err.value) and "\n" not in str(err.value)
    assert shards_command.main([str(source), str(out)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    write_images(source / "train" / WNIDS[0], 9, ".JPEG")  # 3 more images
    assert shards_command.main([str(source), str(out), "--force"]) == 0
    assert "3 classes, train 24 images (0 skipped), val 10 images" in capsys.readouterr().out


def test_interrupted_write_resumes(written: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    """A run that stopped after the train split (no manifest yet) keeps it and writes the rest."""
    source, out = written
    (out / shards.MANIFEST).unlink()
    shutil.rmtree(out / "val")
    (out / ".val.partial").mkdir()  # half a split from the crash
    train_chunks = {p.name: p.stat().st_mtime_ns for p in (out / "train").iterdir()}
    with caplog.at_level(logging.INFO, "roadmap.data"):
        manifest = shards.write_shards(source, out)
    assert f"{out / 'train'} is complete: kept" in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in (out / "train").iterdir()} == train_chunks
    assert manifest["splits"]["val"]["images"] == 10 and not (out / ".val.partial").exists()


def test_truncated_shard_names_the_file(written: tuple[Path, Path]) -> None:
    _, out = written
    chunk = sorted((out / "val").glob("chunk-*.bin"))[-1]
    chunk.write_bytes(chunk.read_bytes()[:-100])
    with pytest.raises(DataError) as err:
        splits(out)
    assert str(chunk) in str(err.value) and "truncated" in str(err.value) and "\n" not in str(err.value)


def test_corrupt_shard_names_the_file(written: tuple[Path, Path]) -> None:
    source, out = written
    image = source / "val" / WNIDS[0] / "gray.JPEG"  # the one image whose bytes are unique
    data = image.read_bytes()
    for chunk in sorted((out / "val").glob("chunk-*.bin")):
        content = chunk.read_bytes()
        if (at := content.find(data)) >= 0:
            middle = at + len(data) // 2
            chunk.write_bytes(content[:middle] + bytes(16) + content[middle + 16 :])  # same size, damaged bytes
            break
    else:
        pytest.fail(f"{image}'s bytes are not stored as they are")
    dm = splits(out)
    with pytest.raises(DataError) as err:
        list(dm.val_dataloader())
    message = str(err.value)
    assert str(chunk) in message and f"{WNIDS[0]}/gray.JPEG" in message and "\n" not in message


@pytest.mark.parametrize("policy", ["skip", "error"])
def test_unreadable_source_images(tmp_path: Path, policy: str) -> None:
    source = fake_imagenet(tmp_path / "imagenet")
    first = source / "train" / WNIDS[0]
    bad = write_bad_images(first, first / "img0.JPEG")
    if policy == "error":
        with pytest.raises(DataError, match="--on-bad-image skip") as err:
            shards.write_shards(source, tmp_path / "shards", on_bad_image="error")
        assert str(bad[0]) in str(err.value) and "\n" not in str(err.value)
        return
    manifest = shards.write_shards(source, tmp_path / "shards")
    assert sorted(manifest["splits"]["train"]["skipped"]) == [str(path) for path in bad]
    assert manifest["splits"]["train"]["images"] == 21


def test_format_errors(written: tuple[Path, Path]) -> None:
    source, out = written
    with pytest.raises(DataError) as err:
        splits(source, **{"data.format": "shards"})
    assert f"data.root={source}" in str(err.value) and shards.MANIFEST in str(err.value)
    with pytest.raises(DataError, match=r"data.format='tar' .*'auto', 'folder', 'shards'"):
        build_datamodule(cfg(out, **{"data.format": "tar"}), per_device_batch=4)
    with pytest.raises(DataError, match=rf"data.num_classes=4 but {out} has 3 classes"):
        splits(out, **{"data.num_classes": 4})


def test_missing_litdata(written: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    source, out = written
    monkeypatch.setitem(sys.modules, "litdata", None)  # as when it is not installed
    for step in (lambda: splits(out), lambda: shards.write_shards(source, out, force=True)):
        with pytest.raises(DataError) as err:
            step()
        assert "pip install 'roadmap[shards]'" in str(err.value) and "\n" not in str(err.value)


def test_with_workers(written: tuple[Path, Path]) -> None:
    _, out = written
    dm = splits(out, **{"data.num_workers": 2})
    seed_all(0)
    labels = torch.cat([labels for _, labels in dm.val_dataloader()])
    assert sorted(labels.tolist()) == [0] * 3 + [1] * 3 + [2] * 4


class LabelRecorder(L.LightningModule):
    """A linear model that records the labels of every training batch, per epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3 * 8 * 8, len(WNIDS))
        self.seen: dict[int, list[int]] = {}

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        self.seen.setdefault(self.current_epoch, []).extend(labels.tolist())
        return torch.nn.functional.cross_entropy(self.layer(images.flatten(1)), labels)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("workers", [0, 1])
def test_lightning_epochs_reshuffle(written: tuple[Path, Path], workers: int) -> None:
    """Through Lightning's fit loop: full batches, and each epoch its own order of the training images."""
    _, out = written
    dm = build_datamodule(cfg(out, **{"data.image_size": 8, "data.num_workers": workers}), per_device_batch=4)
    model = LabelRecorder()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    orders = [model.seen[epoch] for epoch in range(3)]
    assert all(len(order) == 20 for order in orders)  # 21 images, 5 full batches of 4
    assert orders[0] != orders[1] != orders[2]
