"""A throw-away one-node SLURM cluster on localhost, for tests.

Core API (no pytest needed)::

    cluster = start_cluster(Path("/tmp/roadmap-slurm"))
    env = {**os.environ, **cluster.env}            # SLURM_CONF for sbatch/squeue/scontrol
    job_id = cluster.sbatch(["--wrap", "hostname"])
    wait_for_state(job_id, {"COMPLETED"}, timeout=30, env=cluster.env)
    cluster.stop()

Everything lives in ``workdir``: slurm.conf, a private munged (own key and socket, named in
slurm.conf through ``AuthInfo``), state/spool dirs, pid files and logs.  No system file is
written; the daemons and the clients find the configuration through ``SLURM_CONF``.  Slurm and
munge come from Debian's ``slurm-wlm`` / ``munge`` packages, installed with apt-get when
``slurmctld`` is missing (root only).

There is no accounting storage, so the real ``sacct`` fails ("Slurm accounting storage is
disabled"): job states come from ``scontrol show job`` (finished jobs stay visible for
``MinJobAge`` = 3600 s).  ``workdir/bin/sacct`` is a small stand-in answering submitit's
``sacct -o JobID,State,NodeList --parsable2 -j ID`` from ``scontrol``; ``cluster.env`` puts it
first on PATH.  Code that calls Slurm tools itself (submitit) must see ``cluster.env`` in
``os.environ`` (``with cluster.activated():`` or ``monkeypatch.setenv``).

One cluster per machine (ports 6817/6818): a machine-wide flock makes a second process wait for
the first one's cluster to stop, rather than kill it.

For pytest, ``conftest.py`` only needs::

    from tests.slurm_cluster import slurm_cluster  # noqa: F401  (session fixture)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Union

__all__ = [
    "SlurmCluster",
    "SlurmClusterError",
    "slurm_available",
    "start_cluster",
    "stop_cluster",
    "requeue",
    "job_state",
    "job_info",
    "wait_for_state",
    "DEFAULT_WORKDIR",
    "slurm_cluster",
]

#: Default home of the test cluster (fixed, so a later run finds and stops stale daemons).
DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "roadmap-slurm"
#: Remembers the workdir of the last cluster started on this machine (whatever its workdir).
_REGISTRY = Path(tempfile.gettempdir()) / "roadmap-slurm-cluster.json"
#: flock()ed by the process whose cluster runs: the ports are machine-wide, so a second test
#: session waits for the first to finish instead of killing its cluster.
_LOCK = Path(tempfile.gettempdir()) / "roadmap-slurm-cluster.lock"
_lock_fd: Optional[int] = None

PARTITION = "debug"
FINISHED_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "PREEMPTED",
        "OUT_OF_MEMORY",
        "BOOT_FAIL",
        "DEADLINE",
    }
)

EnvLike = Optional[Mapping[str, str]]


class SlurmClusterError(RuntimeError):
    """The local cluster could not be installed, started or queried."""


# --------------------------------------------------------------------------- helpers


def _full_env(env: EnvLike) -> Dict[str, str]:
    merged = dict(os.environ)
    if env:
        merged.update(env)
    return merged


def _run(
    cmd: Sequence[str], env: EnvLike = None, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        list(cmd),
        env=_full_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise SlurmClusterError(
            f"{' '.join(cmd)} failed with code {proc.returncode}:\n{proc.stdout}{proc.stderr}"
        )
    return proc


def _tail(path: Path, n: int = 30) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(lines[-n:])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is as good as dead
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    except OSError:
        pass
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _read_pid(pid_file: Path) -> Optional[int]:
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _kill_pid_file(pid_file: Path, expect: str, timeout: float = 20.0) -> None:
    """Terminate the daemon named in ``pid_file`` (only if its command line contains ``expect``)."""
    pid = _read_pid(pid_file)
    if pid is None or not _pid_alive(pid) or expect not in _cmdline(pid):
        pid_file.unlink(missing_ok=True)
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            break
        time.sleep(0.1)
    else:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 5
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    pid_file.unlink(missing_ok=True)


def slurm_available() -> tuple:
    """``(ok, reason)``: whether a local cluster can be started here (for ``pytest.skip``)."""
    if os.name != "posix" or not Path("/proc").is_dir():
        return False, "local SLURM cluster needs Linux"
    have = shutil.which("slurmctld") and shutil.which("slurmd") and shutil.which("munged")
    if os.geteuid() != 0:
        return False, "local SLURM cluster needs root (SlurmUser=root, slurmd)"
    if have:
        return True, ""
    if shutil.which("apt-get"):
        return True, ""
    return False, "slurmctld/munged not installed and no apt-get to install them"


def install_slurm() -> None:
    """Install Debian's slurm-wlm and munge if ``slurmctld`` is missing."""
    if shutil.which("slurmctld") and shutil.which("slurmd") and shutil.which("munged"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SlurmClusterError("slurmctld missing, and cannot apt-get install it (need root + apt)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    lock = ["-o", "DPkg::Lock::Timeout=300"]
    for cmd in (
        ["apt-get", "update", "-qq", *lock],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *lock, "slurm-wlm", "munge"],
    ):
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            raise SlurmClusterError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}")
    if not shutil.which("slurmctld"):
        raise SlurmClusterError("apt-get installed slurm-wlm but slurmctld is still not on PATH")


