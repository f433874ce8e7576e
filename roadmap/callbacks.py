"""Lightning pieces of a run: per-epoch metrics that survive a resume (metrics.csv), the run's own
state in its checkpoints (config, RNG), atomic checkpoint writes, plain progress lines for logs."""
from __future__ import annotations

import csv
import io
import logging
import random
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from roadmap.diagnostics import PREFIX as DYNAMICS_PREFIX
from roadmap.results import write_atomic
from roadmap.rundir import CONFIG_FILE, METRICS_FILE, PREVIOUS_METRICS_FILE, read_history, refresh_lock
from roadmap.tasks import TASK_CURVES

log = logging.getLogger("roadmap.run")

COLUMNS = ["epoch", "step", "lr", "train/loss", "val/loss", "val/top1", "val/top5", "val/top1_ema",
           "val/top5_ema", "img_per_s"]


def write_epoch_row(path: Path, row: dict[str, Any]) -> None:
    """Append an epoch's row to metrics.csv, rewriting it atomically (a full disk never leaves half a
    row). Rows of this epoch or later go: an attempt stopped after its last checkpoint may have
    recorded epochs that the resumed run trains again. A column the file lacks (e.g. a run resumed
    with diagnostics from one recorded without them) is added, empty in earlier rows."""
    rows: list[dict[str, str]] = []
    header: list[str] = []
    if path.is_file():
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows, header = list(reader), list(reader.fieldnames or [])
        rows = [r for r in rows if int(r["epoch"]) < int(row["epoch"])]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=header + [k for k in row if k not in header], restval="")
    writer.writeheader()
    writer.writerows([*rows, row])
    write_atomic(path, text.getvalue())


