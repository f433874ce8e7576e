"""What a run is built from and how it trains: the model and data (`build_parts`, before anything
is written), the Lightning trainer, callbacks and loggers, the fit itself, and the result record."""
from __future__ import annotations

import platform
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import OmegaConf

from roadmap import schema
from roadmap.data import augment_on, decode_on
from roadmap.model import factory
from roadmap.plan import RunConfigError, RunPlan, compile_mode
from roadmap.results import config_hash, git_commit, train_loss_sum
from roadmap.rundir import CHECKPOINT_FILE, LOGS_DIR, RUN_LOG
from roadmap.tasks import METRICS, headline, task_name

if TYPE_CHECKING:
    import lightning as L

    from roadmap.callbacks import EpochMetrics, RunState


class CheckpointError(RuntimeError):
    """last.ckpt cannot be read or belongs to another run: never silently restart from zero over it."""


def is_rank_zero() -> bool:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


@dataclass
class Parts:
    """What a run is built from, made before anything is written: a model or data that cannot work
    is an error of the command, not of the run."""

    model: torch.nn.Module
    datamodule: Any
    params: int
    gmacs: float
    gmacs_224: float
    init: dict[str, Any] | None = None  # init_from's record (roadmap.finetune.initialize)


def build_parts(plan: RunPlan) -> Parts:
    from lightning.fabric.utilities.seed import seed_everything

    from roadmap.model.complexity import complexity
    from roadmap.tasks import build_task_datamodule, build_task_model

    cfg = plan.cfg
    seed_everything(int(cfg.seed), workers=True, verbose=False)
    model = build_model(plan)
    init = initialize_from(cfg, model)
    try:
        counts = complexity(model, int(cfg.data.image_size))
    except RuntimeError as error:  # e.g. a foreign model's last stage has no pixels left
        raise RunConfigError(f"model._target_={factory.target(cfg.model)} cannot take {cfg.data.image_size}px "
                             f"images (data.image_size): {str(error).splitlines()[0]}") from error
    gmacs_224 = complexity(model, 224)["gmacs"]
    model = build_task_model(cfg, model)  # a downstream task's head on the rung (with init_from's weights)
    if cfg.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.trainer.compile:
        model.compile(mode=compile_mode(cfg))
    datamodule = build_task_datamodule(cfg, plan.per_device_batch)
    if is_rank_zero():  # other DDP ranks start once rank 0 has checked (and downloaded) the data
        datamodule.prepare_data()
        datamodule.setup("fit")
    return Parts(model, datamodule, counts["params"], counts["gmacs"], gmacs_224, init)


def initialize_from(cfg: Any, model: torch.nn.Module) -> dict[str, Any] | None:
    """`init_from`'s weights loaded into the fresh model (a bad source: one line, nothing written)."""
    if cfg.get("init_from") is None:
        return None
    from roadmap.finetune import InitFromError, initialize

    try:
        return initialize(model, str(cfg.init_from), bool(cfg.get("init_from_ema", False)))
    except InitFromError as error:
        raise RunConfigError(str(error)) from error


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


def build_loggers(plan: RunPlan) -> list[Any]:
    from lightning.pytorch.loggers import CSVLogger

    loggers: list[Any] = [CSVLogger(save_dir=plan.out_dir, name=LOGS_DIR)]
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
        max_epochs=-1 if schema.value(cfg.recipe, "recipe.max_steps") else int(cfg.recipe.epochs),
        max_steps=schema.value(cfg.recipe, "recipe.max_steps") or -1,
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


