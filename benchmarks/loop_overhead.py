"""The cost of roadmap.run's Lightning loop: images/s of `roadmap.classifier.Classifier` under a
`lightning.Trainer` configured as `roadmap.training.train()` configures it, against a bare PyTorch loop
doing the same work on the same model and the same in-memory batches.

    python benchmarks/loop_overhead.py                      # the default experiment's model (ConvNeXt-T rung, width 0.25, 64 px, batch 64)
    python benchmarks/loop_overhead.py --width-mult 1 --batch 32        # the full-width rung
    python benchmarks/loop_overhead.py --device cuda --precision bf16 --channels-last   # as trainer=gpu

Five loops, each trial of `--steps` timed steps after one untimed step, alternated trial by trial
(medians over `--trials` trials each):

- `bare`: for each batch: MixUp/CutMix, forward, loss, zero_grad, backward, AdamW step, LR
  schedule step, EMA update (the same recipe objects the module builds).
- `lightning (as roadmap.run)`: Classifier + Trainer with roadmap.run's arguments: CSV logger,
  EpochMetrics and ModelCheckpoint callbacks, the default progress bar (written to /dev/null
  here), log_every_n_steps 20, precision 32-true (bf16-mixed with --precision bf16), and the
  TrainingDynamics callback (`trainer.diagnostics`, on by default: activation statistics every 10th
  batch, gradient and update statistics every step).
- `… diagnostics off`: the same without TrainingDynamics (`trainer.diagnostics=false`).
- `… diagnostics every batch`: TrainingDynamics measuring activations on every batch (an upper
  bound on what they cost).
- `lightning (no logger/ckpt/bar)`: the same without logger, checkpointing, progress bar and diagnostics.

A Lightning trial's time runs from the start of its second batch to the start of the batch after
the last timed one (callback timestamps), so every per-step cost of the loop is inside it and the
once-per-fit costs (setup, configure_optimizers, the end-of-epoch checkpoint) are not. The batches
are `torch.randn` tensors in a list (what a DataLoader would hand over; no data loading is timed).
The recipe's global batch is set to the batch size, so there is no gradient accumulation.
"""
from __future__ import annotations

import argparse
import copy
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from common import (
    add_device_args, autocast, interleave, print_header, print_table, quiet, setup_device, sync, verdict,
)

import lightning as L  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

import roadmap  # noqa: E402
from roadmap.diagnostics import TrainingDynamics  # noqa: E402
from roadmap.ladder import compose_run  # noqa: E402
from roadmap.classifier import Classifier  # noqa: E402
from roadmap.plan import CUDA_GRAPH_MODES, RunPlan, plan_run  # noqa: E402
from roadmap.training import build_model, build_trainer, run_callbacks  # noqa: E402


class Batches:
    """The in-memory batches as one iterable (Lightning reads a plain list as a list of loaders)."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.batches = batches

    def __iter__(self):  # noqa: ANN204
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index):  # noqa: ANN001, ANN204
        return self.batches[index]


class BatchTimes(L.Callback):
    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        sync(trainer.strategy.root_device)
        self.starts.append(time.perf_counter())


class LightningLoop:
    def __init__(self, model: torch.nn.Module, plan: RunPlan, args: argparse.Namespace, device: torch.device,
                 batches: Batches, as_run: bool, workdir: Path, diagnostics_every: int | None = None) -> None:
        recipe = OmegaConf.to_container(plan.cfg.recipe)
        self.module = Classifier(model, recipe, args.num_classes, args.batch, channels_last=args.channels_last,
                                 cuda_graphs=cuda_graphs(args))
        self.plan, self.batches, self.device, self.as_run, self.workdir = plan, batches, device, as_run, workdir
        self.diagnostics_every = diagnostics_every  # TrainingDynamics(every_n_batches); None: without it
        self.trial = 0

    def __call__(self) -> float:
        """One fit over the batches with roadmap.run's Trainer; returns the seconds of the timed steps."""
        out = self.workdir / f"trial{self.trial}"
        self.trial += 1
        timer = BatchTimes()
        changes: dict[str, Any] = dict(
            devices=[self.device.index or 0] if self.device.type == "cuda" else 1, max_epochs=1,
            limit_train_batches=len(self.batches), limit_val_batches=0)
        if self.as_run:  # roadmap.training.train()'s logger and callbacks, diagnostics every `diagnostics_every` batches
            _, callbacks = run_callbacks(self.plan, out)
            callbacks = [TrainingDynamics(self.diagnostics_every) if isinstance(c, TrainingDynamics) else c
                         for c in callbacks if self.diagnostics_every or not isinstance(c, TrainingDynamics)]
            logger: Any = [CSVLogger(save_dir=out, name="logs")]
        else:
            callbacks, logger = [], False
            changes.update(enable_checkpointing=False, enable_progress_bar=False)
        with quiet():  # Lightning's banners and warnings, the progress bar
            trainer = build_trainer(self.plan, out, [timer, *callbacks], logger, **changes)
            trainer.fit(self.module, train_dataloaders=self.batches)
        if len(timer.starts) != len(self.batches):
            raise RuntimeError(f"Lightning ran {len(timer.starts)} batches, expected {len(self.batches)}")
        return timer.starts[-1] - timer.starts[1]


