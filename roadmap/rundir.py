"""The run directory, the one owner of where runs live and what their folders hold.

A run lives in `<output_root>/<experiment>/<regime>/<rung>/seed<k>/`, where `<rung>` is the step,
or `<step>-<variant>` for a named variant (`run_dir`); an experiment's folder also holds its
tables (`results.csv`, …), its `report/` and the sweep's log. This module names every file, lists
the runs of an experiment, tells a run's state, holds its lock, and runs one attempt's lifecycle
(`Attempt`: check, snapshot, lock and run.log, result, promote, restore). No other module builds or
globs a run path: commands, the sweep, collect, report and the W&B run name ask it.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from roadmap.results import RESULT_FIELDS, config_hash, read_metrics_csv, write_atomic
from roadmap.tasks import headline

# A run's files.
CONFIG_FILE = "config.yaml"
RESULT_FILE = "result.json"
CHECKPOINT_FILE = "last.ckpt"
METRICS_FILE = "metrics.csv"
PREVIOUS_METRICS_FILE = "previous_metrics.csv"  # a completed forced rerun keeps the old curve here
RUN_LOG = "run.log"
STDOUT_LOG = "stdout.log"  # the sweep's capture of a rung's output
LOGS_DIR = "logs"  # Lightning's CSV logger, one version per attempt
LOCK_FILE = "running.json"
JOB_FILE = "slurm_job.json"  # the SLURM job of a rung submitted by launcher=slurm
RERUN_DIR = "rerun"  # a forced rerun of a completed run trains here; its files replace the old ones once it completes

# An experiment's files.
RESULTS_CSV = "results.csv"
RESULTS_PARQUET = "results.parquet"
SUMMARY_CSV = "summary.csv"
REPORT_DIR = "report"
REPORT_MD = "ladder.md"  # the report's tables and figure links, in REPORT_DIR
SLURM_DIR = "slurm"  # submitit's logs and pickles

LOCK_STALE_S = 600  # a lock from another host that has not been refreshed this long is stale
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's, as on the console
# What to do with a run file that cannot be read: without it the run's other files still say which
# run it is (result.json or config.yaml its config hash, last.ckpt its config), and the run goes on.
MOVE_AWAY = "move it away to rerun this run"


# A name that becomes a folder: no separator, no "..", not hidden (a rung's name may hold + and =).
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.,+=-]*")

log = logging.getLogger("roadmap.rundir")


class RunDirError(ValueError):
    """A run directory that cannot be used: a name that would leave output_root, or a directory that
    holds something else than this run (names the key or the directory, and what to do)."""


def check_name(key: str, value: object) -> str:
    """`value` as a folder name, or RunDirError naming the key: nothing may write outside output_root."""
    name = str(value)
    if not SAFE_NAME.fullmatch(name) or ".." in name:
        raise RunDirError(f"{key}={value!r} cannot name a folder: use letters, digits and _ . , + = - "
                          "(no '/', no '..', not starting with '.')")
    return name


# ---- the layout ---------------------------------------------------------------------------------

def rung_dir(step: str, variant: str | None = None) -> str:
    """A rung's directory name: the step, or `<step>-<variant>` for a named variant."""
    return step if variant in (None, "", "null") else f"{step}-{variant}"


def refuse_unsafe_names(prog: str, argv: Sequence[str]) -> None:
    """Exit 2 with one line when the command line gives a name that cannot be a folder, before Hydra
    creates any folder from it (the sweep's log folder, the report's)."""
    for arg in argv[1:]:
        key, given, value = arg.lstrip("+~").partition("=")
        if given and key in ("experiment_name", "variant", "step", "regime") and value not in ("", "null"):
            try:
                check_name(key, value)
            except RunDirError as error:
                print(f"{prog}: error: {error}", file=sys.stderr)
                sys.exit(2)


def experiment_dir(output_root: str | Path, experiment: str) -> Path:
    return Path(output_root) / check_name("experiment_name", experiment)


