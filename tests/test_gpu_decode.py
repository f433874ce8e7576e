"""roadmap.data.gpu_decode (data.decode_on=gpu): the CPU side everywhere, the CUDA decode where there is a GPU."""
from __future__ import annotations

import io
from pathlib import Path

import lightning as L
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder

from roadmap.data import DataError, build_datamodule
from roadmap.data import litdata_shards as shards
from roadmap.data.gpu_decode import DeviceDecode, check_decode_on
from roadmap.data.datamodule import RoadmapDataModule
from tests.test_data import augment, seed_all
from tests.test_shards import cfg, fake_imagenet

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
CPU_ONLY = {"recipe.augment.randaugment": None, "data.decode_on": "gpu", "data.image_size": 32}


def byte_datamodule(root: Path) -> RoadmapDataModule:
    """A datamodule with data.decode_on=gpu, made without build_datamodule's CUDA check (none here)."""
    config = cfg(root, **CPU_ONLY)
    dm = RoadmapDataModule(config.data, config.recipe.augment, per_device_batch=4)
    dm.setup("fit")
    return dm


def test_gpu_decode_without_cuda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DataError) as err:
        build_datamodule(cfg(tmp_path, **CPU_ONLY), per_device_batch=4)
    assert str(err.value) == "data.decode_on=gpu needs CUDA, which is not available here; use data.decode_on=cpu."


def test_decode_and_augment_on_gpu_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU decode feeds the GPU augmentation: RandAugment is no longer a reason to refuse it."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    config = cfg(fake_imagenet(tmp_path / "imagenet"), **{"data.decode_on": "gpu", "data.augment_on": "gpu"})
    assert config.recipe.augment.randaugment
    assert build_datamodule(config, per_device_batch=4).batch_augment is not None


@pytest.mark.parametrize("overrides, message", [
    ({"decode_on": "tpu"}, r"data.decode_on='tpu' is not a choice; use one of \('cpu', 'gpu'\)"),
    ({"decode_on": "gpu"}, r"recipe.augment.randaugment='rand-m9-mstd0.5-inc1' runs on CPU-decoded"),
    ({"decode_on": "gpu", "in_memory": True}, "data.in_memory=true the decoded pixels"),
])
def test_decode_on_checks(overrides: dict, message: str) -> None:
    data = {"name": "imagenet", "in_memory": "auto", **overrides}
    with pytest.raises(DataError, match=message):
        check_decode_on(data, augment(), cuda=True)
    assert check_decode_on({"name": "imagenet"}, augment(), cuda=False) == "cpu"  # the default


@pytest.mark.parametrize("layout", ["folder", "shards"])
def test_workers_return_bytes(tmp_path: Path, layout: str) -> None:
    """The loader gives the files' bytes as they are (a list per batch) and the labels."""
    source = fake_imagenet(tmp_path / "imagenet")
    root = source
    if layout == "shards":
        root = tmp_path / "shards"
        shards.write_shards(source, root)
    dm = byte_datamodule(root)
    data, labels = next(iter(dm.val_dataloader()))
    expected = ImageFolder(str(source / "val")).samples[:4]  # unshuffled, in ImageFolder order
    assert [bytes(d.numpy()) for d in data] == [Path(path).read_bytes() for path, _ in expected]
    assert labels.tolist() == [label for _, label in expected] and all(d.dtype == torch.uint8 for d in data)


def test_decode_on_the_cpu_device_matches_the_cpu_transform(tmp_path: Path) -> None:
    """DeviceDecode's eval path (torchvision decode, tensor resize + crop) against the PIL eval transform."""
    source = fake_imagenet(tmp_path / "imagenet")
    dm = byte_datamodule(source)
    pil = RoadmapDataModule(cfg(source, **{"data.image_size": 32}).data, augment(), per_device_batch=4)
    pil.setup("fit")
    dm.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    for (data, labels), (expected, expected_labels) in zip(dm.val_dataloader(), pil.val_dataloader(), strict=True):
        images, out_labels = dm.on_before_batch_transfer((data, labels), 0)  # not training: the eval path
        assert images.shape == expected.shape == (len(data), 3, 32, 32) and torch.equal(out_labels, expected_labels)
        assert (images - expected).abs().mean() < 0.02  # JPEG decoders and resize kernels differ slightly


