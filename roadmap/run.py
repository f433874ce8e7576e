"""`python -m roadmap.run step=<rung> [experiment=…] [key=value …]`: train one rung.

Writes <output_root>/<experiment>/<regime>/<step>/seed<k>/: config.yaml (resolved), last.ckpt,
metrics.csv (one row per epoch), logs/, run.log, and result.json once the run has completed,
failed or been interrupted. The same command again resumes from last.ckpt, or skips a completed
run. Everything is checked before anything is written; each fault is one line on stderr
(HYDRA_FULL_ERROR=1 adds the traceback; run.log always has it).
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import platform
import shlex
import shutil
import signal
import sys
import time
import traceback
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from roadmap.data import DataError, augment_on, decode_on
from roadmap.ladder import LadderError, arch_config, conf_dir, rung_argv
from roadmap.model import factory
from roadmap.model.config import ArchConfig
from roadmap.recipe import check_optimizer
from roadmap.results import (
    CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, RESULT_FILE, acquire_lock, config_hash, git_commit, read_result,
    recorded_config_hash, release_lock, run_state, train_loss_sum, write_result,
)
from roadmap.signals import Interrupted, exit_by_signal, raise_on_signals

if TYPE_CHECKING:
    import lightning as L

    from roadmap.callbacks import EpochMetrics, RunState

log = logging.getLogger("roadmap.run")
trace_log = logging.getLogger("roadmap.run.trace")  # tracebacks: run.log only (stderr gets one line)
trace_log.propagate = False

RERUN_DIR = "rerun"  # a forced rerun of a completed run trains here; its files replace the old ones once it completes
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's, as on the console
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
# trainer.per_device_batch=auto's ceiling per device kind: conf/trainer/gpu.yaml's and cpu.yaml's
# per_device_batch (tests/test_run.py checks they agree).
AUTO_PER_DEVICE_BATCH = {"gpu": 128, "cpu": 64}
# torch.compile's modes (trainer.compile_mode); those that capture CUDA graphs on a GPU.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
# Integer keys and their smallest valid value (data.image_size is checked against the rung's stride).
INTEGER_KEYS = {"recipe.epochs": 1, "recipe.global_batch": 1, "trainer.per_device_batch": 1, "trainer.devices": 1,
                "trainer.num_nodes": 1, "data.image_size": 1, "data.num_classes": 1,
                "seed": 0, "trainer.log_every_n_steps": 1, "trainer.check_val_every_n_epoch": 1}
# Non-negative numbers; those marked True may be null.
NUMBER_KEYS = {"recipe.optimizer.base_lr": False, "recipe.optimizer.weight_decay": False,
               "recipe.optimizer.normalized_weight_decay": True}


class RunConfigError(ValueError):
    """The run's configuration cannot work (names the key, the value and what is valid)."""


class CheckpointError(RuntimeError):
    """last.ckpt cannot be read or belongs to another run: never silently restart from zero over it."""


@dataclass
class RunPlan:
    cfg: DictConfig  # resolved; `model` holds the rung's full ArchConfig (builder), trainer "auto"s are filled in
    arch: ArchConfig | None  # None: the regime's model comes from another factory (`model._target_`)
    out_dir: Path
    devices: int
    accumulate: int
    config_hash: str

    @property
    def num_classes(self) -> int:
        return int(self.cfg.model.get("num_classes", self.cfg.data.num_classes))


def _resolve_auto_trainer(trainer: DictConfig) -> None:
    cuda = torch.cuda.is_available()
    if trainer.accelerator == "auto":
        trainer.accelerator = "gpu" if cuda else "cpu"
    if trainer.precision == "auto":
        trainer.precision = "bf16-mixed" if cuda and torch.cuda.is_bf16_supported() else "32-true"
    if trainer.devices == "auto":
        trainer.devices = torch.cuda.device_count() if trainer.accelerator == "gpu" else 1


