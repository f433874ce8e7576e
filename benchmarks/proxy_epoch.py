"""One epoch of the CPU proxy (`experiment=imagenette_proxy`) per rung: JPEGs decoded every epoch
(`data.in_memory=false`, as before) against the decoded in-memory split (`data.in_memory=true`);
and where an epoch's time goes.

    python benchmarks/proxy_epoch.py                                   # resnet50 and the ConvNeXt endpoint
    python benchmarks/proxy_epoch.py --train-batches 40 --val-batches 20   # part of an epoch (a busy machine)
    python benchmarks/proxy_epoch.py --rungs resnet50 --rounds 1 --train-batches 10 --no-profile

Each measurement is one `python -m roadmap.run step=<rung> experiment=imagenette_proxy recipe.epochs=1`
in a fresh process (its own output folder), the two settings alternating round by round (the order
reversed every other round); the table gives result.json's `wall_s` (the fit: one train epoch and one
validation of the raw model and its EMA) and its train img/s, medians over the rounds. The decoded
cache is built once first, into a temporary `data.cache_dir` (the build time is printed).

The profile times, in this process with one thread, the parts of that epoch on a sample each and
scales them to the epoch's counts: JPEG decode (`pil_loader`) or in-memory read of every train and val
image, the train transform, the eval transform, the train step (MixUp/CutMix, forward, loss, backward,
AdamW, LR schedule, EMA) over the epoch's batches, and validation (raw model and EMA).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from common import REPO, csv_list, environment, load_recipe, print_table

import roadmap  # noqa: E402
from roadmap.data import build_datamodule  # noqa: E402
from roadmap.classifier import Classifier  # noqa: E402

SETTINGS = {"files (before)": "false", "in memory (after)": "true"}


def default_data_root() -> Path:
    env = os.environ.get("ROADMAP_DATA_DIR")
    return (Path(env) if env else REPO.parent / "shared" / "data") / "imagenette2-64"


def data_config(args: argparse.Namespace, in_memory: bool) -> DictConfig:
    """The run config's `data` and `recipe` as imagenette_proxy sets them, loading in this process."""
    from roadmap.ladder import compose_run

    data = compose_run(["data=imagenette", "~experiment"]).data
    data.merge_with({"root": str(args.data_root), "cache_dir": str(args.cache_dir), "in_memory": in_memory,
                     "num_workers": 0})
    return OmegaConf.create({"data": data, "recipe": load_recipe("proxy", 128)})