def run_label(regime: str, step: str, variant: str | None, seed: int) -> str:
    """A run's path inside its experiment, `<regime>/<rung>/seed<k>` (the sweep's labels)."""
    return f"{regime}/{rung_dir(step, variant)}/seed{seed}"


def run_dir(output_root: str | Path, experiment: str, regime: str, step: str, variant: str | None, seed: int) -> Path:
    """The run's directory: deterministic, so a resumed or requeued run finds its last.ckpt. Every
    name is checked (`check_name`), and the path must stay inside output_root."""
    check_name("regime", regime), check_name("step", step), check_name("seed", seed)
    if variant not in (None, "", "null"):
        check_name("variant", variant)
    path = experiment_dir(output_root, experiment) / run_label(regime, step, variant, seed)
    if not Path(os.path.normpath(path)).is_relative_to(os.path.normpath(output_root)):
        raise RunDirError(f"the run directory {path} is outside output_root={output_root}")
    return path


def experiment_run(init_from: str, output_root: str | Path, regime: str, step: str, seed: int) -> Path | None:
    """`init_from` naming an experiment (its folder, or its name under output_root: a folder holding
    `<regime>/` and no last.ckpt) → that experiment's run of rung `step` (no variant) and `seed`; None
    when it names a run directory or a file."""
    for folder in (Path(init_from).expanduser(), Path(output_root) / init_from):
        if folder.is_dir() and not (folder / CHECKPOINT_FILE).is_file() and (folder / regime).is_dir():
            return folder / run_label(regime, step, None, seed)
    return None


def run_name(experiment: str, regime: str, step: str, variant: str | None, seed: int) -> str:
    """A run's name for trackers (W&B): unique per run directory, variants included."""
    return f"{experiment}/{run_label(regime, step, variant, seed)}"


for _name, _resolver in (("run_dir", lambda *parts: str(run_dir(*parts))),
                         ("experiment_dir", lambda *parts: str(experiment_dir(*parts)))):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolver)


def experiments_with(output_root: str | Path, filename: str) -> list[str]:
    """The experiment folders under output_root that hold `filename` (e.g. RESULTS_CSV)."""
    return sorted(p.parent.name for p in Path(output_root).glob(f"*/{filename}"))


# ---- a run's record -------------------------------------------------------------------------------

def read_result(out_dir: Path) -> dict[str, Any] | None:
    """result.json of out_dir, None if absent; ValueError naming the file if it is not a result."""
    path = Path(out_dir) / RESULT_FILE
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); {MOVE_AWAY}") from error
    if not isinstance(result, dict) or "status" not in result:
        raise ValueError(f"{path} is not a run result (a JSON object with a status); {MOVE_AWAY}")
    return result


def write_result(out_dir: Path, record: dict[str, Any]) -> None:
    """result.json with every field of RESULT_FIELDS (None where unknown), then any others."""
    metric = headline(record.get("task") or "classification")
    if record.get("status") == "completed" and record.get(metric) is None and record.get("validated", True):
        raise ValueError(f"refusing to record {out_dir} as completed without its {metric}")
    full = {name: record.get(name) for name in RESULT_FIELDS}
    full.update({k: v for k, v in record.items() if k not in full})
    write_atomic(Path(out_dir) / RESULT_FILE, json.dumps(full, indent=2) + "\n")


def read_history(out_dir: Path) -> list[dict[str, Any]]:
    """The run's metrics.csv, one row per epoch (see `results.read_metrics_csv`); [] when none yet."""
    return read_metrics_csv(Path(out_dir) / METRICS_FILE)


