"""The run record and the run directory's one contract: result.json's fields (one schema for run,
collect and report), atomic writes, the config hash that decides whether a directory holds "the
same run", where runs live (`list_runs`) and what state one is in (`run_state`)."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from roadmap.model.factory import BUILDER

RESULT_FILE = "result.json"
CONFIG_FILE = "config.yaml"
CHECKPOINT_FILE = "last.ckpt"
METRICS_FILE = "metrics.csv"
JOB_FILE = "slurm_job.json"  # the SLURM job of a rung submitted by launcher=slurm

# Every result.json has these fields (None where a failed run has no value).
RESULT_FIELDS = [
    "experiment", "regime", "step", "variant", "seed", "status", "reason",
    "top1", "top5", "top1_ema", "top5_ema", "top1_max", "top1_ema_max", "train_loss_sum",
    "params", "gmacs", "gmacs_224", "image_size", "dataset", "num_classes",
    "epochs", "optimizer_steps", "global_batch", "per_device_batch", "accumulate", "devices",
    "num_nodes", "sync_batchnorm", "precision", "channels_last", "augment_on", "decode_on", "lr", "lr_scaled",
    "wall_s", "train_img_per_s", "skipped_images", "resumed_from_step", "git_commit", "config_hash",
    "torch_version", "hostname", "finished_at",
]

# Keys that do not change what a run computes: moving data or outputs, logging, rerun flags, and
# how the global batch is executed (per-device batch x accumulation; result.json records both), or
# its augmentation (data.augment_on: the same distribution, tests/test_gpu_augment.py), where JPEGs are
# decoded (data.decode_on) and how the same images are stored (data.format); result.json records
# augment_on and decode_on.
UNHASHED_KEYS = ["output_root", "output_dir", "force", "logger", "data.root", "data.num_workers", "trainer.compile",
    "trainer.compile_mode", "trainer.channels_last", "trainer.diagnostics", "trainer.per_device_batch", "data.in_memory", "data.cache_dir",
    "data.on_bad_image", "data.augment_on", "data.format", "data.decode_on",
]


# Keys added after runs were recorded, with the value every earlier run had: a key holding that
# value hashes as absent, so the recorded runs keep their hashes (model._target_: the builder).
LEGACY_VALUES = {"model.init": "trunc_normal", "recipe.init": "trunc_normal", "model.head_init_scale": 1.0,
                 "model._target_": BUILDER}


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
    and of the regime only its name (its baseline, steps and branches are what made `model`)."""
    canonical = dict(container)
    if "arch" in canonical:
        canonical["model"] = canonical.pop("arch")
    if isinstance(canonical.get("regime"), dict):
        canonical["regime"] = {"name": canonical["regime"].get("name")}
    return canonical


