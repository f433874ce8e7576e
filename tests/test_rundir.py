"""roadmap.rundir: the one owner of the run directory — the layout that every consumer asks for."""
from __future__ import annotations

from pathlib import Path

import pytest

from roadmap.ladder import compose_run
from roadmap.plan import plan_run
from roadmap.rundir import experiment_dir, list_runs, run_dir, run_label
from tests.conftest import SMOKE
from tests.processes import run_python


def _plan(tmp_path: Path, *overrides: str):
    return plan_run(compose_run(["step=gelu", *SMOKE, f"output_root={tmp_path}", *overrides]))


def test_a_run_writes_where_rundir_says(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "variant=lr_half", "seed=3")
    assert plan.out_dir == run_dir(tmp_path, "smoke", "r50", "gelu", "lr_half", 3)
    assert plan.out_dir == experiment_dir(tmp_path, "smoke") / run_label("r50", "gelu", "lr_half", 3)
    assert plan.out_dir.relative_to(tmp_path).parts == ("smoke", "r50", "gelu-lr_half", "seed3")


def test_listing_finds_a_run_by_its_record(tmp_path: Path) -> None:
    out = run_dir(tmp_path, "smoke", "r50", "gelu", "lr_half", 3)
    out.mkdir(parents=True)
    (out / "config.yaml").write_text("step: gelu\nvariant: lr_half\nseed: 3\nregime: {name: r50}\n")
    [run] = list_runs(experiment_dir(tmp_path, "smoke"))
    assert (run.regime, run.rung, run.step, run.variant, run.seed, run.path) == ("r50", "gelu-lr_half", "gelu", "lr_half", 3, out)


def test_two_variants_of_one_rung_get_two_wandb_run_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    from roadmap.wandb_logging import build_wandb_logger

    names = {build_wandb_logger(_plan(tmp_path, "logger=wandb", f"variant={v}"))._wandb_init["name"]
             for v in ("lr_half", "lr_double", "null")}
    assert names == {"smoke/r50/gelu-lr_half/seed0", "smoke/r50/gelu-lr_double/seed0", "smoke/r50/gelu/seed0"}


@pytest.mark.parametrize("key", ["experiment_name", "variant", "step", "regime"])
@pytest.mark.parametrize("value", ["../../escape", "x/../../../../../escape2", ".hidden", "a/b", ""])
def test_a_name_that_is_no_plain_folder_name_is_refused(key: str, value: str) -> None:
    from roadmap.rundir import RunDirError, check_name

    with pytest.raises(RunDirError, match=f"^{key}={value!r} cannot name a folder"):
        check_name(key, value)
    assert check_name(key, "gelu+layer_norm_without_gelu-x.1") == "gelu+layer_norm_without_gelu-x.1"


@pytest.mark.parametrize(("module", "override"), [("roadmap.run", "variant=x/../../../../../escape2"),
                                                  ("roadmap.sweep", "experiment_name=../../escape")])
def test_a_name_that_would_leave_output_root_is_refused_in_one_line(tmp_path: Path, module: str, override: str) -> None:
    args = ["step=gelu"] if module == "roadmap.run" else ["+roadmap=all"]
    proc = run_python(module, [*args, *SMOKE, f"output_root={tmp_path / 'out'}", override], cwd=tmp_path, timeout=300)
    key, value = override.split("=", 1)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"{module}: error: {key}={value!r} cannot name a folder: use letters, digits and _ . , + = - "
        "(no '/', no '..', not starting with '.')"], proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written anywhere


def test_a_lock_of_a_reused_pid_or_a_malformed_lock_is_stale(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import json
    import os
    import platform

    from roadmap.rundir import LOCK_FILE, acquire_lock, lock_holder, process_start

    acquire_lock(tmp_path)
    assert lock_holder(tmp_path)["process_start"] == process_start(os.getpid())  # this live process holds it
    lock = tmp_path / LOCK_FILE
    reused = {"pid": 1, "host": platform.node(), "process_start": "another-boot:123"}  # PID 1 lives, but is not it
    lock.write_text(json.dumps(reused))
    assert lock_holder(tmp_path) is None
    lock.write_text("[1, 2]")
    with caplog.at_level("WARNING", logger="roadmap.rundir"):
        assert lock_holder(tmp_path) is None
    assert caplog.records[0].getMessage() == f"{lock} is not a lock (a JSON object with a pid): treated as stale"


def test_of_two_processes_taking_the_lock_at_once_one_is_refused(tmp_path: Path, monkeypatch) -> None:
    """Both found no lock; the other process writes its lock first: this one's is not laid over it
    (RunBusy), and nothing of this attempt's is left there."""
    import json
    import os
    import platform
    import subprocess
    import sys

    from roadmap import rundir

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    lock = tmp_path / rundir.LOCK_FILE
    first_check = rundir.refuse_if_busy

    def meanwhile(out_dir: Path) -> None:
        first_check(out_dir)
        if not lock.exists():  # the other process locks the run between this one's check and its lock
            lock.write_text(json.dumps({"pid": other.pid, "host": platform.node()}))

    monkeypatch.setattr(rundir, "refuse_if_busy", meanwhile)
    try:
        with pytest.raises(rundir.RunBusy, match=f"already being trained by pid {other.pid}"):
            rundir.acquire_lock(tmp_path)
        assert json.loads(lock.read_text())["pid"] == other.pid
        assert sorted(p.name for p in tmp_path.iterdir()) == [rundir.LOCK_FILE]
    finally:
        other.kill()
        other.wait()
    rundir.acquire_lock(tmp_path)  # the other has ended: its lock is stale and taken over
    assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_a_forced_rerun_never_follows_a_link_left_in_the_run_directory(tmp_path: Path) -> None:
    from roadmap.rundir import RERUN_DIR, Attempt

    out, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    out.mkdir(), elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("not the run's")
    (out / RERUN_DIR).symlink_to(elsewhere)
    attempt = Attempt(out, "rerun")
    attempt.open()
    try:
        assert not (out / RERUN_DIR).exists() and (elsewhere / "keep.txt").is_file()
    finally:
        attempt.close(committed=False)