def read_config(out_dir: Path) -> DictConfig | None:
    """config.yaml of out_dir, None if absent; ValueError naming the file if it is not a run config
    (bad YAML, a tag such as `!!python/object`: the loader is safe and refuses it)."""
    path = Path(out_dir) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        config = OmegaConf.load(path)
        if isinstance(config, DictConfig):  # written resolved: an interpolation that does not resolve is damage
            config = OmegaConf.create(OmegaConf.to_container(config, resolve=True))
    except (yaml.YAMLError, OmegaConfBaseException, UnicodeDecodeError, ValueError) as error:
        why = getattr(error, "problem", None) or str(error).splitlines()[0]  # a YAML error's problem, without its context
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ValueError(f"{path} is not a readable run config ({why}{where}); {MOVE_AWAY}") from error
    if not isinstance(config, DictConfig):
        raise ValueError(f"{path} is not a run config (a YAML mapping); {MOVE_AWAY}")
    return config


def check_record(out_dir: Path) -> None:
    """ValueError naming result.json or config.yaml of out_dir when it cannot be read (see `run_state`'s corrupt)."""
    read_result(out_dir)
    read_config(out_dir)


def recorded_config_hash(out_dir: Path) -> str | None:
    """The config hash of the run recorded in out_dir, recomputed from its config.yaml under the
    current rules (so a key later declared unhashed, such as trainer.channels_last, does not turn
    recorded runs into conflicts); the stored hash where there is no config.yaml; None if empty."""
    recorded = read_config(out_dir)
    if recorded is not None:
        stored = recorded.pop("config_hash", None)
        return config_hash(recorded) if len(recorded) else stored
    result = read_result(out_dir)
    return None if result is None else result.get("config_hash")


# ---- listing an experiment's runs -----------------------------------------------------------------

@dataclass(frozen=True)
class RunDir:
    """One run directory of an experiment; its identity is read from its config.yaml or
    result.json, the directory's names only where neither is there yet."""

    regime: str
    rung: str
    step: str
    variant: str | None
    seed: int
    path: Path

    @property
    def result_file(self) -> Path:
        return self.path / RESULT_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE


def list_runs(experiment: Path) -> list[RunDir]:
    """Every run directory under an experiment folder that holds a config, a result or metrics, by path."""
    runs = []
    for path in sorted(Path(experiment).glob("*/*/seed*")):
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
    """The run's identity from its result.json, else its config.yaml; {} when neither can be read."""
    with contextlib.suppress(ValueError):
        result = read_result(path)
        if result is not None:
            return result
    with contextlib.suppress(ValueError):
        config = read_config(path)
        if config is not None:
            return {"regime": OmegaConf.select(config, "regime.name"), "step": config.get("step"),
                    "variant": config.get("variant"), "seed": config.get("seed")}
    return {}


# ---- a run's state and lock -----------------------------------------------------------------------

def run_state(out_dir: Path, expected_hash: str) -> str:
    """done | failed | running | queued (its SLURM job waits) | interrupted (stopped by a signal, or
    has last.ckpt) | pending | conflict (it holds a run of another config than `expected_hash`) |
    corrupt (its result.json or config.yaml cannot be read: `check_record` names it)."""
    try:
        result = read_result(out_dir)
        recorded = recorded_config_hash(out_dir)
    except ValueError:
        return "corrupt"
    if recorded is not None and recorded != expected_hash:
        return "conflict"
    if lock_holder(out_dir) is not None:
        return "running"
    if result is not None and result.get("status") != "interrupted":
        return "done" if result.get("status") == "completed" else "failed"
    if queued_job(out_dir) is not None:
        return "queued"
    return "interrupted" if (Path(out_dir) / CHECKPOINT_FILE).is_file() else "pending"


