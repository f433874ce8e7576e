"""`python -m roadmap.run step=<rung> [experiment=…] [key=value …]`: train one rung.

Writes <output_root>/<experiment>/<regime>/<step>/seed<k>/: config.yaml (resolved), last.ckpt,
metrics.csv (one row per epoch), logs/, and result.json once the run has completed or failed.
The same command again resumes from last.ckpt, or skips a completed run.
"""
from __future__ import annotations

import logging
import os
import platform
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from roadmap.data import DataError
from roadmap.ladder import LadderError, compose_arch, conf_dir
from roadmap.model.config import ArchConfig
from roadmap.results import (
    CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, acquire_lock, config_hash, git_commit, read_result,
    recorded_config_hash, release_lock, write_atomic, write_result,
)

log = logging.getLogger("roadmap.run")


class RunConfigError(ValueError):
    """The run's configuration cannot work (names the key, the value and what is valid)."""


class CheckpointError(RuntimeError):
    """last.ckpt exists but cannot be read: never silently restart from zero over it."""


@dataclass
class RunPlan:
    cfg: DictConfig  # resolved; `arch` holds the rung's full ArchConfig, trainer "auto"s are filled in
    arch: ArchConfig
    out_dir: Path
    devices: int
    accumulate: int
    config_hash: str


def _resolve_auto_trainer(trainer: DictConfig) -> None:
    cuda = torch.cuda.is_available()
    if trainer.accelerator == "auto":
        trainer.accelerator = "gpu" if cuda else "cpu"
    if trainer.precision == "auto":
        trainer.precision = "bf16-mixed" if cuda and torch.cuda.is_bf16_supported() else "32-true"
    if trainer.devices == "auto":
        trainer.devices = torch.cuda.device_count() if trainer.accelerator == "gpu" else 1