class EpochMetrics(L.Callback):
    """Appends each finished epoch to metrics.csv (rank 0) and keeps this attempt's rows."""

    def __init__(self, out_dir: Path, lock_dir: Path) -> None:
        self.path = Path(out_dir) / METRICS_FILE
        self.lock_dir = lock_dir
        self.rows: list[dict[str, Any]] = []
        self._last_refresh = time.monotonic()
        self._validated_epoch = -1  # Lightning keeps the last validation's metrics in later epochs
        self._trained_epoch = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_refresh = time.monotonic()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._trained_epoch = trainer.current_epoch
        if trainer.is_global_zero and time.monotonic() - self._last_refresh > 60:
            refresh_lock(self.lock_dir)  # tells `roadmap.status` on other hosts it is alive
            self._last_refresh = time.monotonic()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated_epoch = trainer.current_epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # No batch ran: resumed from a checkpoint taken after this epoch's batches, which an earlier
        # attempt recorded (with its training loss) already.
        if trainer.sanity_checking or not trainer.is_global_zero or self._trained_epoch != trainer.current_epoch:
            return
        logged = trainer.callback_metrics
        row: dict[str, Any] = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        sources = {"train/loss": "train/loss_epoch", "lr": "lr"}
        validated = self._validated_epoch == trainer.current_epoch
        for column in COLUMNS[2:]:
            value = logged.get(sources.get(column, column)) if validated or not column.startswith("val/") else None
            row[column] = round(float(value), 6) if value is not None else None
        row["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        for key in [k for k in logged if k in TASK_CURVES] if validated else []:  # downstream tasks, after COLUMNS
            row[key] = round(float(logged[key]), 6)
        for key in [k for k in logged if k.startswith(DYNAMICS_PREFIX)]:  # roadmap.diagnostics, in its order
            row[key] = float(f"{float(logged[key]):.6g}")
        self.rows.append(row)
        write_epoch_row(self.path, row)
        log.info("epoch %d done (optimizer step %d): %s", row["epoch"], row["step"],
                 ", ".join(f"{k} {v:.4g}" for k, v in row.items()
                           if k not in ("epoch", "step") and not k.startswith(DYNAMICS_PREFIX) and v is not None))

    def add_final_validation(self, final: dict[str, Any], optimizer_step: int) -> None:
        """Write the validation run after the fit (its last epoch had none) into the last epoch's row,
        so that the curves and the best top-1 include the model the result reports (rank 0)."""
        history = self.history()
        if not final or not history:
            return
        last = history[-1]
        if int(last["step"]) == optimizer_step:
            row = {**last, **final, "epoch": int(last["epoch"]), "step": optimizer_step}
        else:  # a schedule in steps stopped inside an epoch, which has no row
            row = {"epoch": int(last["epoch"]) + 1, "step": optimizer_step, **final}
        write_epoch_row(self.path, row)

    def history(self) -> list[dict[str, Any]]:
        """Every epoch recorded in metrics.csv (`results.read_history`), or the rows of this attempt."""
        return read_history(self.path.parent) if self.path.is_file() else self.rows


def rng_states() -> dict[str, Any]:
    """The RNG states of torch (CPU and CUDA), numpy and random, as a checkpoint can hold them."""
    numpy_state = np.random.get_state()
    rng = {"torch": torch.get_rng_state(), "python": random.getstate(),
           "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]]}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def set_rng_states(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    name, keys, *rest = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


class FirstEpochValidation(L.Callback):
    """Validate after the first epoch too (then every `check_val_every_n_epoch`), so that a run shows
    an accuracy early. The extra validation leaves the training as it would be without it: starting
    a loader draws from torch's RNG, so the RNG states are put back after it (and the checkpoint of
    that epoch holds them as a run without it would)."""

    def __init__(self) -> None:
        self.every: int | None = None
        self.saved: dict[str, Any] | None = None

    @staticmethod
    def applies(trainer: L.Trainer) -> bool:
        return trainer.check_val_every_n_epoch not in (None, 1) and int(trainer.max_epochs or 0) > 1

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 0 and self.applies(trainer):
            self.every, trainer.check_val_every_n_epoch = trainer.check_val_every_n_epoch, 1

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.every is not None:  # the last batch's states are those the validation starts from
            self.saved = rng_states()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.every is None or trainer.state.fn != "fit":
            return
        trainer.check_val_every_n_epoch, self.every = self.every, None
        # A loader with persistent workers keeps its iterator, whose start drew from the RNG: close it,
        # so the next validation starts it (and draws) where a run without this one would.
        for loader in _loaders(trainer.val_dataloaders):
            iterator = getattr(loader, "_iterator", None)
            if iterator is not None:
                getattr(iterator, "_shutdown_workers", lambda: None)()
                loader._iterator = None
        if self.saved is not None:
            set_rng_states(self.saved)
        self.saved = None


def _loaders(loaders: Any) -> list[Any]:
    """Lightning's `val_dataloaders` (one loader, or a list or dict of them) as a list."""
    if loaders is None:
        return []
    if isinstance(loaders, dict):
        return list(loaders.values())
    return list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]


class RunState(L.Callback):
    """The run's own state around Lightning's. Every checkpoint carries the run's config (so a
    checkpoint of another run is refused) and the RNG states of torch, numpy and random (so a
    resumed run draws the same data order, augmentations and drop paths as an uninterrupted one;
    checkpoints are taken at epoch ends, where the sampler starts a new order from torch's RNG).
    config.yaml is written at the run's first optimizer step, so a run that fails before it
    leaves its directory as it was; a fresh run then moves a previous attempt's metrics aside."""

    def __init__(self, work_dir: Path, config: dict[str, Any], config_text: str, fresh: bool) -> None:
        self.work_dir = Path(work_dir)
        self.config = config
        self.config_text = config_text
        self.fresh = fresh
        self.start_optimizer_step = 0
        self.loaded_optimizer_step: int | None = None
        self.committed = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start_optimizer_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if not self.committed and trainer.global_step != self.start_optimizer_step:
            self.commit(trainer)

    def commit(self, trainer: L.Trainer) -> None:
        """The run has begun (or, resumed from its final checkpoint, needs no step): write config.yaml."""
        if self.committed:
            return
        if trainer.is_global_zero:
            metrics = self.work_dir / METRICS_FILE
            if self.fresh and metrics.is_file():
                metrics.replace(self.work_dir / PREVIOUS_METRICS_FILE)
            write_atomic(self.work_dir / CONFIG_FILE, self.config_text)
        self.committed = True

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["roadmap"] = {"config": self.config, "rng": rng_states()}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self.loaded_optimizer_step = int(checkpoint["global_step"])
        rng = checkpoint.get("roadmap", {}).get("rng")
        if rng is not None:  # None: a checkpoint written before RNG states were saved
            set_rng_states(rng)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written through a temporary file in their own directory (fsync, rename): Lightning's
    default stages them in $TMPDIR and copies them across, which a full disk leaves half-written."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_atomic(Path(path), buffer.getvalue())


class PlainProgress(L.Callback):
    """One log line every `every` batches and at each epoch's last batch, for logs that are not a
    terminal (sweeps, SLURM, `> log`), where a progress bar writes thousands of carriage returns."""

    def __init__(self, every: int) -> None:
        self.every = max(1, every)
        self._last_line = (time.perf_counter(), 0)  # when the last line was printed, and the batches by then
        self._batches = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_line, self._batches = (time.perf_counter(), 0), 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._batches += 1
        total = trainer.num_training_batches
        if (batch_idx + 1) % self.every and batch_idx + 1 != total:
            return
        # The rate of this interval, not a running average: a line describes the batches since the last one.
        then, batches_then = self._last_line
        now, interval = time.perf_counter(), self._batches - batches_then
        speed = interval * len(batch[0]) * trainer.world_size / max(now - then, 1e-9)
        self._last_line = (now, self._batches)
        loss = trainer.callback_metrics.get("train/loss_step")
        log.info("epoch %d batch %d/%s optimizer step %d: loss %s, %.1f img/s over the last %d batches",
                 trainer.current_epoch, batch_idx + 1, total, trainer.global_step,
                 f"{float(loss):.4f}" if loss is not None else "-", speed, interval)


class StartupSummary(L.Callback):
    """A few lines when training starts, so that a run says at once what it is: the rung, where it
    writes, on what, how long (epochs and optimizer steps) and on which data."""

    def __init__(self, lines: list[str], first_epoch_validation: bool = False) -> None:
        self.lines = lines
        self.first_epoch_validation = first_epoch_validation

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        epochs = int(trainer.max_epochs or 0)
        total = int(trainer.estimated_stepping_batches)
        start = f", starting at optimizer step {trainer.global_step}" if trainer.global_step else ""
        every = trainer.check_val_every_n_epoch
        first = "after epoch 0, then " if self.first_epoch_validation and FirstEpochValidation.applies(trainer) else ""
        if epochs > 0:
            length = f"{epochs} epochs, {total} optimizer steps ({total // epochs} per epoch{start})"
        else:  # recipe.max_steps
            per_epoch = max(1, trainer.num_training_batches // trainer.accumulate_grad_batches)
            length = f"{total} optimizer steps (recipe.max_steps; {per_epoch} per epoch{start})"
        schedule = f"schedule: {length}; validation {first}every {every} epoch(s) and after the last"
        for line in [*self.lines, schedule]:
            log.info("%s", line)