def record_job(out_dir: Path, job_id: str) -> None:
    """Remember the SLURM job that runs this rung (`queued_job` asks squeue about it)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / JOB_FILE).write_text(json.dumps({"job_id": job_id, "submitted": time.time()}) + "\n")


def queued_job(out_dir: Path) -> str | None:
    """The id of the rung's SLURM job while it waits in the queue (squeue: PENDING, CONFIGURING,
    REQUEUED), else None (no job file, no squeue, or the job is running or gone)."""
    path = Path(out_dir) / JOB_FILE
    if not path.is_file():
        return None
    job_id = str(json.loads(path.read_text())["job_id"])
    try:
        squeue = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return job_id if squeue.stdout.strip().startswith(("PENDING", "CONFIGURING", "REQUEUE")) else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_start(pid: int) -> str | None:
    """When process `pid` started, as "<boot id>:<start time in clock ticks>" (Linux /proc), so that a
    PID reused after the lock's process ended, or after a reboot, is not taken for it; None elsewhere."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return f"{boot}:{fields[19]}"  # field 22 of stat; the split starts after the command's ")" at field 3


def lock_holder(out_dir: Path) -> dict[str, Any] | None:
    """The live process that holds the run's lock, or None: no lock, a dead or stale one, or a file
    that is not a lock (named in a warning, and treated as stale)."""
    path = Path(out_dir) / LOCK_FILE
    try:
        holder = json.loads(path.read_text())
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        holder, age = error, 0.0
    if not isinstance(holder, dict) or isinstance(holder.get("pid"), bool) or not isinstance(holder.get("pid"), int):
        log.warning("%s is not a lock (a JSON object with a pid): treated as stale", path)
        return None
    if holder.get("host") == platform.node():
        alive = _pid_alive(holder["pid"])
        started = holder.get("process_start")
        return holder if alive and (started is None or started == process_start(holder["pid"])) else None
    return holder if age < LOCK_STALE_S else None


class RunBusy(RuntimeError):
    """Another live process trains this run (roadmap.run exits with EXIT_BUSY: a sweep counts the rung
    as running elsewhere, not as failed)."""


EXIT_BUSY = 75  # sysexits' EX_TEMPFAIL: try later


def refuse_if_busy(out_dir: Path) -> None:
    """RunBusy if another live process holds the run's lock (a requeued SLURM job may take over its own)."""
    holder = lock_holder(out_dir)
    job = os.environ.get("SLURM_JOB_ID")
    if holder is not None and holder.get("pid") != os.getpid() and not (job and holder.get("slurm_job_id") == job):
        raise RunBusy(
            f"{out_dir} is already being trained by pid {holder.get('pid')} on {holder.get('host')} "
            f"(since {holder.get('started')}); wait for it or stop it"
        )


def acquire_lock(out_dir: Path) -> None:
    """Mark the run as running; RunBusy if another live process runs it. The lock appears whole and
    only if none is there (a hard link), so that of two processes starting the run at the same
    moment one gets it and the other is refused; one that is not live (or is ours) is replaced."""
    refuse_if_busy(out_dir)
    path = Path(out_dir) / LOCK_FILE
    record = {"pid": os.getpid(), "host": platform.node(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "process_start": process_start(os.getpid()), "slurm_job_id": os.environ.get("SLURM_JOB_ID")}
    staged = path.with_name(f".{LOCK_FILE}.{os.getpid()}")
    try:
        write_atomic(staged, json.dumps(record) + "\n")
    except OSError as error:  # named as the lock it was to become
        raise OSError(error.errno, error.strerror, str(path)) from error
    try:
        os.link(staged, path)
    except OSError:  # a lock is there (or the file system has no links): taken over only if not live
        refuse_if_busy(out_dir)
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)


def refresh_lock(out_dir: Path) -> None:
    path = Path(out_dir) / LOCK_FILE
    if path.is_file():
        os.utime(path)


def release_lock(out_dir: Path) -> None:
    (Path(out_dir) / LOCK_FILE).unlink(missing_ok=True)


# ---- one attempt at a run ---------------------------------------------------------------------------

