"""The run record: result.json's fields (one schema for run, collect and report), the config hash
that decides whether a directory holds "the same run", the metrics history, atomic writes. Where
these files live is `roadmap.rundir`'s."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from roadmap import schema

# Every result.json has these fields (None where a failed run has no value).
RESULT_FIELDS = [
    "experiment", "task", "regime", "step", "variant", "seed", "status", "reason",
    "top1", "top5", "top1_ema", "top5_ema", "top1_max", "top1_ema_max",
    "ap_box", "ap_box_50", "ap_box_75", "ap_mask", "ap_mask_50", "ap_mask_75", "miou",  # downstream tasks (percent)
    "train_loss_sum", "val_loss",
    "params", "gmacs", "gmacs_224", "image_size", "dataset", "num_classes",
    "epochs", "optimizer_steps", "global_batch", "per_device_batch", "accumulate", "devices",
    "num_nodes", "sync_batchnorm", "precision", "channels_last", "augment_on", "decode_on", "lr", "lr_scaled",
    "wall_s", "train_img_per_s", "skipped_images", "resumed_from_step", "git_commit", "config_hash",
    "torch_version", "hostname", "finished_at",
]

# Keys that do not change what a run computes (the schema's `hashed=False`): moving data or outputs,
# logging, rerun flags, how the global batch is executed (per-device batch x accumulation; result.json
# records both), where the augmentation runs and JPEGs are decoded (the same distribution,
# tests/test_gpu_augment.py; result.json records augment_on and decode_on), how images are stored.
UNHASHED_KEYS = schema.unhashed_keys()


def _pop_dotted(container: dict[str, Any], dotted: str, only_if: Any = ...) -> None:
    *parents, leaf = dotted.split(".")
    node: Any = container
    for key in parents:
        node = node.get(key, {}) if isinstance(node, dict) else {}
    if isinstance(node, dict) and leaf in node and (only_if is ... or node[leaf] == only_if):
        del node[leaf]


def _drop_nulls(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _drop_nulls(v) for k, v in node.items() if v is not None}
    if isinstance(node, list):
        return [_drop_nulls(v) for v in node]
    return node


def canonical_config(container: dict[str, Any]) -> dict[str, Any]:
    """What a run computes, in one layout for every config.yaml ever written: the rung's full
    builder fields as `model` (config.yaml files written before the deltas were composed by Hydra
    hold them as `arch`, beside a `model` block of command-line overrides already folded into it),
    and of the regime only its name (its baseline, steps and branches are what made `model`); an
    experiment renamed since its runs were recorded under the name they hold."""
    canonical = dict(container)
    for old, new in schema.RENAMED.items():
        if old in canonical:
            canonical[new] = canonical.pop(old)
    if canonical.get("experiment_name") in schema.RECORDED_EXPERIMENT_NAMES:
        canonical["experiment_name"] = schema.RECORDED_EXPERIMENT_NAMES[canonical["experiment_name"]]
    if isinstance(canonical.get("regime"), dict):
        canonical["regime"] = {"name": canonical["regime"].get("name")}
    return canonical


def config_hash(cfg: DictConfig) -> str:
    """A short hash of what the run computes (`canonical_config`). Null values count as absent, and so
    does a key holding its `schema.LEGACY` value, so adding a key to the configs later leaves recorded
    runs' hashes unchanged."""
    container = _drop_nulls(canonical_config(OmegaConf.to_container(cfg, resolve=True)))
    for dotted in UNHASHED_KEYS:
        _pop_dotted(container, dotted)
    for dotted, value in schema.LEGACY.items():
        _pop_dotted(container, dotted, only_if=value)
    if container.get("task") == {}:  # task=classification: as before tasks existed
        del container["task"]
    canonical = json.dumps(container, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def read_metrics_csv(path: Path) -> list[dict[str, Any]]:
    """A run's metrics.csv, one row per epoch in order (across attempts: a rerun epoch keeps its
    last row), values as floats (None where empty); [] when there is none yet."""
    if not Path(path).is_file():
        return []
    by_epoch: dict[int, dict[str, Any]] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        try:
            for row in reader:
                by_epoch[int(row["epoch"])] = {k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
        except (ValueError, TypeError, KeyError, csv.Error) as error:  # a UnicodeDecodeError is a ValueError
            raise ValueError(f"{path} is not a run's metrics table (line {reader.line_num}: {type(error).__name__}: "
                             f"{error}); repair it, or train the run again from the start with force=true") from error
    return [by_epoch[e] for e in sorted(by_epoch)]


def train_loss_sum(history: Iterable[dict[str, Any]]) -> float | None:
    """Sum over the run's epochs of the epoch's mean training loss (metrics.csv's `train/loss`, so
    a resumed run counts each epoch once); None when no epoch has one."""
    losses = [row["train/loss"] for row in history if row.get("train/loss") is not None]
    return round(sum(losses), 6) if losses else None


def final_val_loss(history: Iterable[dict[str, Any]]) -> float | None:
    """The last validation's cross-entropy (metrics.csv's `val/loss`, no label smoothing: the
    held-out loss, beside the training loss to tell fitting from generalization); None if never validated."""
    losses = [row["val/loss"] for row in history if row.get("val/loss") is not None]
    return round(losses[-1], 6) if losses else None


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write via a temporary file in the same directory, fsync and rename, so a crash or a full
    disk never leaves half a file (the previous file stays whole until the rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 would hide results from the rest of a team
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as error:  # a full disk fails in write(), which names no file: name the target
        Path(tmp).unlink(missing_ok=True)
        raise OSError(error.errno, error.strerror, str(path)) from error
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def git_commit() -> str:
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")