def config_hash(cfg: DictConfig) -> str:
    """A short hash of what the run computes (`canonical_config`). Null values count as absent,
    so adding an optional key (default null) to the configs later leaves recorded runs' hashes unchanged."""
    container = _drop_nulls(canonical_config(OmegaConf.to_container(cfg, resolve=True)))
    for dotted in UNHASHED_KEYS:
        _pop_dotted(container, dotted)
    for dotted, value in LEGACY_VALUES.items():
        _pop_dotted(container, dotted, only_if=value)
    canonical = json.dumps(container, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def recorded_config_hash(out_dir: Path) -> str | None:
    """The config hash of the run recorded in out_dir, recomputed from its config.yaml under the
    current rules (so a key later declared unhashed, such as trainer.channels_last, does not turn
    recorded runs into conflicts); the stored hash where there is no config.yaml; None if empty."""
    config_path = out_dir / CONFIG_FILE
    if config_path.is_file():
        recorded = OmegaConf.load(config_path)
        stored = recorded.pop("config_hash", None)
        return config_hash(recorded) if len(recorded) else stored
    result = read_result(out_dir)
    return None if result is None else result.get("config_hash")


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    """The run's metrics.csv, one row per epoch in order (across attempts: a rerun epoch keeps its
    last row), values as floats (None where empty); [] when there is none yet."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    by_epoch: dict[int, dict[str, Any]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            by_epoch[int(row["epoch"])] = {k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
    return [by_epoch[e] for e in sorted(by_epoch)]


def train_loss_sum(history: Iterable[dict[str, Any]]) -> float | None:
    """Sum over the run's epochs of the epoch's mean training loss (metrics.csv's `train/loss`, so
    a resumed run counts each epoch once); None when no epoch has one."""
    losses = [row["train/loss"] for row in history if row.get("train/loss") is not None]
    return round(sum(losses), 6) if losses else None


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


def write_result(out_dir: Path, record: dict[str, Any]) -> None:
    if record.get("status") == "completed" and record.get("top1") is None:
        raise ValueError(f"refusing to record {out_dir} as completed without a top-1 accuracy")
    full = {name: record.get(name) for name in RESULT_FIELDS}
    full.update({k: v for k, v in record.items() if k not in full})
    write_atomic(out_dir / RESULT_FILE, json.dumps(full, indent=2) + "\n")


def read_result(out_dir: Path) -> dict[str, Any] | None:
    """result.json of out_dir, None if absent; ValueError naming the file if it is not a result."""
    path = out_dir / RESULT_FILE
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); move it away to rerun this run") from error
    if not isinstance(result, dict) or "status" not in result:
        raise ValueError(f"{path} is not a run result (a JSON object with a status); move it away to rerun this run")
    return result


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


LOCK_FILE = "running.json"
LOCK_STALE_S = 600  # a lock from another host that has not been refreshed this long is stale


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_holder(out_dir: Path) -> dict[str, Any] | None:
    """The live process that holds the run's lock, or None (no lock, or a dead/stale one)."""
    import platform
    import time

    path = out_dir / LOCK_FILE
    try:
        holder = json.loads(path.read_text())
        age = time.time() - path.stat().st_mtime
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if holder.get("host") == platform.node():
        return holder if _pid_alive(int(holder.get("pid", -1))) else None
    return holder if age < LOCK_STALE_S else None


def acquire_lock(out_dir: Path) -> None:
    """Mark the run as running; refuse if another live process runs it (a requeued SLURM job
    takes over its own earlier lock)."""
    import platform
    import time

    holder = lock_holder(out_dir)
    job = os.environ.get("SLURM_JOB_ID")
    if holder is not None and holder.get("pid") != os.getpid() and not (job and holder.get("slurm_job_id") == job):
        raise RuntimeError(
            f"{out_dir} is already being trained by pid {holder.get('pid')} on {holder.get('host')} "
            f"(since {holder.get('started')}); wait for it or stop it"
        )
    record = {"pid": os.getpid(), "host": platform.node(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "slurm_job_id": job}
    write_atomic(out_dir / LOCK_FILE, json.dumps(record) + "\n")


def refresh_lock(out_dir: Path) -> None:
    path = out_dir / LOCK_FILE
    if path.is_file():
        os.utime(path)


def release_lock(out_dir: Path) -> None:
    (out_dir / LOCK_FILE).unlink(missing_ok=True)


@dataclass(frozen=True)
class RunDir:
    """One run directory, <experiment>/<regime>/<rung>/seed<k>/ (`rung` = train.yaml's
    `${rung_dir:${step},${variant}}`); its identity is read from its config.yaml or result.json,
    the directory's names only where neither is there yet."""

    regime: str
    rung: str
    step: str
    variant: str | None
    seed: int
    path: Path


def list_runs(experiment_dir: Path) -> list[RunDir]:
    """Every run directory under experiment_dir that holds a config, a result or metrics, sorted by path."""
    runs = []
    for path in sorted(Path(experiment_dir).glob("*/*/seed*")):
        if not any((path / name).is_file() for name in (CONFIG_FILE, RESULT_FILE, METRICS_FILE)):
            continue
        identity = _identity(path)
        step, _, variant = path.parent.name.partition("-")
        runs.append(RunDir(
            regime=str(identity.get("regime") or path.parent.parent.name), rung=path.parent.name,
            step=str(identity.get("step") or step), variant=identity.get("variant", variant) or None,
            seed=int(identity.get("seed", path.name.removeprefix("seed"))), path=path,
        ))
    return runs


def _identity(path: Path) -> dict[str, Any]:
    try:
        result = read_result(path)
    except ValueError:
        result = None
    if result is not None:
        return result
    if (path / CONFIG_FILE).is_file():
        config = OmegaConf.load(path / CONFIG_FILE)
        return {"regime": OmegaConf.select(config, "regime.name"), "step": config.get("step"),
                "variant": config.get("variant"), "seed": config.get("seed")}
    return {}


def run_state(out_dir: Path, expected_hash: str) -> str:
    """done | failed | running | queued (its SLURM job waits) | interrupted (stopped by a signal, or
    has last.ckpt) | pending | conflict (it holds a run of another config than `expected_hash`)."""
    try:
        result = read_result(out_dir)
        recorded = recorded_config_hash(out_dir)
    except ValueError:
        return "failed"
    if recorded is not None and recorded != expected_hash:
        return "conflict"
    if lock_holder(out_dir) is not None:
        return "running"
    if result is not None and result.get("status") != "interrupted":
        return "done" if result.get("status") == "completed" else "failed"
    if queued_job(out_dir) is not None:
        return "queued"
    return "interrupted" if (out_dir / CHECKPOINT_FILE).is_file() else "pending"


def queued_job(out_dir: Path) -> str | None:
    """The id of the rung's SLURM job while it waits in the queue (squeue: PENDING, CONFIGURING,
    REQUEUED), else None (no job file, no squeue, or the job is running or gone)."""
    path = out_dir / JOB_FILE
    if not path.is_file():
        return None
    job_id = str(json.loads(path.read_text())["job_id"])
    try:
        squeue = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return job_id if squeue.stdout.strip().startswith(("PENDING", "CONFIGURING", "REQUEUE")) else None