def run_epoch(rung: str, in_memory: str, args: argparse.Namespace, out: Path) -> dict:
    """One fit of one epoch in a fresh process; its result.json."""
    command = [
        sys.executable, "-m", "roadmap.run", f"step={rung}", "experiment=imagenette_proxy", "recipe.epochs=1",
        f"data.root={args.data_root}", f"data.in_memory={in_memory}", f"data.cache_dir={args.cache_dir}",
        f"data.num_workers={args.workers}", f"output_root={out}", "force=true",
    ]
    if args.train_batches:
        command.append(f"trainer.limit_train_batches={args.train_batches}")
    if args.val_batches:
        command.append(f"trainer.limit_val_batches={args.val_batches}")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(next(out.rglob("result.json")).read_text())
    # CPU time of the run and its loader workers (reaped children): on a shared machine it moves far
    # less with the load than wall time does; it includes the process start (imports), alike in both.
    result["cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return result


def per_item(fn, items: list) -> float:  # noqa: ANN001
    """Median seconds per item of fn over `items` (three passes)."""
    times = []
    for _ in range(3):
        start = time.perf_counter()
        for item in items:
            fn(item)
        times.append((time.perf_counter() - start) / len(items))
    return statistics.median(times)


def profile(rung: str, args: argparse.Namespace) -> list[dict]:
    """Seconds per epoch of each part, measured on samples in this process (one thread)."""
    from roadmap.data.memory import InMemoryImages

    recipe = load_recipe("proxy", 128)
    counts, parts = {}, {}
    for in_memory in (False, True):
        dm = build_datamodule(data_config(args, in_memory), per_device_batch=64)
        dm.setup("fit")
        counts = {"train": len(dm.train_set), "val": len(dm.val_set)}
        sample = {split: list(range(0, len(ds), len(ds) // args.profile_images))[: args.profile_images]
                  for split, ds in (("train", dm.train_set), ("val", dm.val_set))}
        if isinstance(dm.train_set, InMemoryImages):
            read = per_item(dm.train_set.image, sample["train"])
            parts["in-memory read, train + val"] = read * (counts["train"] + counts["val"])
        else:
            load = per_item(lambda i: dm.train_set.loader(dm.train_set.samples[i][0]), sample["train"])
            parts["JPEG decode, train + val"] = load * (counts["train"] + counts["val"])
            images = {s: [dm.train_set.loader(ds.samples[i][0]) for i in sample[s]]
                      for s, ds in (("train", dm.train_set), ("val", dm.val_set))}
            parts["train transform (RRC, flip, RandAugment, erasing)"] = (
                per_item(dm.train_set.transform, images["train"]) * counts["train"])
            parts["eval transform (resize, crop)"] = per_item(dm.val_set.transform, images["val"]) * counts["val"]

    torch.manual_seed(0)
    model = roadmap.build_model(rung, num_classes=10, width_mult=0.25, drop_path=float(recipe["drop_path"]),
                                layer_scale=float(recipe["layer_scale"])).to(memory_format=torch.channels_last)
    module = Classifier(model, recipe, 10, 128, channels_last=True)
    optimizer = roadmap.recipe.build_optimizer(model, recipe, module.lr)
    schedule = roadmap.recipe.build_schedule(optimizer, recipe, module.lr, 1000, 100)
    images = torch.randn(64, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (64,))

    def train_step(_: object) -> None:
        x, y = module.mixup(images.clone(), labels) if module.mixup is not None else (images, labels)
        loss = module.train_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        module.ema.update_parameters(model)

    @torch.no_grad()
    def validate(_: object) -> None:
        model(images)
        module.ema(images)

    train_step(None)
    model.train()
    parts["train step (mixing, fwd, bwd, AdamW, EMA)"] = (per_item(train_step, list(range(args.profile_steps)))
                                                          * (counts["train"] // 64))
    model.eval()
    module.ema.eval()
    parts["validation (raw + EMA forward)"] = (per_item(validate, list(range(args.profile_steps)))
                                               * math.ceil(counts["val"] / 64))
    return [{"rung": rung, "part": name, "s/epoch": seconds} for name, seconds in parts.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rungs", default="resnet50,separate_downsampling", help="r50 rungs (default: the endpoints)")
    parser.add_argument("--rounds", type=int, default=2, help="epochs per rung and setting (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="data.num_workers (default 2, the former default)")
    parser.add_argument("--train-batches", type=int, default=0, help="trainer.limit_train_batches (0: the whole epoch)")
    parser.add_argument("--val-batches", type=int, default=0, help="trainer.limit_val_batches (0: the whole val split)")
    parser.add_argument("--data-root", type=Path, default=default_data_root(),
                        help="imagenette2-64 (default $ROADMAP_DATA_DIR/imagenette2-64 or ../shared/data/imagenette2-64)")
    parser.add_argument("--profile-images", type=int, default=200, help="images per sample in the profile")
    parser.add_argument("--profile-steps", type=int, default=5, help="train steps / val batches per sample in the profile")
    parser.add_argument("--no-profile", action="store_true", help="the epochs only")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rungs = csv_list(args.rungs)

    print("# one CPU proxy epoch per rung: JPEG decode per epoch vs the in-memory decoded split")
    for line in environment(torch.device("cpu"), args):
        print(f"# {line}")
    with tempfile.TemporaryDirectory(prefix="roadmap-proxy-epoch-") as tmp:
        args.cache_dir = Path(tmp) / "cache"
        start = time.perf_counter()
        build_datamodule(data_config(args, True), per_device_batch=64).setup("fit")
        print(f"# decoded cache built once in {time.perf_counter() - start:.1f} s\n", flush=True)

        results: dict[tuple[str, str], list[dict]] = {(r, s): [] for r in rungs for s in SETTINGS}
        for r in range(args.rounds):
            for rung in rungs:
                for setting in (list(SETTINGS) if r % 2 == 0 else list(reversed(SETTINGS))):
                    out = Path(tmp) / f"{rung}-{SETTINGS[setting]}-{r}"
                    results[rung, setting].append(run_epoch(rung, SETTINGS[setting], args, out))
                    print(f"#   {rung} {setting} round {r}: fit {results[rung, setting][-1]['wall_s']} s",
                          file=sys.stderr, flush=True)
        rows = []
        for rung in rungs:
            before = {key: statistics.median(x[key] for x in results[rung, "files (before)"])
                      for key in ("wall_s", "cpu_s")}
            for setting in SETTINGS:
                walls = [x["wall_s"] for x in results[rung, setting]]
                cpus = [x["cpu_s"] for x in results[rung, setting]]
                rows.append({
                    "rung": rung, "data": setting, "fit s (epoch + val)": statistics.median(walls),
                    "train img/s": statistics.median(x["train_img_per_s"] for x in results[rung, setting]),
                    "speed-up vs files": before["wall_s"] / statistics.median(walls),
                    "CPU s (process)": statistics.median(cpus),
                    "CPU speed-up vs files": before["cpu_s"] / statistics.median(cpus),
                    "rounds (wall s / CPU s)": " ".join(f"{w:.1f}/{c:.1f}" for w, c in zip(walls, cpus)),
                })
        print_table(rows, ["rung", "data", "fit s (epoch + val)", "train img/s", "speed-up vs files", "CPU s (process)",
                           "CPU speed-up vs files", "rounds (wall s / CPU s)"],
                    {"fit s (epoch + val)": 1, "train img/s": 1, "speed-up vs files": 3, "CPU s (process)": 1,
                     "CPU speed-up vs files": 3})
        if not args.no_profile:
            parts = [row for rung in rungs for row in profile(rung, args)]
            for rung in rungs:
                total = sum(p["s/epoch"] for p in parts if p["rung"] == rung and "in-memory" not in p["part"])
                for p in parts:
                    if p["rung"] == rung:
                        p["share of the files epoch"] = p["s/epoch"] / total if "in-memory" not in p["part"] else None
            print("### where one epoch's time goes (one thread, parts measured on samples, scaled to the epoch)\n")
            print_table(parts, ["rung", "part", "s/epoch", "share of the files epoch"],
                        {"s/epoch": 1, "share of the files epoch": 3})
    return 0


if __name__ == "__main__":
    sys.exit(main())
