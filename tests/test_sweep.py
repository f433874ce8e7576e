"""`python -m roadmap.sweep`, `roadmap.status` and `roadmap.collect` on the mini Imagenette copy."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import roadmap
from roadmap.preset import leave_one_out
from tests.conftest import SMOKE, TINY
from tests.processes import run_python



def cli(module: str, args: list[str], cwd: Path, timeout: float = 1800) -> subprocess.CompletedProcess:
    return run_python(module, args, cwd=cwd, timeout=timeout)


def results(out: Path) -> dict[str, Path]:
    return {p.parent.parent.name: p for p in (out / "smoke" / "r50").glob("*/seed0/result.json")}


@pytest.mark.parametrize("steps", [
    pytest.param(["resnet50", "stage_ratio"], id="two_rungs"),
    pytest.param(None, id="whole_ladder", marks=pytest.mark.slow),  # 13 rungs, ~16 processes: the slow set
])
def test_sweep_survives_sigkill_and_trains_only_missing_rungs(tmp_path: Path, steps: list[str] | None) -> None:
    out = tmp_path / "out"
    chosen = [f"roadmap.steps=[{','.join(steps)}]"] if steps else []
    steps = steps or roadmap.list_steps("r50")
    args = ["+roadmap=all", *chosen, *SMOKE, *TINY, f"output_root={out}"]
    proc = subprocess.Popen([sys.executable, "-m", "roadmap.sweep", *args], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not results(out) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and the rung it was training
    proc.wait()
    first = results(out)
    assert len(first) == 1, f"expected exactly one finished rung when killed, found {sorted(first)}"
    finished = {name: (p.read_bytes(), p.stat().st_mtime_ns) for name, p in first.items()}

    status = cli("roadmap.status", args, tmp_path)
    assert status.returncode == 0, status.stderr[-2000:]
    states = {line.split()[0]: line.split()[1] for line in status.stdout.splitlines()[1:]}
    assert states["r50/resnet50/seed0"] == "done"
    assert set(states.values()) <= {"done", "pending", "interrupted"} and len(states) == len(steps)

    again = cli("roadmap.sweep", args, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(results(out)) == len(steps)
    for name, (content, mtime) in finished.items():
        path = results(out)[name]
        assert path.read_bytes() == content and path.stat().st_mtime_ns == mtime
    log = (out / "smoke" / "sweep.log").read_text()
    started_after_restart = log.split(f"{len(steps)} rungs: 1 done")[-1].count(" start r50/")
    assert started_after_restart == len(steps) - 1

    collected = cli("roadmap.collect", [f"output_root={out}", "experiment=smoke"], tmp_path)
    assert collected.returncode == 0, collected.stderr[-2000:]
    table = pd.read_csv(out / "smoke" / "results.csv")
    assert list(table["step"]) == steps
    assert table["paper_top1"].notna().all() and table["status"].eq("completed").all()
    assert {"per_device_batch", "accumulate", "sync_batchnorm", "top1_ema"} <= set(table.columns)
    assert len(pd.read_parquet(out / "smoke" / "results.parquet")) == len(steps)
    summary = pd.read_csv(out / "smoke" / "summary.csv")
    assert list(summary["n"]) == [1] * len(steps)


def test_failed_rung_does_not_stop_the_others(tmp_path: Path) -> None:
    out = tmp_path / "out"
    broken = out / "smoke" / "r50" / "gelu" / "seed0"
    broken.mkdir(parents=True)
    (broken / "last.ckpt").write_bytes(b"corrupt")
    args = ["+roadmap=all", "roadmap.steps=[gelu,layer_norm]", *SMOKE, f"output_root={out}"]
    proc = cli("roadmap.sweep", args, tmp_path)
    assert proc.returncode == 1
    assert "failed: r50/gelu/seed0" in proc.stderr
    assert json.loads((out / "smoke" / "r50" / "layer_norm" / "seed0" / "result.json").read_text())["status"] == "completed"


def test_a_rung_stopped_by_sigterm_is_interrupted_not_ok(tmp_path: Path) -> None:
    """SIGTERM to a rung mid-training (as `timeout` or SLURM sends it): the rung stops with one line
    and a resumable `interrupted` result; the sweep logs it as interrupted and exits non-zero."""
    out = tmp_path / "out"
    run_dir = out / "smoke" / "r50" / "gelu" / "seed0"
    args = ["+roadmap=all", "roadmap.steps=[gelu]", *SMOKE, "recipe.epochs=30", f"output_root={out}"]
    sweep = subprocess.Popen([sys.executable, "-m", "roadmap.sweep", *args], cwd=tmp_path, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 600
    while not (run_dir / "last.ckpt").exists() and sweep.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(json.loads((run_dir / "running.json").read_text())["pid"], signal.SIGTERM)
    _, stderr = sweep.communicate(timeout=600)
    assert sweep.returncode == 1
    assert "1 rung(s) interrupted (the same command resumes them): r50/gelu/seed0" in stderr
    assert "end   r50/gelu/seed0: interrupted" in (out / "smoke" / "sweep.log").read_text()
    rung_log = (run_dir / "stdout.log").read_text()
    assert "Traceback" not in rung_log
    assert [line for line in rung_log.splitlines() if line.startswith("roadmap.run")] == [
        "roadmap.run: interrupted by SIGTERM; the same command resumes it from last.ckpt: "
        f"python -m roadmap.run {' '.join(args[2:])} regime=r50 step=gelu seed=0"]
    assert json.loads((run_dir / "result.json").read_text())["status"] == "interrupted"


def test_invalid_result_json_is_one_line_naming_the_file(tmp_path: Path) -> None:
    run_dir = tmp_path / "smoke" / "r50" / "gelu" / "seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "result.json").write_text('{"status": "comp')
    for module, args in (("roadmap.collect", ["experiment=smoke"]),
                         ("roadmap.status", ["+roadmap=all", "roadmap.steps=[gelu]", *SMOKE])):
        proc = cli(module, [*args, f"output_root={tmp_path}"], tmp_path)
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "Traceback" not in proc.stderr
        assert f"{run_dir / 'result.json'} is not valid JSON" in proc.stderr


def test_sweep_without_a_preset_lists_the_presets(tmp_path: Path) -> None:
    proc = cli("roadmap.sweep", [*SMOKE, f"output_root={tmp_path}"], tmp_path)
    assert proc.returncode == 2
    assert "+roadmap=<name>" in proc.stderr and "leave_one_out" in proc.stderr


def test_presets_expand_to_the_expected_rungs(tmp_path: Path) -> None:
    proc = cli("roadmap.status", ["+roadmap=seeds", *SMOKE, f"output_root={tmp_path}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = proc.stdout.splitlines()[1:]
    assert len(rows) == 39 and all(r.split()[1] == "pending" for r in rows)
    assert not list(tmp_path.iterdir())  # status only reads: no log file, no directory
    assert rows[0].split()[0] == "r50/resnet50/seed0" and rows[13].split()[0] == "r50/resnet50/seed1"
    assert preset_labels("kernels") == [
        f"r50/{s}/seed0" for s in ["move_up_dwconv", "kernel_5", "kernel_7", "kernel_9", "kernel_11"]]
    assert preset_labels("r200")[4] == "r200/width_128/seed0"
    assert preset_labels("family") == [f"family/convnext_{s}/seed0" for s in ("tiny", "small", "base", "large", "xlarge")]


def preset_labels(preset: str) -> list[str]:
    """The rungs a preset expands to, in order (as status lists them; in process: no planning)."""
    from hydra import compose

    from roadmap.ladder import hydra_context
    from roadmap.preset import expand

    with hydra_context():
        return [rung.label for rung in expand(compose("sweep", [f"+roadmap={preset}", *SMOKE]))[0]]


def test_leave_one_out_takes_each_delta_out_and_names_the_impossible_ones() -> None:
    rungs, impossible = leave_one_out("separate_downsampling", "r50")
    assert set(impossible) == {"depthwise_conv", "inverted_bottleneck", "move_up_dwconv"}
    assert "depthwise" in impossible["depthwise_conv"] and "fewer_norms" in impossible["inverted_bottleneck"]
    chain = roadmap.ladder.step_chain("separate_downsampling")
    assert rungs["separate_downsampling_without_gelu"] == [d for d in chain if d != "gelu"]
    assert rungs["layer_norm"] == chain[:-1]  # taking out the last delta is the previous rung
    assert len(rungs) == 9
    without_gelu = roadmap.build_model(deltas=rungs["separate_downsampling_without_gelu"])
    assert without_gelu.cfg == roadmap.compose_arch("separate_downsampling", overrides={"activation": "relu"})
    for deltas in rungs.values():  # every rung builds and runs
        model = roadmap.build_model(deltas=deltas, num_classes=10, width_mult=0.25)
        assert model(__import__("torch").randn(2, 3, 32, 32)).shape == (2, 10)


def test_local_parallel_runs_rungs_side_by_side(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["+roadmap=all", "roadmap.steps=[gelu,layer_norm]", *SMOKE, f"output_root={out}",
            "launcher=local_parallel", "launcher.max_parallel=2"]
    proc = cli("roadmap.sweep", args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (out / "smoke" / "sweep.log").read_text().splitlines()
    starts = [i for i, line in enumerate(log) if " start r50/" in line]
    first_end = next(i for i, line in enumerate(log) if " end   r50/" in line)
    assert len(starts) == 2 and max(starts) < first_end  # both started before either ended
    assert {json.loads(p.read_text())["status"] for p in results(out).values()} == {"completed"}


@pytest.mark.parametrize(("squeue_says", "expected"), [("PENDING", "queued"), ("RUNNING", "pending"), ("", "pending")])
def test_status_shows_slurm_jobs_waiting_in_the_queue(tmp_path: Path, monkeypatch, squeue_says, expected) -> None:
    """A submitted job that has not started yet (no lock, no result) is `queued`, asked of squeue."""
    from roadmap.rundir import JOB_FILE
    from roadmap.preset import Rung, status_of

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text(f"#!/bin/sh\n[ \"$3\" = 4242 ] && echo '{squeue_says}'\n")
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    rung = Rung(step="gelu", seed=0, regime="r50", out_dir=tmp_path / "run")
    rung.out_dir.mkdir()
    (rung.out_dir / JOB_FILE).write_text(json.dumps({"job_id": "4242", "submitted": 0}))
    assert status_of(rung) == expected


@pytest.mark.parametrize(("slots", "devices_per_run", "runs_per_device", "expected"), [
    (3, 1, 1, ["0", "1", "2"]),
    (4, 1, 2, ["0", "0", "1", "1"]),
    (4, 2, 2, ["0,1", "0,1", "2,3", "2,3"]),
    (3, 1, 3, ["0", "0", "0"]),
])
def test_runs_per_device_share_each_device_group(slots, devices_per_run, runs_per_device, expected) -> None:
    from roadmap.launch import visible_devices

    assert [visible_devices(k, devices_per_run, runs_per_device) for k in range(slots)] == expected


def test_local_parallel_starts_runs_per_device_runs_on_each_gpu(tmp_path: Path, monkeypatch) -> None:
    """launcher.max_parallel=4 runs_per_device=2 on two (simulated) GPUs: four rungs at once, two per GPU."""
    from omegaconf import OmegaConf

    from roadmap import launch, preset

    started: list[str] = []
    ended: list[int] = []  # how many had started when each ended

    class Child:
        def __init__(self, command: list[str], env: dict[str, str], **_: object) -> None:
            started.append(env["CUDA_VISIBLE_DEVICES"])
            self.returncode, self.polls = 0, 0

        def poll(self) -> int | None:
            self.polls += 1
            if len(started) < 4 and self.polls < 100:  # running until all four started (or it never will)
                return None
            ended.append(len(started))
            return 0

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(launch, "_gpu_count", lambda: 2)
    monkeypatch.setattr(launch.subprocess, "Popen", Child)
    monkeypatch.setattr(launch.time, "sleep", lambda _: None)
    steps = ("gelu", "layer_norm", "kernel_7", "width_96")
    rungs = [preset.Rung(step, 0, "r50", out_dir=tmp_path / step) for step in steps]
    launcher = OmegaConf.create({"name": "local_parallel", "max_parallel": 4, "devices_per_run": 1,
                                 "runs_per_device": 2})
    codes = launch.launch_local(rungs, [], launcher, trainer_devices=1)
    assert sorted(started) == ["0", "0", "1", "1"] and ended[0] == 4 and set(codes.values()) == {0}
    with pytest.raises(preset.SweepError, match="launcher.runs_per_device=0 must be an integer >= 1"):
        launch.launch_local(rungs, [], OmegaConf.merge(launcher, {"runs_per_device": 0}), trainer_devices=1)


def test_a_rung_taken_by_another_sweep_meanwhile_is_skipped(tmp_path: Path, monkeypatch) -> None:
    """Two sweeps of one ladder share it: a rung that another process locked (or finished) after this
    sweep planned it is not started again, and the rungs after it still run."""
    import platform

    from omegaconf import OmegaConf

    from roadmap import launch, preset
    from roadmap.rundir import LOCK_FILE

    started: list[str] = []

    class Child:
        def __init__(self, command: list[str], **_: object) -> None:
            started.append(next(a.split("=", 1)[1] for a in command if a.startswith("step=")))
            self.returncode = 0
            if started == ["gelu"]:  # meanwhile, another sweep (a live process: this one) takes kernel_7
                (tmp_path / "kernel_7").mkdir()
                (tmp_path / "kernel_7" / LOCK_FILE).write_text(json.dumps({"pid": os.getpid(), "host": platform.node()}))

        def poll(self) -> int:
            return 0

    monkeypatch.setattr(launch.subprocess, "Popen", Child)
    monkeypatch.setattr(launch.time, "sleep", lambda _: None)
    rungs = [preset.Rung(step, 0, "r50", out_dir=tmp_path / step) for step in ("gelu", "kernel_7", "width_96")]
    codes = launch.launch_local(rungs, [], OmegaConf.create({"name": "local"}), trainer_devices=1)
    assert started == ["gelu", "width_96"]
    assert set(codes) == {"r50/gelu/seed0", "r50/width_96/seed0"}


def test_a_rung_refused_as_busy_is_running_elsewhere_not_failed(tmp_path: Path, monkeypatch, caplog) -> None:
    """Two sweeps started at one moment both start a rung; the one refused by the other's lock (exit
    EXIT_BUSY) logs it as running elsewhere, leaves it out of its exit codes, and goes on."""
    from omegaconf import OmegaConf

    from roadmap import launch, preset
    from roadmap.rundir import EXIT_BUSY

    class Child:
        def __init__(self, command: list[str], **_: object) -> None:
            step = next(a.split("=", 1)[1] for a in command if a.startswith("step="))
            self.returncode = EXIT_BUSY if step == "gelu" else 0

        def poll(self) -> int:
            return self.returncode

    monkeypatch.setattr(launch.subprocess, "Popen", Child)
    monkeypatch.setattr(launch.time, "sleep", lambda _: None)
    rungs = [preset.Rung(step, 0, "r50", out_dir=tmp_path / step) for step in ("gelu", "kernel_7")]
    with caplog.at_level("INFO", logger="roadmap.sweep"):
        codes = launch.launch_local(rungs, [], OmegaConf.create({"name": "local"}), trainer_devices=1)
    assert codes == {"r50/kernel_7/seed0": 0}
    assert "skip  r50/gelu/seed0: running elsewhere (started by another process meanwhile)" in caplog.messages