def plan_run(cfg: DictConfig) -> RunPlan:
    """Resolve and check a run's config without touching the disk."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    try:
        arch = compose_arch(cfg.step, cfg.regime.name, cfg.model)
    except LadderError as error:
        raise RunConfigError(str(error)) from error
    trainer = cfg.trainer
    _resolve_auto_trainer(trainer)
    devices, nodes = int(trainer.devices), int(trainer.num_nodes)
    per_device, global_batch = int(trainer.per_device_batch), int(cfg.recipe.global_batch)
    per_step = per_device * devices * nodes
    if per_device < 1 or global_batch % per_step:
        valid = [b for b in range(1, global_batch // (devices * nodes) + 1) if global_batch % (b * devices * nodes) == 0]
        raise RunConfigError(
            f"recipe.global_batch={global_batch} is not a multiple of trainer.per_device_batch={per_device} x "
            f"trainer.devices={devices} x trainer.num_nodes={nodes} = {per_step}; valid per_device_batch "
            f"values here: {valid[-8:]}"
        )
    mixing = float(cfg.recipe.augment.mixup) > 0 or float(cfg.recipe.augment.cutmix) > 0
    if mixing and per_device % 2:
        raise RunConfigError(f"trainer.per_device_batch={per_device} must be even with MixUp/CutMix (timm pairs images)")
    with open_dict(cfg):
        cfg.arch = asdict(arch)
    return RunPlan(cfg, arch, Path(cfg.output_dir), devices, global_batch // per_step, config_hash(cfg))


def _is_rank_zero() -> bool:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def check_directory(plan: RunPlan) -> str:
    """"skip" (completed, same config), "resume", "fresh"; raises on a different config."""
    out = plan.out_dir
    previous = read_result(out)
    recorded = recorded_config_hash(out)
    if recorded is not None and recorded != plan.config_hash:
        raise RunConfigError(
            f"{out} holds a run with a different config (config_hash {recorded}, this one "
            f"{plan.config_hash}); nothing was changed there. Use another experiment_name, seed or "
            f"output_root, or remove that directory to replace it (compare with its {CONFIG_FILE})."
        )
    if previous and previous.get("status") == "completed" and not plan.cfg.force:
        return "skip"
    if (out / CHECKPOINT_FILE).is_file() and not plan.cfg.force:
        return "resume"
    return "fresh"


def verify_checkpoint(path: Path) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure to read it is reported the same way
        raise CheckpointError(
            f"cannot read checkpoint {path} ({type(error).__name__}: {error}). It is left as it is: "
            f"move it away to restart this run from zero, or rerun with force=true."
        ) from error
    if "state_dict" not in state or "global_step" not in state:
        raise CheckpointError(f"{path} is not a roadmap/Lightning checkpoint (no state_dict/global_step)")


def _build_loggers(plan: RunPlan) -> list[Any]:
    from lightning.pytorch.loggers import CSVLogger

    loggers: list[Any] = [CSVLogger(save_dir=plan.out_dir, name="logs")]
    if plan.cfg.logger.wandb:
        from roadmap.wandb_logging import build_wandb_logger

        loggers.append(build_wandb_logger(plan))
    return loggers


def train(plan: RunPlan, resume: bool) -> dict[str, Any] | None:
    """Build everything from the plan and fit (from last.ckpt when `resume`); returns the result
    record on rank 0, None on the other ranks."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from roadmap.callbacks import EpochMetrics
    from roadmap.data import build_datamodule
    from roadmap.model.complexity import complexity
    from roadmap.model.net import RoadmapNet
    from roadmap.module import Classifier

    cfg, out = plan.cfg, plan.out_dir
    L.seed_everything(int(cfg.seed), workers=True)
    model = RoadmapNet(plan.arch)
    counts = complexity(model, int(cfg.data.image_size))
    gmacs_224 = complexity(model, 224)["gmacs"]
    if cfg.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.trainer.compile:
        model.compile()
    datamodule = build_datamodule(cfg, per_device_batch=int(cfg.trainer.per_device_batch))
    module = Classifier(
        model, OmegaConf.to_container(cfg.recipe), plan.arch.num_classes, int(cfg.recipe.global_batch),
        channels_last=bool(cfg.trainer.channels_last),
    )
    metrics = EpochMetrics(out)
    trainer = L.Trainer(
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
        default_root_dir=out,
        logger=_build_loggers(plan),
        callbacks=[metrics, ModelCheckpoint(  # one rolling last.ckpt, rewritten (atomically) every epoch
            dirpath=out, filename=CHECKPOINT_FILE.removesuffix(".ckpt"), save_top_k=1, enable_version_counter=False
        )],
    )
    ckpt = out / CHECKPOINT_FILE if resume else None
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
    wall = time.perf_counter() - start
    if trainer.interrupted:
        raise KeyboardInterrupt("training was interrupted; the same command resumes it from last.ckpt")
    if not trainer.is_global_zero:
        return None
    final = metrics.rows[-1] if metrics.rows else {}
    history = metrics.history()

    def best(key: str) -> float | None:
        values = [r[key] for r in history if r.get(key) is not None]
        return max(values) if values else None

    return {
        **_run_fields(plan),
        "status": "completed",
        "top1": final.get("val/top1"),
        "top5": final.get("val/top5"),
        "top1_ema": final.get("val/top1_ema"),
        "top5_ema": final.get("val/top5_ema"),
        "top1_max": best("val/top1"),
        "top1_ema_max": best("val/top1_ema"),
        "params": counts["params"],
        "gmacs": counts["gmacs"],
        "gmacs_224": gmacs_224,
        "optimizer_steps": trainer.global_step,
        "lr": module.lr,
        "wall_s": round(wall, 2),
        "train_img_per_s": metrics.mean_img_per_s(),
        "skipped_images": len(datamodule.skipped_images()),  # unreadable, per data.on_bad_image
        "resumed_from_step": metrics.resumed_from_step,
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
        "num_classes": plan.arch.num_classes,
        "epochs": int(cfg.recipe.epochs),
        "global_batch": int(cfg.recipe.global_batch),
        "per_device_batch": int(cfg.trainer.per_device_batch),
        "accumulate": plan.accumulate,
        "devices": plan.devices,
        "num_nodes": int(cfg.trainer.num_nodes),
        "sync_batchnorm": bool(cfg.trainer.sync_batchnorm),
        "precision": str(cfg.trainer.precision),
        "channels_last": bool(cfg.trainer.channels_last),
        "lr_scaled": int(cfg.recipe.global_batch) != int(cfg.recipe.optimizer.base_batch),
        "git_commit": git_commit(),
        "config_hash": plan.config_hash,
        "torch_version": torch.__version__,
        "hostname": platform.node(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def execute(cfg: DictConfig) -> int:
    """Plan, check the directory, train, record. Returns the process exit code."""
    try:
        plan = plan_run(cfg)
        action = check_directory(plan)
        if action == "resume":
            verify_checkpoint(plan.out_dir / CHECKPOINT_FILE)
    except (RunConfigError, CheckpointError, ValueError) as error:
        print(f"roadmap.run: error: {error}", file=sys.stderr)
        return 2
    if action == "skip":
        log.info("%s: completed with the same config; skipping (force=true reruns it)", plan.out_dir)
        return 0
    if _is_rank_zero():
        try:
            acquire_lock(plan.out_dir)
        except RuntimeError as error:
            print(f"roadmap.run: error: {error}", file=sys.stderr)
            return 2
        text = OmegaConf.to_yaml(plan.cfg) + f"config_hash: {plan.config_hash}\n"
        write_atomic(plan.out_dir / CONFIG_FILE, text)
        old_metrics = plan.out_dir / METRICS_FILE
        if action == "fresh" and old_metrics.is_file():  # a forced rerun keeps the old curve aside
            old_metrics.replace(plan.out_dir / f"previous_{METRICS_FILE}")
    try:
        return _train_and_record(plan, action)
    finally:
        if _is_rank_zero():
            release_lock(plan.out_dir)


def _train_and_record(plan: RunPlan, action: str) -> int:
    try:
        record = train(plan, resume=action == "resume")
    except KeyboardInterrupt:
        log.warning("interrupted: %s keeps last.ckpt; the same command resumes", plan.out_dir)
        return 130
    except DataError as error:  # bad input, not a failed run: nothing is recorded
        print(f"roadmap.run: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - recorded, then reported with its traceback
        traceback.print_exc()
        if _is_rank_zero():
            reason = f"{type(error).__name__}: {error}"
            write_result(plan.out_dir, {**_run_fields(plan), "status": "failed", "reason": reason})
        return 1
    if record is not None:
        write_result(plan.out_dir, record)
        log.info("top-1 %s (EMA %s) -> %s", record["top1"], record["top1_ema"], plan.out_dir)
    return 0


@hydra.main(config_path=str(conf_dir()), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    import lightning.pytorch  # noqa: F401 - it adds its console handler on import

    # Hydra's handlers (console + run.log) already show Lightning's logs: drop the duplicate.
    logging.getLogger("lightning.pytorch").handlers.clear()
    code = execute(cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    main()