def _resolve_auto_batch(cfg: DictConfig) -> None:
    """trainer.per_device_batch=auto (trainer=auto's default): the largest batch that divides the
    global batch, up to what trainer=gpu / trainer=cpu set (a small model fills a GPU only with
    large batches; a CPU gains nothing beyond 64). A preset or the command line may set it instead."""
    trainer = cfg.trainer
    if trainer.per_device_batch != "auto":
        return
    limit = AUTO_PER_DEVICE_BATCH["gpu" if trainer.accelerator == "gpu" else "cpu"]
    valid = valid_per_device_batches(int(cfg.recipe.global_batch), int(trainer.devices) * int(trainer.num_nodes))
    fits = [b for b in valid if b <= limit and (b % 2 == 0 or not _mixing(cfg))]
    trainer.per_device_batch = max(fits, default=valid[0] if valid else 1)  # plan_run names a bad global batch


def _check_integers(cfg: DictConfig) -> None:
    for key, minimum in INTEGER_KEYS.items():
        value = OmegaConf.select(cfg, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise RunConfigError(f"{key}={value!r} must be an integer >= {minimum}")


def _check_numbers(cfg: DictConfig) -> None:
    for key, nullable in NUMBER_KEYS.items():
        value = OmegaConf.select(cfg, key)
        if value is None and nullable:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise RunConfigError(f"{key}={value!r} must be a number >= 0" + (" or null" if nullable else ""))
    try:
        check_optimizer(cfg.recipe.optimizer)
    except ValueError as error:
        raise RunConfigError(str(error)) from None


def _mixing(cfg: DictConfig) -> bool:
    return float(cfg.recipe.augment.mixup) > 0 or float(cfg.recipe.augment.cutmix) > 0


def compile_mode(cfg: DictConfig) -> str:
    """trainer.compile_mode (torch.compile's `mode` under trainer.compile=true); runs recorded before it existed: default."""
    return str(cfg.trainer.get("compile_mode", "default"))


def valid_per_device_batches(global_batch: int, devices: int) -> list[int]:
    """The per-device batches that divide the global batch over `devices` (x nodes) devices."""
    return [b for b in range(1, global_batch // devices + 1) if global_batch % (b * devices) == 0]


def plan_run(cfg: DictConfig) -> RunPlan:
    """Resolve and check a run's config (composed with its deltas: `ladder.compose_run`, or
    `roadmap.run`'s command line) without touching the disk."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    trainer = cfg.trainer
    _resolve_auto_trainer(trainer)
    _resolve_auto_batch(cfg)
    _check_integers(cfg)
    _check_numbers(cfg)
    if compile_mode(cfg) not in COMPILE_MODES:
        raise RunConfigError(f"trainer.compile_mode={compile_mode(cfg)!r} is not a torch.compile mode; valid: "
                             f"{list(COMPILE_MODES)}")
    arch = _check_model(cfg)
    devices, nodes = int(trainer.devices), int(trainer.num_nodes)
    per_device, global_batch = int(trainer.per_device_batch), int(cfg.recipe.global_batch)
    per_step = per_device * devices * nodes
    if global_batch % per_step:
        raise RunConfigError(
            f"recipe.global_batch={global_batch} is not a multiple of trainer.per_device_batch={per_device} x "
            f"trainer.devices={devices} x trainer.num_nodes={nodes} = {per_step}; valid per_device_batch "
            f"values here: {valid_per_device_batches(global_batch, devices * nodes)[-8:]}"
        )
    if _mixing(cfg) and per_device % 2:
        raise RunConfigError(f"trainer.per_device_batch={per_device} must be even with MixUp/CutMix (timm pairs images)")
    if arch is not None:
        cfg.model = {"_target_": factory.BUILDER, **asdict(arch)}  # every builder field, as the builder reads it
    return RunPlan(cfg, arch, Path(cfg.output_dir), devices, global_batch // per_step, config_hash(cfg))


def _check_model(cfg: DictConfig) -> ArchConfig | None:
    """The rung's ArchConfig, checked against the image size; None for another factory (only found
    here: its arguments are checked when `build_parts` calls it, before anything is written)."""
    try:
        if not factory.is_builder(cfg.model):
            factory.check(cfg.model)
            return None
        arch = arch_config(cfg.model, f"rung {cfg.regime.name}/{cfg.step}")
    except (LadderError, factory.FactoryError) as error:
        raise RunConfigError(str(error)) from error
    stride = 4 * 2 ** (len(arch.depths) - 1)  # the stem's 4, then 2 per later stage
    if cfg.data.image_size < stride:
        raise RunConfigError(f"data.image_size={cfg.data.image_size} is smaller than the rung's total stride "
                             f"{stride} (its last stage would have no pixels); use data.image_size >= {stride}")
    return arch


def _is_rank_zero() -> bool:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def check_directory(plan: RunPlan) -> str:
    """"skip" (completed, same config), "rerun" (completed, force=true: trained aside, see RERUN_DIR),
    "resume", "fresh"; raises on a different config (`results.run_state`: conflict)."""
    out = plan.out_dir
    read_result(out)  # an invalid result.json is an error naming it, never overwritten
    state = run_state(out, plan.config_hash)
    if state == "conflict":
        raise RunConfigError(
            f"{out} holds a run with a different config (config_hash {recorded_config_hash(out)}, this one "
            f"{plan.config_hash}); nothing was changed there. Use another experiment_name, seed or "
            f"output_root, or remove that directory to replace it (compare with its {CONFIG_FILE})."
        )
    if state == "done":
        return "rerun" if plan.cfg.force else "skip"
    if (out / CHECKPOINT_FILE).is_file() and not plan.cfg.force:
        return "resume"
    return "fresh"


@dataclass
class Parts:
    """What a run is built from, made before anything is written: a model or data that cannot work
    is an error of the command, not of the run."""

    model: torch.nn.Module
    datamodule: Any
    params: int
    gmacs: float
    gmacs_224: float


def build_parts(plan: RunPlan) -> Parts:
    from lightning.fabric.utilities.seed import seed_everything

    from roadmap.data import build_datamodule
    from roadmap.model.complexity import complexity

    cfg = plan.cfg
    seed_everything(int(cfg.seed), workers=True)
    model = build_model(plan)
    try:
        counts = complexity(model, int(cfg.data.image_size))
    except RuntimeError as error:  # e.g. a foreign model's last stage has no pixels left
        raise RunConfigError(f"model._target_={factory.target(cfg.model)} cannot take {cfg.data.image_size}px "
                             f"images (data.image_size): {str(error).splitlines()[0]}") from error
    gmacs_224 = complexity(model, 224)["gmacs"]
    if cfg.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.trainer.compile:
        model.compile(mode=compile_mode(cfg))
    datamodule = build_datamodule(cfg, per_device_batch=int(cfg.trainer.per_device_batch))
    if _is_rank_zero():  # other DDP ranks start once rank 0 has checked (and downloaded) the data
        datamodule.prepare_data()
        datamodule.setup("fit")
    return Parts(model, datamodule, counts["params"], counts["gmacs"], gmacs_224)


def build_model(plan: RunPlan) -> torch.nn.Module:
    """The rung's model: roadmap's builder from the plan's ArchConfig, or the regime's factory."""
    from roadmap.model.net import RoadmapNet

    if plan.arch is not None:
        return RoadmapNet(plan.arch)
    try:
        return factory.build(OmegaConf.to_container(plan.cfg.model))
    except factory.FactoryError as error:
        raise RunConfigError(str(error)) from error


def verify_checkpoint(path: Path, plan: RunPlan, model: torch.nn.Module) -> None:
    """last.ckpt must be readable and this run's: its stored config has this run's hash (older
    checkpoints without one: its weights fit this rung)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure to read it is reported the same way
        raise CheckpointError(
            f"cannot read checkpoint {path} ({type(error).__name__}: {error}). It is left as it is: "
            f"move it away to restart this run from zero, or rerun with force=true."
        ) from error
    if "state_dict" not in state or "global_step" not in state:
        raise CheckpointError(f"{path} is not a roadmap/Lightning checkpoint (no state_dict/global_step)")
    move_away = "It is left as it is: move it away to start this run from zero, or rerun with force=true."
    saved = state.get("roadmap", {}).get("config")
    if saved is not None and config_hash(OmegaConf.create(saved)) != plan.config_hash:
        raise CheckpointError(
            f"{path} belongs to another run (step={saved.get('step')} seed={saved.get('seed')} "
            f"config_hash {config_hash(OmegaConf.create(saved))}; this run: step={plan.cfg.step} "
            f"seed={plan.cfg.seed} config_hash {plan.config_hash}). {move_away}"
        )
    expected = {k: v.shape for k, v in model.state_dict().items()}
    found = {k.removeprefix("model."): v.shape for k, v in state["state_dict"].items() if k.startswith("model.")}
    if found != expected:
        raise CheckpointError(f"{path} holds the weights of another model than step={plan.cfg.step}. {move_away}")


def _build_loggers(plan: RunPlan) -> list[Any]:
    from lightning.pytorch.loggers import CSVLogger

    loggers: list[Any] = [CSVLogger(save_dir=plan.out_dir, name="logs")]
    if plan.cfg.logger.wandb:
        from roadmap.wandb_logging import build_wandb_logger

        loggers.append(build_wandb_logger(plan))
    return loggers


def build_trainer(plan: RunPlan, work: Path, callbacks: list[Any], logger: Any, **changes: Any) -> L.Trainer:
    """The run's Lightning Trainer, every argument from the plan (`changes` replace some: the
    benchmarks time this same Trainer)."""
    import lightning as L

    from roadmap.callbacks import AtomicCheckpointIO

    cfg = plan.cfg
    options = dict(
        accelerator=cfg.trainer.accelerator,
        devices=plan.devices,
        num_nodes=int(cfg.trainer.num_nodes),
        strategy=cfg.trainer.strategy,
        precision=cfg.trainer.precision,
        max_epochs=int(cfg.recipe.epochs),
        accumulate_grad_batches=plan.accumulate,
        sync_batchnorm=bool(cfg.trainer.sync_batchnorm),
        gradient_clip_val=cfg.recipe.grad_clip,
        limit_train_batches=cfg.trainer.limit_train_batches,
        limit_val_batches=cfg.trainer.limit_val_batches,
        log_every_n_steps=int(cfg.trainer.log_every_n_steps),
        check_val_every_n_epoch=int(cfg.trainer.check_val_every_n_epoch),
        deterministic=bool(cfg.trainer.deterministic),
        num_sanity_val_steps=0,
        enable_model_summary=False,
        enable_progress_bar=sys.stdout.isatty(),
        default_root_dir=work,
        logger=logger,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
    )
    return L.Trainer(**{**options, **changes})


def run_callbacks(plan: RunPlan, work: Path, state: Any | None = None) -> tuple[EpochMetrics, list[Any]]:
    """metrics.csv's writer, and every callback of a run around it (diagnostics before it, which
    writes their values; the run's state; one rolling last.ckpt, rewritten atomically every epoch)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from roadmap.callbacks import EpochMetrics, PlainProgress
    from roadmap.diagnostics import TrainingDynamics

    cfg = plan.cfg
    metrics = EpochMetrics(work, lock_dir=plan.out_dir)
    dynamics = [TrainingDynamics()] if cfg.trainer.diagnostics else []
    callbacks = [*dynamics, metrics, *([state] if state is not None else []), ModelCheckpoint(
        dirpath=work, filename=CHECKPOINT_FILE.removesuffix(".ckpt"), save_top_k=1, enable_version_counter=False,
        save_on_train_epoch_end=True,  # else Lightning saves only after a validation (check_val_every_n_epoch)
    )]
    if not sys.stdout.isatty():
        callbacks.append(PlainProgress(int(cfg.trainer.log_every_n_steps)))
    return metrics, callbacks


def train(plan: RunPlan, parts: Parts, work: Path, action: str, state: RunState) -> dict[str, Any] | None:
    """Fit (from work/last.ckpt when resuming) and evaluate; returns the result record on rank 0,
    None on the other ranks."""
    from roadmap.module import Classifier

    cfg = plan.cfg
    module = Classifier(
        parts.model, OmegaConf.to_container(cfg.recipe), plan.num_classes, int(cfg.recipe.global_batch),
        channels_last=bool(cfg.trainer.channels_last),
        cuda_graphs=bool(cfg.trainer.compile) and compile_mode(cfg) in CUDA_GRAPH_MODES,
    )
    metrics, callbacks = run_callbacks(plan, work, state)
    # run.log is always there; the run's own files are what matter, and it never overwrites them.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    trainer = build_trainer(plan, work, callbacks, _build_loggers(plan))
    ckpt = work / CHECKPOINT_FILE if action == "resume" else None
    start = time.perf_counter()
    trainer.fit(module, datamodule=parts.datamodule, ckpt_path=ckpt, weights_only=True)
    wall = time.perf_counter() - start
    state.commit(trainer)
    final: dict[str, Any] = {}
    trained = trainer.global_step != (state.loaded_step or 0)
    if not trained or int(cfg.recipe.epochs) % int(cfg.trainer.check_val_every_n_epoch):
        trainer.validate(module, datamodule=parts.datamodule, verbose=False)  # every rank: it syncs
        final = {k: round(float(v), 6) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if not trainer.is_global_zero:
        return None
    return result_record(plan, parts, metrics.history(), final, trainer.global_step, module.lr, wall, state)


def result_record(plan: RunPlan, parts: Parts, history: list[dict[str, Any]], final: dict[str, Any],
                  optimizer_steps: int, lr: float, wall: float, state: RunState) -> dict[str, Any]:
    """A completed run's result.json, from its whole history (metrics.csv across attempts) and
    `final`, an evaluation of the final model when its last epoch had no validation."""
    final = {**(history[-1] if history else {}), **final}
    if final.get("val/top1") is None:
        raise RuntimeError("the run ended without a validation accuracy (trainer.limit_val_batches=0?)")

    def best(key: str) -> float | None:
        values = [r[key] for r in history if r.get(key) is not None]
        return max(values) if values else None

    speeds = [r["img_per_s"] for r in history if r.get("img_per_s")]
    return {
        **_run_fields(plan),
        "status": "completed",
        "top1": final.get("val/top1"),
        "top5": final.get("val/top5"),
        "top1_ema": final.get("val/top1_ema"),
        "top5_ema": final.get("val/top5_ema"),
        "top1_max": best("val/top1") or final.get("val/top1"),
        "top1_ema_max": best("val/top1_ema") or final.get("val/top1_ema"),
        "train_loss_sum": train_loss_sum(history),
        "params": parts.params,
        "gmacs": parts.gmacs,
        "gmacs_224": parts.gmacs_224,
        "optimizer_steps": optimizer_steps,
        "lr": lr,
        "wall_s": round(wall, 2),
        "train_img_per_s": round(sum(speeds) / len(speeds), 2) if speeds else None,
        "skipped_images": len(parts.datamodule.skipped_images()),  # unreadable, per data.on_bad_image
        "resumed_from_step": state.loaded_step or None,
    }


def _run_fields(plan: RunPlan) -> dict[str, Any]:
    cfg = plan.cfg
    return {
        "experiment": cfg.experiment_name,
        "regime": cfg.regime.name,
        "step": cfg.step,
        "variant": cfg.variant,
        "seed": int(cfg.seed),
        "image_size": int(cfg.data.image_size),
        "dataset": cfg.data.name,
        "num_classes": plan.num_classes,
        "epochs": int(cfg.recipe.epochs),
        "global_batch": int(cfg.recipe.global_batch),
        "per_device_batch": int(cfg.trainer.per_device_batch),
        "accumulate": plan.accumulate,
        "devices": plan.devices,
        "num_nodes": int(cfg.trainer.num_nodes),
        "sync_batchnorm": bool(cfg.trainer.sync_batchnorm),
        "precision": str(cfg.trainer.precision),
        "channels_last": bool(cfg.trainer.channels_last),
        "augment_on": augment_on(cfg.data),
        "decode_on": decode_on(cfg.data),
        "lr_scaled": int(cfg.recipe.global_batch) != int(cfg.recipe.optimizer.base_batch),
        "git_commit": git_commit(),
        "config_hash": plan.config_hash,
        "torch_version": torch.__version__,
        "hostname": platform.node(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _error(message: Any, code: int = 2) -> int:
    print(f"roadmap.run: error: {message}", file=sys.stderr)
    return code


def _snapshot(path: Path) -> Path | set[str]:
    """What to restore `path` to: its entries, or the outermost of it and its parents not there yet."""
    if path.is_dir():
        return set(os.listdir(path))
    while not path.parent.exists():
        path = path.parent
    return path


def _restore(path: Path, before: Path | set[str]) -> None:
    """Remove what this attempt added to `path` (see `_snapshot`)."""
    if isinstance(before, Path):
        shutil.rmtree(before, ignore_errors=True)
        return
    for name in set(os.listdir(path)) - before:
        entry = path / name
        shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)


def _open_run_log(out_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(out_dir / "run.log")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger().addHandler(handler)
    trace_log.addHandler(handler)
    return handler


def _close_run_log(handler: logging.Handler) -> None:
    logging.getLogger().removeHandler(handler)
    trace_log.removeHandler(handler)
    handler.close()


def resume_command() -> str:
    """The user's command line (without the deltas `ladder.rung_argv` added to it)."""
    return shlex.join(["python", "-m", "roadmap.run", *(USER_ARGV or sys.argv)[1:]])


def execute(cfg: DictConfig) -> int:
    """Check everything, then train and record. Returns the exit code; -signum when a signal
    interrupted the run (main() then ends the process by that signal)."""
    try:
        plan = plan_run(cfg)
        action = check_directory(plan)
        if action == "skip":
            log.info("%s: completed with the same config; skipping (force=true reruns it)", plan.out_dir)
            return 0
        parts = build_parts(plan)
        if action == "resume":
            verify_checkpoint(plan.out_dir / CHECKPOINT_FILE, plan, parts.model)
    except (RunConfigError, CheckpointError, DataError, ValueError) as error:
        return _error(error)
    except Interrupted as stop:
        print(f"roadmap.run: interrupted by {stop} before training; nothing was written", file=sys.stderr)
        return -stop.signum
    from roadmap.callbacks import RunState

    work = plan.out_dir / RERUN_DIR if action == "rerun" else plan.out_dir
    config_text = OmegaConf.to_yaml(plan.cfg) + f"config_hash: {plan.config_hash}\n"
    state = RunState(work, OmegaConf.to_container(plan.cfg), config_text, fresh=action != "resume")
    before = _snapshot(plan.out_dir)
    if not _is_rank_zero():
        return _train_and_record(plan, parts, work, action, state)
    try:
        acquire_lock(plan.out_dir)
        handler = _open_run_log(plan.out_dir)
    except OSError as error:
        with contextlib.suppress(OSError):
            _restore(plan.out_dir, before)
        return _error(f"cannot write to {error.filename or plan.out_dir}: {error.strerror}; nothing was changed. "
                      f"Use a writable output_root with free space.")
    except RuntimeError as error:  # another live process trains this run
        return _error(error)
    if action == "rerun":
        shutil.rmtree(work, ignore_errors=True)  # an earlier forced rerun that did not complete
    try:
        return _train_and_record(plan, parts, work, action, state)
    finally:
        _close_run_log(handler)
        release_lock(plan.out_dir)
        if not state.committed:  # failed before its first optimizer step: the directory as it was
            _restore(plan.out_dir, before)


def _train_and_record(plan: RunPlan, parts: Parts, work: Path, action: str, state: RunState) -> int:
    try:
        record = train(plan, parts, work, action, state)
    except Interrupted as stop:
        return _interrupted(plan, work, action, state, stop.signum)
    except DataError as error:  # bad input, not a failed run: nothing is recorded
        return _error(error)
    except Exception as error:  # noqa: BLE001 - classified, recorded, reported in one line
        trace_log.error("%s", error, exc_info=True)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            traceback.print_exc()
        signum = _killed_worker_signal(error)
        if signum is not None:
            return _interrupted(plan, work, action, state, signum)
        if _is_out_of_memory(error):
            return _error(_out_of_memory_message(plan), 1)
        if isinstance(error, OSError) and error.errno in DISK_ERRORS:
            kept = f"{work / CHECKPOINT_FILE} is whole" if (work / CHECKPOINT_FILE).is_file() else "nothing was lost"
            return _error(f"cannot write {error.filename or work}: {error.strerror}; {kept}. Free space (or "
                          f"make it writable), then run the same command again: {resume_command()}", 1)
        reason = f"{type(error).__name__}: {error}"
        if not state.committed:
            return _error(f"{reason} (before the first optimizer step: nothing was recorded)", 1)
        if _is_rank_zero():
            write_result(work, {**_run_fields(plan), "status": "failed", "reason": reason})
        kept = f"; the completed {RESULT_FILE} of {plan.out_dir} is kept" if action == "rerun" else ""
        return _error(f"the run failed: {reason.splitlines()[0]}{kept} (result in {work / RESULT_FILE})", 1)
    if record is not None:
        if action == "rerun":
            _promote(work, plan.out_dir)
        write_result(plan.out_dir, record)
        if action == "rerun":
            shutil.rmtree(work)
        log.info("top-1 %s (EMA %s) -> %s", record["top1"], record["top1_ema"], plan.out_dir)
    return 0


def _promote(work: Path, out: Path) -> None:
    """A completed forced rerun's files replace the old run's (its metrics kept aside); result.json is next."""
    if (out / METRICS_FILE).is_file():
        (out / METRICS_FILE).replace(out / f"previous_{METRICS_FILE}")
    for name in (CONFIG_FILE, CHECKPOINT_FILE, METRICS_FILE):
        if (work / name).is_file():
            (work / name).replace(out / name)


def _interrupted(plan: RunPlan, work: Path, action: str, state: RunState, signum: int) -> int:
    name = signal.Signals(signum).name
    if state.committed and _is_rank_zero():
        write_result(work, {**_run_fields(plan), "status": "interrupted", "reason": f"interrupted by {name}"})
    if not state.committed:
        name += " before the first optimizer step (nothing was written)"
    if action == "rerun":
        hint = (f"the completed {RESULT_FILE} of {plan.out_dir} is kept; the same command (force=true) "
                f"starts the rerun again: {resume_command()}")
    else:
        since = "from last.ckpt" if (work / CHECKPOINT_FILE).is_file() else "from the start (no epoch had ended)"
        hint = f"the same command resumes it {since}: {resume_command()}"
    print(f"roadmap.run: interrupted by {name}; {hint}", file=sys.stderr)
    return -signum


def _killed_worker_signal(error: Exception) -> int | None:
    """SIGTERM/SIGINT sent to the process group reaches DataLoader workers too: their death is that signal."""
    text = str(error)
    if "DataLoader worker" not in text:
        return None
    for signum, word in ((signal.SIGTERM, "Terminated"), (signal.SIGINT, "Interrupt")):
        if f"killed by signal: {word}" in text:
            return signum
    return None


def _is_out_of_memory(error: Exception) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and ("out of memory" in str(error) or "can't allocate memory" in str(error)))


def _out_of_memory_message(plan: RunPlan) -> str:
    cfg = plan.cfg
    per_device = int(cfg.trainer.per_device_batch)
    smaller = [b for b in valid_per_device_batches(int(cfg.recipe.global_batch), plan.devices * int(cfg.trainer.num_nodes))
               if b < per_device and (b % 2 == 0 or not _mixing(cfg))]
    if not smaller:
        return (f"out of memory at trainer.per_device_batch={per_device}, the smallest possible here; lower "
                f"data.image_size or use more devices")
    return (f"out of memory at trainer.per_device_batch={per_device}: run the same command with "
            f"trainer.per_device_batch={smaller[-1]} (same recipe.global_batch={cfg.recipe.global_batch}, more "
            f"accumulation; it resumes as the same run): {resume_command()} trainer.per_device_batch={smaller[-1]}")


@hydra.main(config_path=str(conf_dir()), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    import lightning.pytorch  # noqa: F401 - it adds its console handler on import

    # Hydra's handlers (console + run.log) already show Lightning's logs: drop the duplicate.
    logging.getLogger("lightning.pytorch").handlers.clear()
    logging.raiseExceptions = False  # a full disk must not turn every log line into a traceback
    raise_on_signals()
    code = execute(cfg)
    if code < 0:
        exit_by_signal(-code)
    if code:
        sys.exit(code)


USER_ARGV: list[str] = []  # the command line as typed, before rung_argv adds the deltas


if __name__ == "__main__":
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    USER_ARGV = list(sys.argv)
    sys.argv = rung_argv("roadmap.run", "train")
    main()