def run_callbacks(plan: RunPlan, work: Path, state: Any | None = None,
                  summary: list[str] | None = None) -> tuple[EpochMetrics, list[Any]]:
    """metrics.csv's writer, and every callback of a run around it (diagnostics before it, which
    writes their values; the run's state; one rolling last.ckpt, rewritten atomically every epoch)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from roadmap.callbacks import EpochMetrics, FirstEpochValidation, PlainProgress, StartupSummary
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
    first_validation = bool(cfg.trainer.get("validate_first_epoch", False))
    if summary:
        callbacks.append(StartupSummary(summary, first_validation))
    if first_validation:
        callbacks.append(FirstEpochValidation())  # last: it saves the RNG states after every other hook
    return metrics, callbacks


def startup_lines(plan: RunPlan, parts: Parts, action: str) -> list[str]:
    """What a run says when it starts (`StartupSummary` adds the schedule): the rung, the run
    directory and its log, the devices and batch, the data."""
    cfg, data = plan.cfg, parts.datamodule
    how = {"fresh": "a fresh run", "rerun": "a forced rerun (the completed result stays until it completes)",
           "resume": "resuming from last.ckpt"}[action]
    variant = f" variant {cfg.variant}" if cfg.variant else ""
    return [
        f"run: experiment {cfg.experiment_name}, rung {cfg.regime.name}/{cfg.step}{variant}, seed {cfg.seed}: {how}",
        f"output: {plan.out_dir} (log: {plan.out_dir / RUN_LOG})",
        f"device: {cfg.trainer.accelerator} x {plan.devices} x {cfg.trainer.num_nodes} node(s), precision "
        f"{cfg.trainer.precision}; batch {cfg.trainer.per_device_batch} per device x {plan.accumulate} accumulated "
        f"= {cfg.recipe.global_batch}",
        f"data: {cfg.data.name} at {cfg.data.image_size} px, {len(data.train_set)} train / "
        f"{len(data.val_set) if data.validates else 'no (no validation)'} val images, from {cfg.data.root}",
    ]


def train(plan: RunPlan, parts: Parts, work: Path, action: str, state: RunState) -> dict[str, Any] | None:
    """Fit (from work/last.ckpt when resuming) and evaluate; returns the result record on rank 0,
    None on the other ranks."""
    from roadmap.tasks import build_task_module

    cfg = plan.cfg
    module = build_task_module(plan, parts)
    summary = startup_lines(plan, parts, action) if is_rank_zero() else None  # other ranks hold no data yet
    metrics, callbacks = run_callbacks(plan, work, state, summary)
    # run.log is always there; the run's own files are what matter, and it never overwrites them.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    # Lightning's own use of a torch API it deprecated: nothing a user can act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
    # Lightning's hints that do not apply here: roadmap's launchers start SLURM tasks themselves, and
    # its progress lines and metrics.csv do not depend on Lightning's logging interval.
    warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system but is not used")
    warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging interval")
    trainer = build_trainer(plan, work, callbacks, build_loggers(plan))
    ckpt = work / CHECKPOINT_FILE if action == "resume" else None
    start = time.perf_counter()
    trainer.fit(module, datamodule=parts.datamodule, ckpt_path=ckpt, weights_only=True)
    wall = time.perf_counter() - start
    state.commit(trainer)
    final: dict[str, Any] = {}
    trained = trainer.global_step != (state.loaded_optimizer_step or 0)
    by_steps = schema.value(cfg.recipe, "recipe.max_steps") is not None  # its last epoch may end between validations
    every = int(cfg.trainer.check_val_every_n_epoch)
    if parts.datamodule.validates and (not trained or by_steps or int(cfg.recipe.epochs) % every):
        trainer.validate(module, datamodule=parts.datamodule, verbose=False)  # every rank: it syncs
        final = {k: round(float(v), 6) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if not trainer.is_global_zero:
        return None
    metrics.add_final_validation(final, trainer.global_step)
    return result_record(plan, parts, metrics.history(), final, trainer.global_step, module.lr, wall, state)


def result_record(plan: RunPlan, parts: Parts, history: list[dict[str, Any]], final: dict[str, Any],
                  optimizer_steps: int, lr: float, wall: float, state: RunState) -> dict[str, Any]:
    """A completed run's result.json, from its whole history (metrics.csv across attempts) and
    `final`, an evaluation of the final model when its last epoch had no validation."""
    final = {**(history[-1] if history else {}), **final}
    validated = parts.datamodule.validates
    task = task_name(plan.cfg)
    if final.get(f"val/{headline(task)}") is None and validated:
        raise RuntimeError(f"the run ended without a validation {headline(task)} (trainer.limit_val_batches=0?)")

    def best(key: str) -> float | None:
        values = [r[key] for r in history if r.get(key) is not None]
        return max(values) if values else None

    speeds = [r["img_per_s"] for r in history if r.get("img_per_s")]
    return {
        **attempt_fields(plan, parts, state),
        "status": "completed",
        "top1": final.get("val/top1"),
        "top5": final.get("val/top5"),
        "top1_ema": final.get("val/top1_ema"),
        "top5_ema": final.get("val/top5_ema"),
        "top1_max": best("val/top1") or final.get("val/top1"),
        "top1_ema_max": best("val/top1_ema") or final.get("val/top1_ema"),
        **{name: final.get(f"val/{name}") for name in METRICS[task] if task != "classification"},
        "train_loss_sum": train_loss_sum(history),
        "val_loss": final.get("val/loss"),
        "optimizer_steps": optimizer_steps,
        "lr": lr,
        "wall_s": round(wall, 2),
        "train_img_per_s": round(sum(speeds) / len(speeds), 2) if speeds else None,
        **({} if validated else {"validated": False}),  # completed without a top-1, on purpose
    }


def attempt_fields(plan: RunPlan, parts: Parts, state: RunState) -> dict[str, Any]:
    """What an attempt's result.json records whatever its status: the run's fields, the model's
    size and cost, the optimizer step it resumed from, the images it skipped."""
    return {
        **run_fields(plan),
        "params": parts.params,
        "gmacs": parts.gmacs,
        "gmacs_224": parts.gmacs_224,
        "skipped_images": len(parts.datamodule.skipped_images()),  # unreadable, per data.on_bad_image
        "resumed_from_step": state.loaded_optimizer_step or None,
        **(parts.init or {"init_from": None}),
    }


def run_fields(plan: RunPlan) -> dict[str, Any]:
    cfg = plan.cfg
    return {
        "experiment": cfg.experiment_name,
        "task": task_name(cfg),
        "regime": cfg.regime.name,
        "step": cfg.step,
        "variant": cfg.variant,
        "seed": int(cfg.seed),
        "image_size": int(cfg.data.image_size),
        "dataset": cfg.data.name,
        "num_classes": plan.num_classes,
        "epochs": int(cfg.recipe.epochs),
        "global_batch": plan.global_batch,
        "per_device_batch": plan.per_device_batch,
        "accumulate": plan.accumulate,
        "devices": plan.devices,
        "num_nodes": int(cfg.trainer.num_nodes),
        "sync_batchnorm": bool(cfg.trainer.sync_batchnorm),
        "precision": str(cfg.trainer.precision),
        "channels_last": bool(cfg.trainer.channels_last),
        "augment_on": augment_on(cfg.data),
        "decode_on": decode_on(cfg.data),
        "lr_scaled": plan.lr_scaled,
        "git_commit": git_commit(),
        "config_hash": plan.config_hash,
        "torch_version": torch.__version__,
        "hostname": platform.node(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
