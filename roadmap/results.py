"""The run record: result.json's fields (one schema for run, collect and report), atomic writes,
and the config hash that decides whether a directory holds "the same run"."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

RESULT_FILE = "result.json"
CONFIG_FILE = "config.yaml"
CHECKPOINT_FILE = "last.ckpt"
METRICS_FILE = "metrics.csv"

# Every result.json has these fields (None where a failed run has no value).
RESULT_FIELDS = [
    "experiment", "regime", "step", "variant", "seed", "status", "reason",
    "top1", "top5", "top1_ema", "top5_ema", "top1_max", "top1_ema_max", "train_loss_sum",
    "params", "gmacs", "gmacs_224", "image_size", "dataset", "num_classes",
    "epochs", "optimizer_steps", "global_batch", "per_device_batch", "accumulate", "devices",
    "num_nodes", "sync_batchnorm", "precision", "channels_last", "augment_on", "lr", "lr_scaled",
    "wall_s", "train_img_per_s", "skipped_images", "resumed_from_step", "git_commit", "config_hash",
    "torch_version", "hostname", "finished_at",
]

# Keys that do not change what a run computes: moving data or outputs, logging, rerun flags, and
# how the global batch is executed (per-device batch x accumulation; result.json records both), or
# its augmentation (data.augment_on: the same distribution, tests/test_gpu_augment.py; result.json records it).
UNHASHED_KEYS = ["output_root", "output_dir", "force", "logger", "data.root", "data.num_workers", "trainer.compile",
    "trainer.channels_last", "trainer.diagnostics", "trainer.per_device_batch", "data.in_memory", "data.cache_dir",
    "data.on_bad_image", "data.augment_on",
]


# Keys added after runs were recorded, with the value every earlier run had: a key holding that
# value hashes as absent, so the recorded runs keep their hashes.
LEGACY_VALUES = {
    "model.init": "trunc_normal", "arch.init": "trunc_normal", "recipe.init": "trunc_normal",
    "model.head_init_scale": 1.0, "arch.head_init_scale": 1.0,
}


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


def config_hash(cfg: DictConfig) -> str:
    """A short hash of what the run computes. Null values count as absent, so adding an
    optional key (default null) to the configs later leaves recorded runs' hashes unchanged."""
    container = _drop_nulls(OmegaConf.to_container(cfg, resolve=True))
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