def test_decoded_canvases_are_the_workers_canvases(tmp_path: Path) -> None:
    """DeviceDecode.canvases (decode_on=gpu feeding augment_on=gpu) against SourceTransform in the workers:
    the same image sizes, pixels within the decoders' and resize kernels' differences."""
    from roadmap.data.gpu_transforms import SourceTransform

    data = [jpeg_bytes((97, 81)), jpeg_bytes((50, 120)), jpeg_bytes((20, 30)), jpeg_bytes((300, 200))]
    canvases, sizes = DeviceDecode(32, augment(), torch.device("cpu")).canvases(data)
    source = SourceTransform(32, augment())
    expected, expected_sizes = zip(*(source(Image.open(io.BytesIO(bytes(d.numpy()))).convert("RGB")) for d in data))
    assert canvases.shape == (4, 3, 36, 36) and canvases.dtype == torch.uint8 and sizes.device.type == "cpu"
    assert torch.equal(sizes, torch.stack(expected_sizes))
    assert (canvases.float() - torch.stack(expected).float()).abs().mean() < 3  # grey levels of 255


def test_datamodule_decodes_then_augments_training_batches(tmp_path: Path) -> None:
    """decode_on=gpu + augment_on=gpu with RandAugment, on CPU tensors: bytes -> canvases before the transfer,
    the batch augmentation after it; validation batches take the decode's eval path."""
    config = cfg(fake_imagenet(tmp_path / "imagenet"), **{"data.decode_on": "gpu", "data.augment_on": "gpu",
                                                          "data.image_size": 32})
    dm = RoadmapDataModule(config.data, config.recipe.augment, per_device_batch=4)
    dm.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    dm.setup("fit")
    assert dm.batch_augment is not None and dm.batch_augment.rand_augment is not None
    dm.trainer.training = True
    data, labels = next(iter(dm.train_dataloader()))
    (canvases, sizes), same = dm.on_before_batch_transfer((data, labels), 0)
    assert canvases.shape == (4, 3, 36, 36) and canvases.dtype == torch.uint8 and same is labels
    images, _ = dm.on_after_batch_transfer(((canvases, sizes), labels), 0)
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32 and images.std() > 0.1
    dm.trainer.validating = True
    images, _ = dm.on_before_batch_transfer(next(iter(dm.val_dataloader())), 0)
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32


def jpeg_bytes(size: tuple[int, int]) -> torch.Tensor:
    buffer = io.BytesIO()
    Image.linear_gradient("L").convert("RGB").resize(size).save(buffer, format="JPEG")
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def test_train_crops() -> None:
    data = [jpeg_bytes((97, 81)), jpeg_bytes((50, 120)), jpeg_bytes((64, 64)), jpeg_bytes((300, 200))]
    decode = DeviceDecode(32, augment(), torch.device("cpu"))
    seed_all(0)
    first = decode(data, train=True)
    seed_all(0)
    assert torch.equal(decode(data, train=True), first)  # crops and flips from torch's generator, erasing python's
    assert first.shape == (4, 3, 32, 32) and first.dtype == torch.float32
    assert not torch.equal(decode(data, train=True), first)


@pytest.mark.gpu
@needs_cuda
def test_gpu_decode_matches_cpu_decode(tmp_path: Path) -> None:
    source = fake_imagenet(tmp_path / "imagenet")
    data, _ = next(iter(byte_datamodule(source).val_dataloader()))
    on_gpu = DeviceDecode(32, augment(), torch.device("cuda"))(data, train=False)
    on_cpu = DeviceDecode(32, augment(), torch.device("cpu"))(data, train=False)
    assert on_gpu.device.type == "cuda" and (on_gpu.cpu() - on_cpu).abs().mean() < 0.02
    train = DeviceDecode(32, augment(), torch.device("cuda"))(data, train=True)
    assert train.shape == (4, 3, 32, 32) and train.device.type == "cuda"


@pytest.mark.gpu
@needs_cuda
def test_gpu_decode_feeds_gpu_augmentation(tmp_path: Path) -> None:
    from roadmap.data.gpu_transforms import BatchAugment

    data, _ = next(iter(byte_datamodule(fake_imagenet(tmp_path / "imagenet")).val_dataloader()))
    canvases, sizes = DeviceDecode(32, augment(), torch.device("cuda")).canvases(data)
    on_cpu, _ = DeviceDecode(32, augment(), torch.device("cpu")).canvases(data)
    assert canvases.device.type == "cuda" and (canvases.cpu().float() - on_cpu.float()).abs().mean() < 3
    images = BatchAugment(32, augment())(canvases, sizes)
    assert images.shape == (4, 3, 32, 32) and images.device.type == "cuda"
