"""Training input pipeline, images/s per worker: PIL decode + `roadmap.data.build_train_transform`
with the paper recipe's augmentation, against timm's `create_transform` with the same settings.

    python benchmarks/input_pipeline.py                 # 64 px (imagenette2-64) and 224 px
    python benchmarks/input_pipeline.py --sizes 64 --rounds 20
    python benchmarks/input_pipeline.py --gpu-path cuda   # the GPU path's batch part on a GPU

A second table compares the CPU path (the `roadmap` pipeline above: decode + transform per image)
with the GPU path (`data.augment_on=gpu`): per image, decode + `SourceTransform` (the workers' part),
then `BatchAugment` on the chunk as one batch on `--gpu-path` (cpu by default: CPU tensors, one
thread; cuda: synchronized before the clock stops). Its rounds interleave with the others, on the
same chunks; the ratio is GPU path / CPU path, both per process.
    python benchmarks/input_pipeline.py --gpu-decode         # + data.decode_on=gpu's batch decode on CUDA

One process, one thread (torch.set_num_threads(1), as in a DataLoader worker), no DataLoader: for
each image, open + decode + convert to RGB (torchvision's pil_loader, as roadmap's ImageFolder),
then the transform. The two pipelines take turns on chunks of `--chunk` images; before each
chunk python's, numpy's and torch's generators are seeded alike, so both draw the same crops,
flips, RandAugment ops and erasing (the same work). Medians over `--rounds` chunks each.

Images: 64 px from <data-root>/imagenette2-64/train (64 x 64 JPEGs, every n-th file over all
classes); 224 px: the same images upscaled (bicubic) to `--source-size` px JPEGs (quality 90) in a
temporary folder, so decoding costs what a 224 px photo costs.

timm's RandAugment posterize raises ValueError on Pillow >= 13 when it asks for 0 bits
(magnitudes >= 10, which m9-mstd0.5 reaches for ~0.2% of images; roadmap.data patches its own
copy). An image whose transform raises is counted as skipped, in either pipeline, and left out of
the images of the chunk (its time stays in).

`--gpu-decode` adds a second table: `roadmap.data.gpu_decode.DeviceDecode` (data.decode_on=gpu: one
batched `decode_jpeg` on `--decode-device`, then RandomResizedCrop, flip, Normalize and RandomErasing
there) on batches of `--gpu-batch` JPEGs already in memory, against one CPU worker doing the same ops
(PIL decode + `build_train_transform` without RandAugment, which the decode alone does not do), taking
turns round by round; the ratio is how many CPU workers one GPU decode stands for. The last column is
the decode feeding the GPU augmentation (data.decode_on=gpu with data.augment_on=gpu: canvases, then
`BatchAugment` with the whole recipe, RandAugment included). Without CUDA it
prints "not run" (`--decode-device cpu` tries the path on the CPU).
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common import REPO, environment, load_recipe, print_table, verdict

from roadmap.data import build_train_transform  # noqa: E402
from roadmap.data.gpu_transforms import BatchAugment, SourceTransform  # noqa: E402
from torchvision.datasets.folder import pil_loader  # noqa: E402


def default_data_root() -> Path:
    env = os.environ.get("ROADMAP_DATA_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data"


def timm_transform(size: int, aug: dict):
    from timm.data import create_transform

    return create_transform(
        input_size=size, is_training=True, scale=tuple(aug["scale"]), ratio=tuple(aug["ratio"]),
        hflip=float(aug["hflip"]), vflip=0.0, color_jitter=float(aug["color_jitter"]),
        auto_augment=aug["randaugment"], interpolation=aug["interpolation"],
        mean=tuple(aug["mean"]), std=tuple(aug["std"]), re_prob=float(aug["random_erasing"]),
        re_mode=aug["random_erasing_mode"], re_count=int(aug["random_erasing_count"]),
    )


def pick_images(folder: Path, count: int) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise SystemExit(f"no images under {folder}; pass --data-root (the folder holding imagenette2-64/)")
    step = max(1, len(files) // count)
    return files[::step][:count]


def upscale(files: list[Path], size: int, out: Path) -> list[Path]:
    made = []
    for i, f in enumerate(files):
        img = pil_loader(str(f)).resize((size, size), Image.BICUBIC)
        path = out / f"{i:05d}.jpg"
        img.save(path, quality=90)
        made.append(path)
    return made


class Pipeline:
    def __init__(self, transform) -> None:  # noqa: ANN001
        self.transform = transform
        self.skipped = 0

    def chunk(self, files: list[Path], seed: int) -> tuple[float, int]:
        """Seconds and completed images for one chunk."""
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        done = 0
        start = time.perf_counter()
        for f in files:
            try:
                self.transform(pil_loader(str(f)))
                done += 1
            except ValueError:  # timm's posterize at 0 bits on Pillow >= 13
                self.skipped += 1
        return time.perf_counter() - start, done


class BatchPipeline:
    """The GPU path on a chunk: the workers' part per image, then the chunk as one batch on `device`."""

    def __init__(self, size: int, aug: dict, device: torch.device) -> None:
        self.source = SourceTransform(size, aug)
        self.augment = BatchAugment(size, aug)
        self.device = device
        self.skipped = 0
        self.worker_s: list[float] = []
        self.batch_s: list[float] = []

    def chunk(self, files: list[Path], seed: int) -> tuple[float, int]:
        torch.manual_seed(seed)
        start = time.perf_counter()
        canvases, sizes = zip(*(self.source(pil_loader(str(f))) for f in files))
        batch, sizes = torch.stack(canvases).to(self.device), torch.stack(sizes).to(self.device)
        middle = time.perf_counter()
        self.augment(batch, sizes)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        end = time.perf_counter()
        self.worker_s.append(middle - start)
        self.batch_s.append(end - middle)
        return end - start, len(files)