# --------------------------------------------------------------------------- job queries


def job_info(job_id: Union[str, int], env: EnvLike = None) -> Dict[str, str]:
    """``scontrol show job -o <id>`` parsed into a dict ({} if Slurm no longer knows the job)."""
    proc = _run(["scontrol", "show", "job", "-o", str(job_id)], env=env, check=False)
    if proc.returncode != 0:
        if "Invalid job id" in proc.stderr + proc.stdout:
            return {}
        raise SlurmClusterError(f"scontrol show job {job_id} failed: {proc.stderr.strip()}")
    line = proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else ""
    info: Dict[str, str] = {}
    # values never contain " Key=" but may contain spaces (e.g. Command), so split on keys
    for match in re.finditer(r"(?:^|\s)([A-Za-z:/_]+)=(.*?)(?=\s[A-Za-z:/_]+=|$)", line):
        info[match.group(1)] = match.group(2)
    return info


def job_state(job_id: Union[str, int], env: EnvLike = None) -> str:
    """JobState of a job (e.g. PENDING, RUNNING, COMPLETED), or "UNKNOWN" if Slurm forgot it."""
    return job_info(job_id, env).get("JobState", "UNKNOWN")


def wait_for_state(
    job_id: Union[str, int],
    states: Union[str, Iterable[str]],
    timeout: float = 60.0,
    env: EnvLike = None,
    poll: float = 0.25,
) -> str:
    """Wait until the job's JobState is one of ``states``; return it.

    Raises ``SlurmClusterError`` on timeout, or when the job reaches a finished state that is
    not one of ``states`` (no point waiting any longer).
    """
    wanted = {states} if isinstance(states, str) else set(states)
    wanted = {s.upper() for s in wanted}
    deadline = time.monotonic() + timeout
    state = "UNKNOWN"
    while True:
        info = job_info(job_id, env)
        state = info.get("JobState", "UNKNOWN")
        if state in wanted:
            return state
        if state in FINISHED_STATES:
            raise SlurmClusterError(
                f"job {job_id} ended in {state} (reason {info.get('Reason')}), wanted {sorted(wanted)}"
            )
        if time.monotonic() > deadline:
            raise SlurmClusterError(
                f"job {job_id} still {state} (reason {info.get('Reason')}) after {timeout}s,"
                f" wanted {sorted(wanted)}"
            )
        time.sleep(poll)


def requeue(job_id: Union[str, int], env: EnvLike = None, timeout: float = 30.0) -> None:
    """``scontrol requeue <id>`` then release it at once (``StartTime=now``).

    Slurm puts a requeued job back as PENDING with reason BeginTime (a delayed restart); the
    update lets it start again as soon as the old instance has finished completing.
    """
    _run(["scontrol", "requeue", str(job_id)], env=env)
    release(job_id, env=env, timeout=timeout)


def release(
    job_id: Union[str, int], env: EnvLike = None, timeout: float = 30.0, settle: float = 1.5
) -> None:
    """Let a requeued job (PENDING, reason BeginTime) start now.  Retries while it completes.

    Waits ``settle`` seconds after first seeing the job PENDING: slurmd revokes the old run's
    credential with one-second resolution, and a restart within that same second is refused
    ("Killing non-startable batch JobId=N: Job credential revoked") and ends the job FAILED.
    """
    deadline = time.monotonic() + timeout
    pending_since: Optional[float] = None
    while True:
        info = job_info(job_id, env)
        if info.get("JobState") == "PENDING" and pending_since is None:
            pending_since = time.monotonic()
        if pending_since is not None and time.monotonic() - pending_since < settle:
            last = "settling"
        elif info.get("JobState") == "PENDING":
            proc = _run(
                ["scontrol", "update", f"jobid={job_id}", "StartTime=now"], env=env, check=False
            )
            if proc.returncode == 0:
                return
            last = proc.stderr.strip()
        else:
            last = f"state {info.get('JobState')}"
        if time.monotonic() > deadline:
            raise SlurmClusterError(f"could not release requeued job {job_id}: {last}")
        time.sleep(0.2)