def run_plan(args: argparse.Namespace, device: torch.device) -> RunPlan:
    """The roadmap.run plan of the benchmarked rung, composed as a run composes it."""
    return plan_run(compose_run([
        f"step={args.rung}", "~experiment", f"recipe={args.recipe}", f"model.width_mult={args.width_mult}",
        f"data.num_classes={args.num_classes}", f"data.image_size={args.size}", f"recipe.global_batch={args.batch}",
        f"trainer.per_device_batch={args.batch}", f"trainer.channels_last={str(args.channels_last).lower()}",
        f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}", "trainer.devices=1",
        f"trainer.precision={'bf16-mixed' if args.precision == 'bf16' else '32-true'}", "trainer.diagnostics=true",
    ]))


def cuda_graphs(args: argparse.Namespace) -> bool:
    return bool(args.compile) and args.compile_mode in CUDA_GRAPH_MODES


class BareLoop:
    def __init__(self, model: torch.nn.Module, recipe: dict, args: argparse.Namespace, device: torch.device,
                 batches: Batches) -> None:
        # The module builds the recipe's pieces (lr, AdamW groups, MixUp, loss, EMA); use the same ones.
        self.parts = Classifier(model, recipe, args.num_classes, args.batch, channels_last=args.channels_last,
                                cuda_graphs=cuda_graphs(args))
        self.model, self.ema = model, self.parts.ema
        self.optimizer = roadmap.recipe.build_optimizer(model, recipe, self.parts.lr)
        steps = len(batches) * (args.trials + 1)
        self.schedule = roadmap.recipe.build_schedule(self.optimizer, recipe, self.parts.lr, steps, steps)
        self.batches, self.args, self.device = batches, args, device

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        images = self.parts._images(images)  # channels_last; a new CUDA-graph iteration under reduce-overhead
        with autocast(self.device, self.args.precision):
            if self.parts.mixup is not None:
                images, labels = self.parts.mixup(images, labels)
            loss = self.parts.train_loss(self.model(images), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def __call__(self) -> float:
        self.model.train()
        self.step(*self.batches[0])
        sync(self.device)
        start = time.perf_counter()
        for images, labels in self.batches[1:-1]:
            self.step(images, labels)
        sync(self.device)
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rung", default="separate_downsampling", help="r50 rung (default: the ConvNeXt-T endpoint)")
    parser.add_argument("--width-mult", type=float, default=0.25, help="model.width_mult (default 0.25, as imagenette_proxy)")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--size", type=int, default=64, help="image size (default 64)")
    parser.add_argument("--batch", type=int, default=64, help="per-device batch (default 64)")
    parser.add_argument("--recipe", default="proxy", choices=("proxy", "paper"),
                        help="conf/recipe: MixUp/CutMix, EMA, drop path, AdamW from it (default proxy, as imagenette_proxy)")
    parser.add_argument("--steps", type=int, default=16, help="timed steps per trial")
    parser.add_argument("--trials", type=int, default=5, help="trials per loop")
    parser.add_argument("--channels-last", action="store_true", help="channels_last model and batches (trainer=gpu's default)")
    parser.add_argument("--no-as-run", action="store_true", help="skip the Lightning loops with logger/checkpoint/progress bar (and diagnostics)")
    add_device_args(parser)
    args = parser.parse_args(argv)
    device = setup_device(args)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    plan = run_plan(args, device)
    recipe = OmegaConf.to_container(plan.cfg.recipe)
    print_header("training-loop overhead: roadmap's Lightning loop vs a bare PyTorch loop, images/s", device, args)
    torch.manual_seed(0)
    model = build_model(plan)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    gmacs = roadmap.complexity(model, args.size)["gmacs"]
    g = torch.Generator().manual_seed(0)
    pin = device.type == "cuda"

    def batches() -> Batches:
        x = torch.randn(args.batch, 3, args.size, args.size, generator=g)
        y = torch.randint(0, args.num_classes, (args.batch,), generator=g)
        if pin:
            x, y = x.pin_memory(), y.pin_memory()
        return Batches([(x, y)] * (args.steps + 2))  # the same batch every step (MixUp mixes it in place, in every loop)

    def fresh_model() -> torch.nn.Module:
        m = copy.deepcopy(model).to(device)
        if args.compile:
            m.compile(mode=args.compile_mode)
        return m

    loops: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="roadmap-loop-") as tmp:
        loops["bare"] = BareLoop(fresh_model(), recipe, args, device, batches())
        if not args.no_as_run:
            for name, every in [("", 10), (", diagnostics off", None), (", diagnostics every batch", 1)]:
                loops[f"lightning (as roadmap.run{name})"] = LightningLoop(
                    fresh_model(), plan, args, device, batches(), True, Path(tmp), diagnostics_every=every)
        loops["lightning (no logger/ckpt/bar)"] = LightningLoop(fresh_model(), plan, args, device, batches(), False, Path(tmp))
        seconds: dict[str, list[float]] = {name: [] for name in loops}

        def run(name: str) -> None:
            seconds[name].append(loops[name]())

        start = time.perf_counter()
        interleave({name: (lambda n=name: run(n)) for name in loops}, args.trials, device, warmup=1)
        total = time.perf_counter() - start

    bare = statistics.median(seconds["bare"][1:])
    rows = []
    for name, values in seconds.items():
        timed = values[1:]  # the warm-up trial is left out
        med = statistics.median(timed)
        img_s = args.steps * args.batch / med
        ratio = bare / med
        rows.append({
            "loop": name, "img/s": img_s, "ms/step": 1e3 * med / args.steps,
            "overhead ms/step": 1e3 * (med - bare) / args.steps if name != "bare" else 0.0,
            "ratio vs bare": ratio, "trials (img/s)": " ".join(f"{args.steps * args.batch / v:.0f}" for v in timed),
            "target >= 0.95": verdict(ratio, 0.95) if name != "bare" else "",
        })
    print(f"## {args.rung} (width_mult {args.width_mult:g}, {gmacs:.3f} GMACs/img), {args.size} px, batch {args.batch}, "
          f"{args.precision}, {'channels_last' if args.channels_last else 'contiguous'}, recipe {args.recipe} "
          f"(mixup {recipe['augment']['mixup']}/cutmix {recipe['augment']['cutmix']}, EMA {recipe['ema_decay']}, "
          f"drop path {recipe['drop_path']}); {args.trials} trials x {args.steps} steps each, medians\n")
    print_table(rows, ["loop", "img/s", "ms/step", "overhead ms/step", "ratio vs bare", "trials (img/s)", "target >= 0.95"],
                {"ratio vs bare": 3, "img/s": 1, "ms/step": 1, "overhead ms/step": 1})
    if not args.no_as_run:
        on, off = seconds["lightning (as roadmap.run)"][1:], seconds["lightning (as roadmap.run, diagnostics off)"][1:]
        every = seconds["lightning (as roadmap.run, diagnostics every batch)"][1:]
        print("diagnostics cost, step time with / without TrainingDynamics (ratio of medians; per-trial ratios "
              "of the same round):")
        for name, values in [("default (activations every 10th batch)", on), ("activations every batch", every)]:
            rounds = sorted(v / o for v, o in zip(values, off))
            print(f"  {name}: {statistics.median(values) / statistics.median(off):.3f} "
                  f"(per trial {rounds[0]:.3f}-{rounds[-1]:.3f})")
    print(f"# total {total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