def plan_action(out_dir: Path, expected_hash: str, force: bool) -> str:
    """What an attempt does in out_dir: "skip" (completed, same config), "rerun" (completed,
    force=true: trained in RERUN_DIR, promoted once it completes), "resume" (from last.ckpt) or
    "fresh"; RunDirError if the directory holds another config's run, ValueError naming a run file
    that cannot be read (nothing is changed)."""
    check_record(out_dir)  # an unreadable result.json or config.yaml is an error naming it, never overwritten
    state = run_state(out_dir, expected_hash)
    if state == "conflict":
        raise RunDirError(
            f"{out_dir} holds a run with a different config (config_hash {recorded_config_hash(out_dir)}, this one "
            f"{expected_hash}); nothing was changed there. Use another experiment_name, seed or "
            f"output_root, or remove that directory to replace it (compare with its {CONFIG_FILE})."
        )
    if state == "done":
        return "rerun" if force else "skip"
    if (Path(out_dir) / CHECKPOINT_FILE).is_file() and not force:
        read_history(out_dir)  # its result.json will sum the earlier epochs' rows: found before training
        return "resume"
    return "fresh"


class Attempt:
    """One attempt at a run, opened once and closed once: it remembers what the directory held,
    holds the run's lock and its run.log while it trains, writes its result, promotes a forced
    rerun once it completes, and (closed before its first optimizer step) restores the directory
    as it was. `work` is where the attempt trains: the run directory, or its RERUN_DIR."""

    def __init__(self, out_dir: Path, action: str) -> None:
        self.out_dir = Path(out_dir)
        self.action = action
        self.work = self.out_dir / RERUN_DIR if action == "rerun" else self.out_dir
        self._before = _snapshot(self.out_dir)
        self._handler: logging.Handler | None = None
        self._loggers: list[logging.Logger] = []

    @property
    def checkpoint(self) -> Path:
        return self.work / CHECKPOINT_FILE

    def open(self, *loggers: logging.Logger) -> None:
        """Lock the run and open run.log (for the root logger and `loggers`). OSError: the
        directory cannot be written (left as it was); RunBusy: another live process trains it."""
        try:
            acquire_lock(self.out_dir)
            self._handler = logging.FileHandler(self.out_dir / RUN_LOG)
        except OSError:
            with contextlib.suppress(OSError):
                _restore(self.out_dir, self._before)
            raise
        self._handler.setFormatter(logging.Formatter(LOG_FORMAT))
        self._loggers = [logging.getLogger(), *loggers]
        for logger in self._loggers:
            logger.addHandler(self._handler)
        if self.action == "rerun":  # an earlier forced rerun that did not complete (a link is removed, not followed)
            if self.work.is_symlink() or self.work.is_file():
                self.work.unlink()
            shutil.rmtree(self.work, ignore_errors=True)

    def close(self, committed: bool) -> None:
        """Close run.log and release the lock; an attempt that never committed leaves the directory as it was."""
        if self._handler is not None:
            for logger in self._loggers:
                logger.removeHandler(self._handler)
            self._handler.close()
        release_lock(self.out_dir)
        if not committed:
            _restore(self.out_dir, self._before)

    def record(self, record: dict[str, Any]) -> None:
        """A failed or interrupted attempt's result.json (in `work`: a rerun keeps the completed one)."""
        write_result(self.work, record)

    def complete(self, record: dict[str, Any]) -> None:
        """The completed run's result.json; a forced rerun's files replace the old run's first."""
        if self.action == "rerun":
            _promote(self.work, self.out_dir)
        write_result(self.out_dir, record)
        if self.action == "rerun":
            shutil.rmtree(self.work)


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


def _promote(work: Path, out: Path) -> None:
    """A completed forced rerun's files replace the old run's (its metrics kept aside); result.json is next."""
    if (out / METRICS_FILE).is_file():
        (out / METRICS_FILE).replace(out / PREVIOUS_METRICS_FILE)
    for name in (CONFIG_FILE, CHECKPOINT_FILE, METRICS_FILE):
        if (work / name).is_file():
            (work / name).replace(out / name)