# --------------------------------------------------------------------------- the cluster


@dataclass
class SlurmCluster:
    """A running local cluster.  ``env`` holds what clients need on top of ``os.environ``."""

    workdir: Path
    conf: Path
    partition: str
    node: str
    env: Dict[str, str] = field(default_factory=dict)

    # -- files
    @property
    def slurmctld_log(self) -> Path:
        return self.workdir / "log" / "slurmctld.log"

    @property
    def slurmd_log(self) -> Path:
        return self.workdir / "log" / "slurmd.log"

    @property
    def full_env(self) -> Dict[str, str]:
        """``os.environ`` plus ``env``: pass as ``env=`` to subprocess."""
        return _full_env(self.env)

    @contextlib.contextmanager
    def activated(self):
        """Temporarily put ``env`` into ``os.environ`` (for libraries calling sbatch/sacct)."""
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            yield self
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def logs(self, n: int = 30) -> str:
        parts = []
        for path in (self.slurmctld_log, self.slurmd_log, self.workdir / "munge" / "munged.log"):
            parts.append(f"--- tail of {path}\n{_tail(path, n)}")
        return "\n".join(parts)

    # -- clients
    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a Slurm client command (``cluster.run("squeue")``) against this cluster."""
        return _run(cmd, env=self.env, check=check, timeout=timeout)

    def sbatch(self, args: Sequence[str], cwd: Optional[Path] = None) -> str:
        """``sbatch --parsable -p <partition> *args``; returns the job id."""
        proc = subprocess.run(
            ["sbatch", "--parsable", "-p", self.partition, *args],
            env=self.full_env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
        if proc.returncode != 0:
            raise SlurmClusterError(f"sbatch {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout.strip().split(";")[0]

    def job_state(self, job_id: Union[str, int]) -> str:
        return job_state(job_id, self.env)

    def wait_for_state(self, job_id: Union[str, int], states, timeout: float = 60.0) -> str:
        return wait_for_state(job_id, states, timeout=timeout, env=self.env)

    def requeue(self, job_id: Union[str, int]) -> None:
        requeue(job_id, self.env)

    def release(self, job_id: Union[str, int]) -> None:
        release(job_id, self.env)

    def job_ids(self) -> List[str]:
        proc = self.run("squeue", "-h", "-o", "%i", check=False)
        return proc.stdout.split() if proc.returncode == 0 else []

    def cancel_all(self, timeout: float = 30.0) -> None:
        """scancel every job and wait until none is left running (so no slurmstepd outlives us)."""
        ids = self.job_ids()
        if not ids:
            return
        self.run("scancel", *ids, check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.run("squeue", "-h", "-t", "all", "-o", "%i %T", check=False)
            if proc.returncode != 0:
                return
            live = [l for l in proc.stdout.splitlines() if l.split()[-1] in ("RUNNING", "COMPLETING", "CONFIGURING", "PENDING", "SUSPENDED", "REQUEUED", "STOPPED")]
            if not live:
                return
            time.sleep(0.2)

    def stop(self) -> None:
        """Cancel all jobs, then stop slurmd, slurmctld and munged (by their pid files)."""
        stop_cluster(self.workdir)


def _daemon_pid_files(workdir: Path):
    run = workdir / "run"
    return [
        (run / "slurmd.pid", "slurmd"),
        (run / "slurmctld.pid", "slurmctld"),
        (workdir / "munge" / "munged.pid", "munged"),
    ]


def _registry() -> Dict:
    try:
        return json.loads(_REGISTRY.read_text())
    except (OSError, ValueError):
        return {}


def _acquire_lock(timeout: float) -> None:
    """Take the machine-wide cluster lock (wait up to ``timeout`` s for another process)."""
    global _lock_fd
    if _lock_fd is not None:
        return
    if _registry().get("owner_pid") == os.getpid():
        return  # held by this process through another import of this module
    fd = os.open(str(_LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _lock_fd = fd
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                owner = _registry().get("owner_pid")
                raise SlurmClusterError(
                    f"local SLURM cluster busy: process {owner} still holds {_LOCK} after {timeout}s"
                )
            time.sleep(0.5)


def _release_lock() -> None:
    global _lock_fd
    if _lock_fd is not None:
        try:
            fcntl.flock(_lock_fd, fcntl.LOCK_UN)
        finally:
            os.close(_lock_fd)
            _lock_fd = None


def stop_cluster(workdir: Path = DEFAULT_WORKDIR, _keep_lock: bool = False) -> None:
    """Stop a cluster started in ``workdir`` (no-op when nothing runs there)."""
    workdir = Path(workdir)
    conf = workdir / "slurm.conf"
    ctld_pid = _read_pid(workdir / "run" / "slurmctld.pid")
    if conf.exists() and ctld_pid and _pid_alive(ctld_pid) and "slurmctld" in _cmdline(ctld_pid):
        try:
            SlurmCluster(workdir, conf, PARTITION, "", {"SLURM_CONF": str(conf)}).cancel_all()
        except (SlurmClusterError, subprocess.SubprocessError, OSError):
            pass
    for pid_file, name in _daemon_pid_files(workdir):
        _kill_pid_file(pid_file, name)
    rec = _registry()
    if rec.get("workdir") == str(workdir):
        _REGISTRY.unlink(missing_ok=True)
        if rec.get("owner_pid") == os.getpid() and not _keep_lock:
            _release_lock()


def _cluster_of_this_process() -> Optional[SlurmCluster]:
    """The cluster this very process started and that still runs (None otherwise)."""
    rec = _registry()
    if rec.get("owner_pid") != os.getpid():
        return None
    workdir = Path(rec["workdir"])
    pid = _read_pid(workdir / "run" / "slurmctld.pid")
    if not pid or not _pid_alive(pid) or "slurmctld" not in _cmdline(pid):
        return None
    return SlurmCluster(workdir, workdir / "slurm.conf", rec.get("partition", PARTITION), rec.get("node", ""),
                        dict(rec.get("env") or {"SLURM_CONF": str(workdir / "slurm.conf")}))


def _node_line() -> str:
    """NodeName hardware description from ``slurmd -C`` (RealMemory lowered a little)."""
    proc = subprocess.run(["slurmd", "-C"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.splitlines()[0] if proc.returncode == 0 and proc.stdout else ""
    if not line.startswith("NodeName="):
        return f"NodeName={socket.gethostname().split('.')[0]} CPUs={os.cpu_count() or 1} RealMemory=1000"
    mem = re.search(r"RealMemory=(\d+)", line)
    if mem:
        real = int(mem.group(1))
        line = line.replace(mem.group(0), f"RealMemory={max(256, int(real * 0.9))}")
    return line


def _write_conf(workdir: Path, node: str, node_line: str, ctld_port: int, slurmd_port: int, kill_wait: int) -> Path:
    w = workdir
    # Job ids differ between restarts (state is wiped each time), so caches keyed by job id --
    # e.g. submitit's class-level SlurmJob.watcher -- never confuse jobs of two clusters.
    first_job_id = 1000 + (int(time.time()) % 50_000) * 1000
    conf = f"""\