def gpu_decode_row(files: list[Path], size: int, src: str, aug: dict, args: argparse.Namespace) -> dict | None:
    """DeviceDecode img/s on --decode-device against one CPU worker with the same ops, and the decode feeding
    the GPU augmentation with the whole recipe (data.augment_on=gpu: canvases + BatchAugment); None without CUDA."""
    from roadmap.data.gpu_decode import DeviceDecode, read_bytes
    from roadmap.data.gpu_transforms import BatchAugment

    device = torch.device(args.decode_device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return None
    same_ops = {**aug, "randaugment": None, "color_jitter": 0.0}
    decode, cpu = DeviceDecode(size, same_ops, device), Pipeline(build_train_transform(size, same_ops))
    augment = BatchAugment(size, aug)
    data = [read_bytes(str(f)) for f in files]
    batch_of = lambda r: [data[(r * args.gpu_batch + i) % len(data)] for i in range(args.gpu_batch)]  # noqa: E731

    def on_device(batch: list[torch.Tensor], then_augment: bool = False) -> float:
        start = time.perf_counter()
        if then_augment:
            augment(*decode.canvases(batch))
        else:
            decode(batch, train=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return len(batch) / (time.perf_counter() - start)

    on_device(batch_of(0))  # warm-up: nvjpeg handles, kernels
    on_device(batch_of(0), then_augment=True)
    cpu.chunk(files[: args.chunk], seed=0)
    times: dict[str, list[float]] = {"device": [], "augment": [], "cpu": []}
    for r in range(args.rounds):
        chunk = [files[(r * args.chunk + i) % len(files)] for i in range(args.chunk)]
        for part in (("device", "augment", "cpu") if r % 2 == 0 else ("cpu", "augment", "device")):
            if part == "cpu":
                seconds, done = cpu.chunk(chunk, seed=r)
                times["cpu"].append(done / seconds)
            else:
                times[part].append(on_device(batch_of(r), then_augment=part == "augment"))
    ours, chained, ref = (statistics.median(times[k]) for k in ("device", "augment", "cpu"))
    return {"size": size, "source": src, "device": str(device), "batch": args.gpu_batch, "decode img/s": ours,
            "1 CPU worker img/s": ref, "ratio (CPU workers)": ours / ref, "decode + GPU augment img/s": chained}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="64,224", help="training image sizes (default 64,224)")
    parser.add_argument("--data-root", type=Path, default=default_data_root(),
                        help="folder holding imagenette2-64/ (default $ROADMAP_DATA_DIR or ../shared/data)")
    parser.add_argument("--images", type=int, default=400, help="distinct source images (default 400)")
    parser.add_argument("--source-size", type=int, default=224, help="side of the upscaled JPEGs for sizes > 64")
    parser.add_argument("--chunk", type=int, default=100, help="images per timed chunk")
    parser.add_argument("--rounds", type=int, default=40, help="chunks per pipeline and size")
    parser.add_argument("--recipe", default="paper", choices=("paper", "proxy"),
                        help="conf/recipe/<name>.yaml for the augmentation (default paper)")
    parser.add_argument("--gpu-path", default="cpu",
                        help="device of the GPU path's batch part: cpu (CPU tensors), cuda, or none to leave it out")
    parser.add_argument("--gpu-decode", action="store_true", help="also time data.decode_on=gpu's DeviceDecode")
    parser.add_argument("--decode-device", default="cuda", help="device for --gpu-decode (default cuda)")
    parser.add_argument("--gpu-batch", type=int, default=256, help="JPEGs per batch for --gpu-decode (default 256)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    aug = load_recipe(args.recipe, 128)["augment"]
    print("# training input pipeline: decode + transform, images/s per worker (1 process, 1 thread)")
    for line in environment(torch.device("cpu"), args):
        print(f"# {line}")
    print(f"# augmentation (recipe {args.recipe}): RandomResizedCrop {aug['interpolation']} scale {aug['scale']}, "
          f"hflip {aug['hflip']}, RandAugment {aug['randaugment']}, RandomErasing {aug['random_erasing']} "
          f"({aug['random_erasing_mode']}), Normalize\n")
    source = pick_images(args.data_root / "imagenette2-64" / "train", args.images)

    rows, path_rows, decode_rows = [], [], []
    with tempfile.TemporaryDirectory(prefix="roadmap-pipeline-") as tmp:
        for size in [int(s) for s in args.sizes.split(",") if s]:
            files = source
            if size > 64:
                files = upscale(source, args.source_size, Path(tmp))
                src = f"{args.source_size}x{args.source_size} JPEG (upscaled)"
            else:
                src = "64x64 JPEG (imagenette2-64)"
            pipes = {"roadmap": Pipeline(build_train_transform(size, aug)), "timm": Pipeline(timm_transform(size, aug))}
            if args.gpu_path != "none":
                pipes["gpu path"] = BatchPipeline(size, aug, torch.device(args.gpu_path))
            times: dict[str, list[float]] = {name: [] for name in pipes}
            for name, p in pipes.items():  # warm-up: imports, first-call costs
                p.chunk(files[: args.chunk], seed=-1 % 2**32)
                p.skipped = 0
            if "gpu path" in pipes:
                pipes["gpu path"].worker_s.clear()
                pipes["gpu path"].batch_s.clear()
            for r in range(args.rounds):
                chunk = [files[(r * args.chunk + i) % len(files)] for i in range(args.chunk)]
                for name in (pipes if r % 2 == 0 else reversed(list(pipes))):
                    seconds, done = pipes[name].chunk(chunk, seed=r)
                    times[name].append(done / seconds)
            ours, ref = statistics.median(times["roadmap"]), statistics.median(times["timm"])
            paired = [a / b for a, b in zip(times["roadmap"], times["timm"])]  # the same chunk, same round
            rows.append({
                "size": size, "source": src, "roadmap img/s": ours, "timm img/s": ref, "ratio roadmap/timm": ours / ref,
                "per-chunk ratios p10-p90": f"{np.percentile(paired, 10):.3f}-{np.percentile(paired, 90):.3f}",
                "ms/img roadmap": 1e3 / ours, "ms/img timm": 1e3 / ref,
                "skipped roadmap/timm": f"{pipes['roadmap'].skipped}/{pipes['timm'].skipped} of {args.rounds * args.chunk}",
                "target >= 1.0": verdict(ours / ref, 1.0, np.percentile(paired, 10), np.percentile(paired, 90)),
            })
            if "gpu path" in pipes:
                batch = pipes["gpu path"]
                gpu = statistics.median(times["gpu path"])
                paired = [a / b for a, b in zip(times["gpu path"], times["roadmap"])]
                path_rows.append({
                    "size": size, "batch device": args.gpu_path, "CPU path img/s": ours, "GPU path img/s": gpu,
                    "ratio GPU/CPU path": gpu / ours,
                    "per-chunk ratios p10-p90": f"{np.percentile(paired, 10):.3f}-{np.percentile(paired, 90):.3f}",
                    "workers' part img/s": args.chunk / statistics.median(batch.worker_s),
                    "batch part img/s": args.chunk / statistics.median(batch.batch_s),
                })
            if args.gpu_decode and (row := gpu_decode_row(files, size, src, aug, args)) is not None:
                decode_rows.append(row)
            print(f"#   {size} px done", file=sys.stderr, flush=True)
    print_table(rows, ["size", "source", "roadmap img/s", "timm img/s", "ratio roadmap/timm", "per-chunk ratios p10-p90",
                       "ms/img roadmap",
                       "ms/img timm", "skipped roadmap/timm", "target >= 1.0"],
                {"ratio roadmap/timm": 3, "roadmap img/s": 0, "timm img/s": 0})
    if path_rows:
        print(f"# data.augment_on: CPU path (decode + transform per image) against GPU path (decode + canvas per image, "
              f"then BatchAugment on chunks of {args.chunk} on {args.gpu_path}), images/s per process\n")
        print_table(path_rows, list(path_rows[0]), {"ratio GPU/CPU path": 3, "CPU path img/s": 0, "GPU path img/s": 0,
                                                    "workers' part img/s": 0, "batch part img/s": 0})
    if args.gpu_decode:
        print(f"# data.decode_on=gpu: DeviceDecode on {args.decode_device} (batches of {args.gpu_batch} JPEGs in "
              "memory) against one CPU worker with the same ops (decode, RandomResizedCrop, flip, Normalize, erasing)\n")
        if decode_rows:
            print_table(decode_rows, ["size", "source", "device", "batch", "decode img/s", "1 CPU worker img/s",
                                      "ratio (CPU workers)", "decode + GPU augment img/s"],
                        {"decode img/s": 0, "1 CPU worker img/s": 0, "decode + GPU augment img/s": 0})
        else:
            print(f"GPU decode: not run (no CUDA for --decode-device {args.decode_device})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
