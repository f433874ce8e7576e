"""A run's plan: its config resolved (trainer "auto"s filled in), checked before anything is
written (every key against `roadmap.schema`, then what depends on several keys), and the values
derived from it once (devices, batches, accumulation, learning rate, mixing, config hash). Every
command that needs to know what a run would do (run, sweep, status, inspect) asks `plan_run`."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from roadmap import schema
from roadmap.ladder import LadderError, arch_config
from roadmap.model import factory
from roadmap.model.config import ArchConfig
from roadmap.recipe import mixing as recipe_mixing
from roadmap.recipe import scaled_lr
from roadmap.results import config_hash
from roadmap.rundir import CHECKPOINT_FILE, RunDirError, experiment_run
from roadmap.tasks import check_task

# trainer.per_device_batch=auto's ceiling per device kind: conf/trainer/gpu.yaml's and cpu.yaml's
# per_device_batch (tests/test_run.py checks they agree).
AUTO_PER_DEVICE_BATCH = {"gpu": 128, "cpu": 64}
# torch.compile's modes (trainer.compile_mode); those that capture CUDA graphs on a GPU.
COMPILE_MODES = schema.KEYS["trainer.compile_mode"].choices
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


class RunConfigError(schema.ConfigError):
    """The run's configuration cannot work (names the key, the value and what is valid)."""


@dataclass
class RunPlan:
    cfg: DictConfig  # resolved; `model` holds the rung's full ArchConfig (builder), trainer "auto"s are filled in
    arch: ArchConfig | None  # None: the regime's model comes from another factory (`model._target_`)
    out_dir: Path
    devices: int  # per node
    per_device_batch: int
    global_batch: int
    accumulate: int
    lr: float  # recipe.optimizer.base_lr scaled to the global batch
    lr_scaled: bool  # the global batch is not the optimizer's base_batch
    mixing: bool  # MixUp/CutMix on
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
    fits = [b for b in valid if b <= limit and (b % 2 == 0 or not mixing(cfg))]
    trainer.per_device_batch = max(fits, default=valid[0] if valid else 1)  # plan_run names a bad global batch


def mixing(cfg: DictConfig) -> bool:
    return recipe_mixing(cfg.recipe)


def compile_mode(cfg: DictConfig) -> str:
    """trainer.compile_mode (torch.compile's `mode` under trainer.compile=true); runs recorded before it existed: default."""
    return str(schema.value(cfg.trainer, "trainer.compile_mode"))


def valid_per_device_batches(global_batch: int, devices: int) -> list[int]:
    """The per-device batches that divide the global batch over `devices` (x nodes) devices."""
    return [b for b in range(1, global_batch // devices + 1) if global_batch % (b * devices) == 0]


def plan_run(cfg: DictConfig) -> RunPlan:
    """Resolve and check a run's config (composed with its deltas: `ladder.compose_run`, or
    `roadmap.run`'s command line) without touching the disk."""
    try:
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
    except MissingMandatoryValue as error:  # `???`: a preset that leaves a key to the command line
        key = error.full_key
        meaning = f": {schema.KEYS[key].doc}" if key in schema.KEYS else ""
        raise RunConfigError(f"{key} must be given on the command line here ({key}=…){meaning}") from None
    except InterpolationResolutionError as error:  # a name the run directory refuses, a per-model value: one line
        refused = _cause(error, RunDirError) or _cause(error, schema.ConfigError)
        if refused is None:
            raise
        raise RunConfigError(str(refused)) from None
    _resolve_init_from(cfg)
    trainer = cfg.trainer
    _resolve_auto_trainer(trainer)
    try:
        schema.check(cfg)
    except schema.ConfigError as error:
        raise RunConfigError(str(error)) from None
    if schema.value(cfg.recipe, "recipe.fine_tune") and cfg.get("init_from") is None:
        raise RunConfigError(f"recipe={cfg.recipe.name} fine-tunes: give the weights it starts from, init_from=<a run "
                             "directory, its last.ckpt or a state-dict file>")
    _resolve_auto_batch(cfg)
    arch = _check_model(cfg)
    try:
        check_task(cfg, arch)
    except schema.ConfigError as error:
        raise RunConfigError(str(error)) from None
    devices, nodes = int(trainer.devices), int(trainer.num_nodes)
    per_device, global_batch = int(trainer.per_device_batch), int(cfg.recipe.global_batch)
    per_step = per_device * devices * nodes
    if global_batch % per_step:
        raise RunConfigError(
            f"recipe.global_batch={global_batch} is not a multiple of trainer.per_device_batch={per_device} x "
            f"trainer.devices={devices} x trainer.num_nodes={nodes} = {per_step}; valid per_device_batch "
            f"values here: {valid_per_device_batches(global_batch, devices * nodes)[-8:]}"
        )
    mixes = mixing(cfg)
    if mixes and per_device % 2:
        raise RunConfigError(f"trainer.per_device_batch={per_device} must be even with MixUp/CutMix (timm pairs images)")
    if arch is not None:
        cfg.model = {"_target_": factory.BUILDER, **asdict(arch)}  # every builder field, as the builder reads it
    base_batch = int(cfg.recipe.optimizer.base_batch)
    return RunPlan(cfg, arch, Path(cfg.output_dir), devices, per_device, global_batch, global_batch // per_step,
                   scaled_lr(cfg.recipe.optimizer, global_batch), global_batch != base_batch, mixes, config_hash(cfg))


def _resolve_init_from(cfg: DictConfig) -> None:
    """init_from=<an experiment>: that experiment's run of this rung (seed `init_from_seed`, or the run's)."""
    init_from = cfg.get("init_from")
    if init_from is None:
        return
    seed = cfg.get("init_from_seed")
    seed = int(cfg.seed) if seed is None else int(seed)
    run = experiment_run(str(init_from), cfg.output_root, cfg.regime.name, cfg.step, seed)
    if run is None:
        return
    if not (run / CHECKPOINT_FILE).is_file():
        raise RunConfigError(f"init_from={init_from}: the experiment has no finished epoch of rung "
                             f"{cfg.regime.name}/{cfg.step} seed {seed} ({run} holds no {CHECKPOINT_FILE}); train "
                             f"that rung there first")
    cfg.init_from = str(run)


def _cause(error: BaseException | None, kind: type[BaseException]) -> BaseException | None:
    """The first exception of `kind` in error's chain (OmegaConf wraps a resolver's error twice)."""
    while error is not None and not isinstance(error, kind):
        error = error.__cause__ or error.__context__
    return error


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