# Generated by tests/slurm_cluster.py -- a one-node test cluster.
ClusterName=roadmaptest
SlurmctldHost={node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={w}/munge/munge.socket
StateSaveLocation={w}/state
SlurmdSpoolDir={w}/spool
SlurmctldPidFile={w}/run/slurmctld.pid
SlurmdPidFile={w}/run/slurmd.pid
SlurmctldLogFile={w}/log/slurmctld.log
SlurmdLogFile={w}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
MailProg=/bin/true
MinJobAge=3600
FirstJobId={first_job_id}
KillWait={kill_wait}
InactiveLimit=0
SlurmdTimeout=300
{node_line} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""
    path = w / "slurm.conf"
    path.write_text(conf)
    # PlugStackConfig defaults to plugstack.conf next to slurm.conf: keep it empty.
    (w / "plugstack.conf").write_text("")
    return path


_SACCT_SHIM = r"""#!{python}
# sacct stand-in for a cluster without accounting storage (generated by tests/slurm_cluster.py).
# Answers `sacct [-o/--format F1,F2] [-j/--jobs ID[,ID]]... [-P/--parsable2|-p] [-n] [-X]` from
# `scontrol show job -o`, which knows jobs for MinJobAge seconds after they end.
import re, subprocess, sys

args = sys.argv[1:]
fields = ["JobID", "JobName", "Partition", "State", "ExitCode"]
jobs, header, sep, trail = [], True, "|", ""
i = 0
while i < len(args):
    a = args[i]
    def value():
        global i
        if "=" in a and a.startswith("--"):
            return a.split("=", 1)[1]
        i += 1
        return args[i]
    if a in ("-o", "--format") or a.startswith("--format="):
        fields = [f for f in value().split(",") if f]
    elif a in ("-j", "--jobs") or a.startswith("--jobs="):
        jobs += [j for j in value().split(",") if j]
    elif a in ("-n", "--noheader"):
        header = False
    elif a in ("-p", "--parsable"):
        trail = "|"
    elif a in ("-P", "--parsable2"):
        trail = ""
    elif a.startswith("-") and a not in ("-X", "--allocations", "-a", "--allusers", "-D", "--duplicates"):
        # options with a value we ignore (-S/-E/-u/...), keep going
        if "=" not in a and i + 1 < len(args) and not args[i + 1].startswith("-"):
            i += 1
    i += 1

def records(job):
    cmd = ["scontrol", "show", "job", "-o"] + ([job] if job else [])
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        if "Invalid job id" in p.stderr:
            return []
        sys.stderr.write(p.stderr)  # controller unreachable...: fail as sacct would
        sys.exit(1)
    out = []
    for line in p.stdout.splitlines():
        d = dict(m.group(1, 2) for m in re.finditer(r"(?:^|\s)([A-Za-z:/_]+)=(.*?)(?=\s[A-Za-z:/_]+=|$)", line))
        if d:
            out.append(d)
    return out

def job_id(d):
    arr, task = d.get("ArrayJobId"), d.get("ArrayTaskId")
    if arr and task:
        return f"{arr}_[{task}]" if re.search(r"[-,%]", task) else f"{arr}_{task}"
    return d.get("JobId", "")

def get(d, f):
    f = f.lower()
    if f in ("jobid", "jobidraw"):
        return job_id(d) if f == "jobid" else d.get("JobId", "")
    key = {"state": "JobState", "nodelist": "NodeList", "jobname": "JobName", "partition": "Partition",
           "exitcode": "ExitCode", "start": "StartTime", "end": "EndTime", "submit": "SubmitTime",
           "elapsed": "RunTime", "reason": "Reason", "restarts": "Restarts", "user": "UserId",
           "ncpus": "NumCPUs", "nnodes": "NumNodes", "timelimit": "TimeLimit", "workdir": "WorkDir"}.get(f)
    v = d.get(key, "") if key else ""
    if f == "nodelist" and v in ("", "(null)"):
        return "None assigned"
    if f == "user":
        v = v.split("(")[0]
    return v

seen, rows = set(), []
for job in (jobs or [None]):
    for d in records(job):
        jid = job_id(d)
        if jid not in seen:
            seen.add(jid)
            rows.append(sep.join(get(d, f) for f in fields) + trail)
if header:
    print(sep.join(fields) + trail)
for r in rows:
    print(r)
"""


def _write_sacct_shim(workdir: Path) -> Path:
    bindir = workdir / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    path = bindir / "sacct"
    path.write_text(_SACCT_SHIM.replace("{python}", python))
    os.chmod(path, 0o755)
    return bindir


def _start_munged(workdir: Path) -> None:
    mdir = workdir / "munge"
    mdir.mkdir(parents=True, exist_ok=True)
    os.chmod(mdir, 0o755)  # socket must be reachable; key stays 0400
    key = mdir / "munge.key"
    if not key.exists():
        key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o400)
    sock = mdir / "munge.socket"
    proc = subprocess.run(
        [
            "munged",
            "--force",
            f"--socket={sock}",
            f"--key-file={key}",
            f"--log-file={mdir / 'munged.log'}",
            f"--pid-file={mdir / 'munged.pid'}",
            f"--seed-file={mdir / 'munged.seed'}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if proc.returncode != 0:
        raise SlurmClusterError(f"munged failed to start:\n{proc.stdout}\n{_tail(mdir / 'munged.log')}")
    check = subprocess.run(
        f"munge -S {sock} -n | unmunge -S {sock}", shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    if check.returncode != 0 or "Success" not in check.stdout:
        raise SlurmClusterError(f"munge self-test failed:\n{check.stdout}\n{_tail(mdir / 'munged.log')}")


def start_cluster(
    workdir: Path = DEFAULT_WORKDIR,
    timeout: float = 60.0,
    ctld_port: int = 6817,
    slurmd_port: int = 6818,
    kill_wait: int = 5,
    sacct_shim: bool = True,
    lock_timeout: float = 900.0,
) -> SlurmCluster:
    """Install (if needed) and start munged + slurmctld + slurmd with all state in ``workdir``.

    Only one cluster runs per machine (fixed ports): if another live process owns it, this
    waits up to ``lock_timeout`` s for it to stop.  Stale daemons of an earlier run (same
    ``workdir``, or the last one recorded on this machine) are then stopped, and the state wiped, so every call starts a fresh cluster
    whose job ids start at a new, time-derived value (FirstJobId).  Blocks until ``sinfo`` shows the node idle.

    With ``sacct_shim`` (default), ``workdir/bin/sacct`` answers sacct's job-state queries from
    ``scontrol show job`` (there is no accounting storage), and ``env["PATH"]`` starts with
    ``workdir/bin``: this is what lets submitit see job states (FAILED, CANCELLED...).
    """
    ok, reason = slurm_available()
    if not ok:
        raise SlurmClusterError(reason)
    workdir = Path(workdir).resolve()
    _acquire_lock(lock_timeout)
    install_slurm()  # under the lock: two pytest workers' apt-get runs would race for apt's lock

    # stop leftovers: whatever the registry remembers, and anything in this workdir
    previous = _registry().get("workdir")
    if previous and Path(previous) != workdir:
        stop_cluster(Path(previous), _keep_lock=True)
    stop_cluster(workdir, _keep_lock=True)

    for sub in ("state", "spool", "run", "log"):
        shutil.rmtree(workdir / sub, ignore_errors=True)
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o755)

    node_line = _node_line()
    node = node_line.split()[0].split("=", 1)[1]
    conf = _write_conf(workdir, node, node_line, ctld_port, slurmd_port, kill_wait)
    env = {"SLURM_CONF": str(conf)}
    if sacct_shim:
        bindir = _write_sacct_shim(workdir)
        env["PATH"] = f"{bindir}{os.pathsep}{os.environ.get('PATH', os.defpath)}"
    else:
        shutil.rmtree(workdir / "bin", ignore_errors=True)
    cluster = SlurmCluster(workdir=workdir, conf=conf, partition=PARTITION, node=node, env=env)
    _REGISTRY.write_text(json.dumps({"workdir": str(workdir), "owner_pid": os.getpid(), "env": env,
                                     "node": node, "partition": PARTITION}))

    try:
        _start_munged(workdir)
        for cmd in (["slurmctld", "-f", str(conf)], ["slurmd", "-f", str(conf)]):
            proc = subprocess.run(
                cmd, env=cluster.full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60
            )
            if proc.returncode != 0:
                raise SlurmClusterError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}")
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            proc = cluster.run("sinfo", "-h", "-N", "-o", "%N %T", check=False, timeout=20)
            last = (proc.stdout + proc.stderr).strip()
            states = dict(l.split(None, 1) for l in proc.stdout.splitlines() if l.strip())
            if proc.returncode == 0 and states.get(node) == "idle":
                break
            if time.monotonic() > deadline:
                raise SlurmClusterError(
                    f"node {node} not idle after {timeout}s (sinfo: {last!r})\n{cluster.logs()}"
                )
            time.sleep(0.3)
    except BaseException:
        stop_cluster(workdir)
        _release_lock()
        raise
    return cluster


# --------------------------------------------------------------------------- pytest fixture

try:  # the core above does not need pytest
    import pytest
except ImportError:  # pragma: no cover
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture(scope="session")
    def slurm_cluster():
        """Session-wide local cluster (skips the test when it cannot run here).

        Clients must see ``slurm_cluster.env`` (SLURM_CONF): pass ``env=slurm_cluster.full_env``
        to subprocess, or ``monkeypatch.setenv("SLURM_CONF", ...)`` for libraries like submitit
        that call sbatch themselves.
        """
        ok, reason = slurm_available()
        if not ok:  # CI must run the SLURM tests: there a missing cluster is a failure, not a skip
            (pytest.fail if os.environ.get("CI") else pytest.skip)(reason)
        # The fixture may be collected twice (conftest import + a test module import, or the
        # module imported under two names): a second instance reuses the cluster this process
        # already started, and only the instance that started it stops it.
        running = _cluster_of_this_process()
        if running is not None:
            yield running
            return
        workdir = Path(os.environ.get("ROADMAP_SLURM_WORKDIR", str(DEFAULT_WORKDIR)))
        cluster = start_cluster(workdir)
        try:
            yield cluster
        finally:
            cluster.stop()
