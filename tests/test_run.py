"""`python -m roadmap.run` end to end on the mini Imagenette copy, as a user runs it."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from roadmap.results import RESULT_FIELDS
from roadmap.run import execute
from roadmap.tasks import METRICS
from tests.conftest import SMOKE, TINY
from tests.processes import run_python
from tests.test_recipe import compose_run



def run_cli(args: list[str], out: Path, cwd: Path, module: str = "roadmap.run", timeout: int = 600,
            **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", ""), "PYTHONUNBUFFERED": "1"}
    env.pop("WANDB_MODE") if not env["WANDB_MODE"] else None
    return run_python(module, [*args, f"output_root={out}"], cwd=cwd, env=env, timeout=timeout, **kwargs)


def result_of(out: Path, step: str, experiment: str = "smoke", seed: int = 0) -> dict:
    return json.loads((out / experiment / "r50" / step / f"seed{seed}" / "result.json").read_text())


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """One completed smoke run of patchify_stem, run from a directory outside the repository."""
    out = tmp_path_factory.mktemp("out")
    proc = run_cli(["step=patchify_stem", *SMOKE], out, cwd=tmp_path_factory.mktemp("cwd"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_smoke_run_records_every_field(smoke_run) -> None:
    out, _ = smoke_run
    run_dir = out / "smoke" / "r50" / "patchify_stem" / "seed0"
    result = result_of(out, "patchify_stem")
    assert list(result)[: len(RESULT_FIELDS)] == RESULT_FIELDS
    optional = {"reason", "resumed_from_step", "variant", *METRICS["detection"][:6], "miou"}  # a downstream task's
    assert [k for k in RESULT_FIELDS if result[k] is None and k not in optional] == []
    assert result["status"] == "completed" and result["step"] == "patchify_stem"
    assert result["optimizer_steps"] == 4  # 2 epochs x 4 batches / accumulate 2
    assert result["global_batch"] == result["per_device_batch"] * result["accumulate"] * result["devices"]
    assert 0 <= result["top1"] <= 100 and result["params"] > 0 and result["gmacs"] > 0
    assert (run_dir / "last.ckpt").is_file() and (run_dir / "config.yaml").is_file()
    epochs = (run_dir / "metrics.csv").read_text().strip().splitlines()
    assert len(epochs) == 1 + 2  # header + one row per epoch


def test_a_fine_tune_from_a_run_directory_records_its_source(smoke_run, tmp_path: Path) -> None:
    """init_from=<run dir> with its EMA weights: the fine-tune trains and result.json names the source
    (the head swap and the other sources: tests/test_finetune.py); a bad source is one line, exit 2."""
    out, _ = smoke_run
    source = out / "smoke" / "r50" / "patchify_stem" / "seed0"
    args = ["step=patchify_stem", *SMOKE, *TINY, "experiment_name=finetune", f"init_from={source}", "init_from_ema=true",
            "recipe.optimizer.layer_decay=0.8"]
    proc = run_cli(args, tmp_path, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = result_of(tmp_path, "patchify_stem", experiment="finetune")
    assert result["init_from"] == str((source / "last.ckpt").resolve()) and len(result["init_from_sha256"]) == 16
    assert result["init_from_weights"] == "ema" and result["head_reinitialized"] is False
    bad = run_cli(["step=patchify_stem", *SMOKE, *TINY, f"init_from={tmp_path / 'missing.ckpt'}"], tmp_path, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "missing.ckpt: no such file" in bad.stderr


def test_unvalidated_epochs_have_empty_val_columns_and_the_final_validation_fills_the_last_row(tmp_path: Path) -> None:
    """trainer.check_val_every_n_epoch=2 over 3 epochs: epoch 1 is validated in the fit, epoch 0 is
    not (Lightning keeps the last validation's metrics; metrics.csv must not repeat them), and the
    result is the final validation, run after the last epoch and written into its row (so that the
    curves and the best top-1 include it)."""
    import pandas as pd

    args = ["step=patchify_stem", *SMOKE, "recipe.epochs=3", "trainer.check_val_every_n_epoch=2",
            "trainer.deterministic=true", "trainer.validate_first_epoch=false"]
    proc = run_cli(args, tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = pd.read_csv(tmp_path / "out" / "smoke" / "r50" / "patchify_stem" / "seed0" / "metrics.csv")
    assert metrics["val/top1"].notna().tolist() == [False, True, True]
    assert metrics["train/loss"].notna().all()
    result = result_of(tmp_path / "out", "patchify_stem")
    assert result["top1"] == metrics["val/top1"].iloc[-1] and result["val_loss"] == metrics["val/loss"].iloc[-1]
    assert result["top1_max"] == metrics["val/top1"].max() >= result["top1"]

    # Killed after the first (unvalidated) epoch's checkpoint, with rows of later epochs recorded past
    # it (as an attempt stopped between a row and its checkpoint leaves them): resumed, metrics.csv
    # has each epoch once, as the uninterrupted run's.
    out = tmp_path / "killed"
    run_dir = _kill_at_first_checkpoint(args, out, "patchify_stem", tmp_path)
    assert torch.load(run_dir / "last.ckpt", weights_only=True)["epoch"] == 0  # a checkpoint every epoch
    stale = pd.read_csv(run_dir / "metrics.csv").iloc[:1]
    pd.concat([stale, stale.assign(epoch=1, **{"train/loss": 999.0}), stale.assign(epoch=2, **{"train/loss": 999.0})]
              ).to_csv(run_dir / "metrics.csv", index=False)
    resumed = run_cli(args, out, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = pd.read_csv(run_dir / "metrics.csv")
    assert again["epoch"].tolist() == [0, 1, 2]
    assert again["train/loss"].tolist() == metrics["train/loss"].tolist()
    assert again["val/top1"].notna().tolist() == [False, True, True]


@pytest.mark.parametrize("cuda, overrides, per_device, accumulate", [
    (False, [], 64, 2),                                   # trainer=auto on a CPU: trainer=cpu's 64
    (True, [], 128, 1),                                   # on a GPU: trainer=gpu's 128, no accumulation
    (True, ["recipe.global_batch=48"], 48, 1),            # the largest that divides the global batch
    (True, ["trainer.per_device_batch=32"], 32, 4),       # set by the user: kept
    (False, ["trainer=gpu", "trainer.accelerator=cpu", "trainer.precision=32-true"], 128, 1),  # set by a preset
])
def test_per_device_batch_auto_comes_from_the_device(monkeypatch: pytest.MonkeyPatch, cuda, overrides, per_device,
                                                     accumulate) -> None:
    from roadmap.plan import plan_run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    plan = plan_run(compose_run("experiment=imagenette_proxy", *overrides))
    assert (plan.cfg.trainer.per_device_batch, plan.accumulate) == (per_device, accumulate)


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_per_device_batch_auto_ceiling_is_the_trainer_presets(kind: str) -> None:
    from roadmap.plan import AUTO_PER_DEVICE_BATCH

    assert compose_run(f"trainer={kind}").trainer.per_device_batch == AUTO_PER_DEVICE_BATCH[kind]


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compile_mode_reaches_torch_compile_out_of_the_hash(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    from roadmap.classifier import Classifier
    from roadmap.plan import plan_run
    from roadmap.training import build_parts

    modes: list[str] = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kwargs: modes.append(kwargs["mode"]))
    plan = plan_run(compose_run("step=patchify_stem", *SMOKE, "trainer.compile=true", f"trainer.compile_mode={mode}"))
    assert plan.config_hash == plan_run(compose_run("step=patchify_stem", *SMOKE)).config_hash
    parts = build_parts(plan)
    assert modes == [mode]
    # CUDA graphs: each train/eval step starts a new graph iteration.
    steps: list[int] = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: steps.append(1))
    Classifier(parts.model, dict(plan.cfg.recipe), 10, 64, cuda_graphs=True)._images(torch.zeros(1, 3, 8, 8))
    assert steps == [1]


def test_same_command_again_skips_and_leaves_result_untouched(smoke_run, tmp_path: Path) -> None:
    out, _ = smoke_run
    path = out / "smoke" / "r50" / "patchify_stem" / "seed0" / "result.json"
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    proc = run_cli(["step=patchify_stem", *SMOKE], out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "skipping" in proc.stdout + proc.stderr
    assert "Epoch 0" not in proc.stdout + proc.stderr  # no training happened
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime


def test_different_config_in_the_same_directory_is_an_error(smoke_run, tmp_path: Path) -> None:
    out, _ = smoke_run
    path = out / "smoke" / "r50" / "patchify_stem" / "seed0" / "result.json"
    before = path.read_bytes()
    proc = run_cli(["step=patchify_stem", *SMOKE, "recipe.epochs=3"], out, cwd=tmp_path)
    assert proc.returncode == 2
    assert "different config" in proc.stderr
    assert path.read_bytes() == before


def test_memory_layout_is_not_a_different_config(smoke_run, tmp_path: Path) -> None:
    """trainer.channels_last changes no result, so it is out of the hash; a run recorded while it
    was still hashed (stored hash computed under older rules) is recognised from its config.yaml."""
    src, _ = smoke_run
    out = tmp_path / "out"
    shutil.copytree(src, out)
    run_dir = out / "smoke" / "r50" / "patchify_stem" / "seed0"
    config = (run_dir / "config.yaml").read_text()
    assert "channels_last: true" in config
    old_rules = "0123456789abcdef"
    config = config.replace("channels_last: true", "channels_last: false")
    (run_dir / "config.yaml").write_text(config.rsplit("config_hash:", 1)[0] + f"config_hash: {old_rules}\n")
    result = json.loads((run_dir / "result.json").read_text())
    (run_dir / "result.json").write_text(json.dumps({**result, "config_hash": old_rules}))
    proc = run_cli(["step=patchify_stem", *SMOKE, "trainer.channels_last=false"], out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "skipping" in proc.stdout + proc.stderr


def test_corrupt_checkpoint_is_an_error_not_a_restart(smoke_run, tmp_path: Path) -> None:
    src, _ = smoke_run
    out = tmp_path / "out"
    shutil.copytree(src, out)
    run_dir = out / "smoke" / "r50" / "patchify_stem" / "seed0"
    (run_dir / "result.json").unlink()  # as if the run had been killed before finishing
    (run_dir / "last.ckpt").write_bytes(b"not a checkpoint")
    proc = run_cli(["step=patchify_stem", *SMOKE], out, cwd=tmp_path)
    assert proc.returncode == 2
    assert "cannot read checkpoint" in proc.stderr and "last.ckpt" in proc.stderr
    assert (run_dir / "last.ckpt").read_bytes() == b"not a checkpoint"
    assert not (run_dir / "result.json").exists()


def test_checkpoint_loads_with_weights_only(smoke_run) -> None:
    out, _ = smoke_run
    state = torch.load(out / "smoke" / "r50" / "patchify_stem" / "seed0" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 4
    assert any(k.startswith("ema.") for k in state["state_dict"])  # the EMA model is saved and restored


def test_ddp_on_two_cpu_processes(tmp_path: Path) -> None:
    proc = run_cli(["step=gelu", *SMOKE, "trainer=ddp_cpu", "trainer.devices=2"], tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = result_of(tmp_path / "out", "gelu")
    assert result["status"] == "completed" and result["devices"] == 2
    assert result["global_batch"] == 2 * result["per_device_batch"] * result["accumulate"]


def _state_dict(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _start(args: list[str], out: Path, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "roadmap.run", *args, f"output_root={out}"], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be stopped"


def _kill_at_first_checkpoint(args: list[str], out: Path, step: str, cwd: Path) -> Path:
    """Start a smoke run and SIGKILL it once its first last.ckpt is written; its run directory."""
    run_dir = out / "smoke" / "r50" / step / "seed0"
    proc = _start(args, out, cwd)
    _wait_for(run_dir / "last.ckpt", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return run_dir


def test_killed_run_resumes_exactly_from_its_checkpoint(tmp_path: Path) -> None:
    """SIGKILL after an epoch's checkpoint, then the same command: the final weights equal an
    uninterrupted run's bit for bit (RNG states and data order are restored with the checkpoint)."""
    args = ["step=move_up_dwconv", *SMOKE, "recipe.epochs=6", "trainer.deterministic=true"]
    reference = run_cli(args, tmp_path / "uninterrupted", cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr[-2000:]
    expected_steps = result_of(tmp_path / "uninterrupted", "move_up_dwconv")["optimizer_steps"]

    out = tmp_path / "out"
    run_dir = _kill_at_first_checkpoint(args, out, "move_up_dwconv", tmp_path)
    assert not (run_dir / "result.json").exists(), "the run finished before it could be killed"

    resumed = run_cli(args, out, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    result = result_of(out, "move_up_dwconv")
    assert result["resumed_from_step"] and result["resumed_from_step"] > 0
    assert result["optimizer_steps"] == expected_steps
    want = _state_dict(tmp_path / "uninterrupted" / "smoke" / "r50" / "move_up_dwconv" / "seed0" / "last.ckpt")
    got = _state_dict(run_dir / "last.ckpt")
    assert want.keys() == got.keys()
    assert [k for k in want if not torch.equal(want[k], got[k])] == []


def test_unknown_step_lists_valid_steps(tmp_path: Path) -> None:
    proc = run_cli(["step=patchify", *SMOKE], tmp_path, cwd=tmp_path)
    assert proc.returncode == 2
    assert "step='patchify'" in proc.stderr and "patchify_stem" in proc.stderr


def test_batch_that_does_not_divide_is_an_error(tmp_path: Path) -> None:
    proc = run_cli(["step=gelu", *SMOKE, "trainer.per_device_batch=6"], tmp_path, cwd=tmp_path)
    assert proc.returncode == 2
    assert "recipe.global_batch=16" in proc.stderr and "trainer.per_device_batch=6" in proc.stderr


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    proc = run_cli(["step=gelu", *SMOKE, "model.kernal_size=5"], tmp_path, cwd=tmp_path)
    assert proc.returncode != 0
    assert "kernal_size" in proc.stderr


def test_missing_data_root_is_a_clear_error(tmp_path: Path) -> None:
    proc = run_cli(["step=gelu", "experiment=smoke", f"data.root={tmp_path}/nowhere", "data.download=false"],
                   tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 2
    assert "data.root" in proc.stderr and "nowhere" in proc.stderr
    assert not list((tmp_path / "out").rglob("result.json"))


def test_nan_loss_stops_with_a_failed_result(tmp_path: Path) -> None:
    proc = run_cli(["step=layer_norm", *SMOKE, "recipe.optimizer.base_lr=1e30"], tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 1
    result = result_of(tmp_path / "out", "layer_norm")
    assert result["status"] == "failed"
    assert "NonFiniteLossError" in result["reason"] and "loss" in result["reason"]


def test_wandb_logger_runs_offline_without_an_api_key(tmp_path: Path) -> None:
    env_home = tmp_path / "home"
    env_home.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "roadmap.run", "step=gelu", *SMOKE, "logger=wandb", "recipe.epochs=1",
         f"output_root={tmp_path / 'out'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={k: v for k, v in {**os.environ, "HOME": str(env_home)}.items() if not k.startswith("WANDB_")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list((tmp_path / "out").rglob("offline-run-*")), "no offline wandb run directory"


def copy_run(smoke_run, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the completed smoke run: (output root, run directory)."""
    out = tmp_path / "out"
    shutil.copytree(smoke_run[0], out)
    return out, out / "smoke" / "r50" / "patchify_stem" / "seed0"


def one_line(stderr: str) -> str:
    """The run's message: one line, no traceback."""
    lines = [line for line in stderr.splitlines() if line.startswith("roadmap.")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def test_plain_progress_lines_when_stdout_is_not_a_terminal(smoke_run) -> None:
    _, proc = smoke_run
    assert "\r" not in proc.stdout + proc.stderr  # no progress bar in a log
    assert "exists and is not empty" not in proc.stderr
    progress = [line for line in proc.stdout.splitlines() if "img/s" in line and "batch 4/4" in line]
    assert len(progress) == 2 and "loss" in progress[0]  # one per epoch here (4 batches < log_every_n_steps)


def test_checkpoint_of_the_last_epoch_without_history_is_evaluated(smoke_run, tmp_path: Path) -> None:
    """A last.ckpt copied in with no metrics.csv and no result: nothing to train, yet the result
    holds the checkpointed model's accuracy, never a completed run with top-1 null."""
    out, run_dir = copy_run(smoke_run, tmp_path)
    expected = result_of(smoke_run[0], "patchify_stem")
    (run_dir / "result.json").unlink()
    (run_dir / "metrics.csv").unlink()
    proc = run_cli(["step=patchify_stem", *SMOKE], out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = result_of(out, "patchify_stem")
    assert result["status"] == "completed" and result["optimizer_steps"] == 4
    assert (result["top1"], result["top5"], result["top1_ema"]) == (expected["top1"], expected["top5"], expected["top1_ema"])


def test_halving_the_per_device_batch_resumes_the_same_run(smoke_run, tmp_path: Path) -> None:
    """After an out-of-memory error the fix is trainer.per_device_batch=<half>: the same run (the
    global batch is what it computes), finished from its history; the result records the new split."""
    out, run_dir = copy_run(smoke_run, tmp_path)
    expected = result_of(smoke_run[0], "patchify_stem")
    (run_dir / "result.json").unlink()  # a crash between the last checkpoint and result.json
    proc = run_cli(["step=patchify_stem", *SMOKE, "trainer.per_device_batch=4"], out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = result_of(out, "patchify_stem")
    assert result["status"] == "completed" and result["top1"] == expected["top1"]
    assert (result["per_device_batch"], result["accumulate"], result["global_batch"]) == (4, 4, 16)


def test_checkpoint_of_another_run_is_refused(smoke_run, tmp_path: Path) -> None:
    out, run_dir = copy_run(smoke_run, tmp_path)
    for step, seed in (("patchify_stem", 1), ("gelu", 0)):  # another seed's, another rung's
        other = out / "smoke" / "r50" / step / f"seed{seed}"
        other.mkdir(parents=True)
        shutil.copy(run_dir / "last.ckpt", other / "last.ckpt")
        proc = run_cli([f"step={step}", *SMOKE, f"seed={seed}"], out, cwd=tmp_path)
        assert proc.returncode == 2
        line = one_line(proc.stderr)
        assert "belongs to another run" in line and "seed=0" in line and "step=patchify_stem" in line
        assert sorted(p.name for p in other.iterdir()) == ["last.ckpt"]


@pytest.mark.parametrize(("override", "says"), [
    ("recipe.epochs=abc", "recipe.epochs='abc' must be an integer >= 1"),
    ("recipe.epochs=-1", "recipe.epochs=-1 must be an integer >= 1"),
    ("recipe.epochs=0", "recipe.epochs=0 must be an integer >= 1"),
    ("recipe.global_batch=0", "recipe.global_batch=0 must be an integer >= 1"),
    ("recipe.optimizer.weight_decay=abc", "recipe.optimizer.weight_decay='abc' must be a number >= 0"),
    ("recipe.optimizer.normalized_weight_decay=-1", "normalized_weight_decay=-1 must be a number >= 0 or null"),
    ("recipe.optimizer.name=lamb", "recipe.optimizer.name='lamb' is not supported; valid: ['adamw', 'sgd']"),
    ("data.image_size=16", "data.image_size=16 is smaller than the rung's total stride 32"),
    ("data.num_classes=100", "data.num_classes=100 but"),
    ("data.format=tar", "data.format='tar' is not a format; use one of ('auto', 'folder', 'shards')"),
    ("data.decode_on=gpu", "data.decode_on=gpu "),  # no CUDA here; with CUDA, the smoke recipe's RandAugment
    ("trainer.compile_mode=fast", "trainer.compile_mode='fast' is not a torch.compile mode; valid: ['default', "),
])
def test_a_bad_value_is_one_line_and_writes_nothing(capsys, tmp_path: Path, override, says) -> None:
    out = tmp_path / "out"
    code = execute(compose_run("step=patchify_stem", *SMOKE, override, f"output_root={out}"))
    assert code == 2
    assert says in one_line(capsys.readouterr().err)
    assert not out.exists()


OOM_LIMIT = 6 * 2**30  # bytes of address space: enough to start, not for a batch of 16 at 1024 px


def _limit_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (OOM_LIMIT, OOM_LIMIT))


def test_out_of_memory_names_the_batch_to_use_and_leaves_the_directory_as_it_was(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["step=patchify_stem", *SMOKE, "data.image_size=1024", "trainer.per_device_batch=16", "recipe.epochs=1"]
    proc = run_cli(args, out, cwd=tmp_path, preexec_fn=_limit_memory)
    assert proc.returncode == 1
    line = one_line(proc.stderr)
    assert "out of memory at trainer.per_device_batch=16" in line and "trainer.per_device_batch=8" in line
    assert not (out / "smoke").exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_is_an_interruption_with_one_line_and_a_resumable_result(tmp_path: Path, signum) -> None:
    """Ctrl-C, `timeout` and SLURM signal the whole process group, DataLoader workers included."""
    out = tmp_path / "out"
    run_dir = out / "smoke" / "r50" / "gelu" / "seed0"
    proc = _start(["step=gelu", *SMOKE, "recipe.epochs=30", "data.num_workers=2"], out, tmp_path)
    _wait_for(run_dir / "last.ckpt", proc)
    os.killpg(proc.pid, signum)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == -signum
    line = one_line(stderr)
    assert f"interrupted by {signal.Signals(signum).name}; the same command resumes it from last.ckpt" in line
    assert "python -m roadmap.run step=gelu" in line
    assert result_of(out, "gelu")["status"] == "interrupted"
    assert (run_dir / "last.ckpt").is_file() and not (run_dir / "running.json").exists()


SIGNAL_RACE = """
import os, signal
from roadmap.signals import Interrupted, raise_on_signals
signal.signal(signal.SIGCHLD, lambda *_: None)  # stands in for the DataLoader's handler
raise_on_signals()
both = {signal.SIGTERM, signal.SIGCHLD}
signal.pthread_sigmask(signal.SIG_BLOCK, both)
os.kill(os.getpid(), signal.SIGTERM)  # the signal, and a worker it killed, arrive together
os.kill(os.getpid(), signal.SIGCHLD)
try:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, both)
    sum(range(1000))
except Interrupted as stop:
    sum(range(1000))  # the cleanup: Python handles the pending SIGCHLD here
    print("interrupted by", stop)
"""


def test_a_signal_pending_when_the_interruption_starts_prints_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", SIGNAL_RACE], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout == "interrupted by SIGTERM\n", proc.stderr
    assert proc.stderr == ""


def test_a_forced_rerun_that_stops_keeps_the_completed_result(smoke_run, tmp_path: Path) -> None:
    out, run_dir = copy_run(smoke_run, tmp_path)
    kept = {name: (run_dir / name).read_bytes() for name in ("result.json", "metrics.csv", "last.ckpt", "config.yaml")}
    proc = _start(["step=patchify_stem", *SMOKE, "force=true"], out, tmp_path)
    _wait_for(run_dir / "rerun" / "last.ckpt", proc)  # the rerun's first epoch is done
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGTERM
    assert "result.json" in one_line(stderr) and "is kept" in one_line(stderr)
    assert {name: (run_dir / name).read_bytes() for name in kept} == kept
    again = run_cli(["step=patchify_stem", *SMOKE], out, cwd=tmp_path)
    assert again.returncode == 0 and "skipping" in again.stdout + again.stderr


def _mount_tmpfs(path: Path, options: str) -> None:
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("needs to mount a tmpfs (root)")


@pytest.fixture()
def mounts(tmp_path: Path):
    mounted: list[Path] = []

    def mount(name: str, options: str) -> Path:
        _mount_tmpfs(tmp_path / name, options)
        mounted.append(tmp_path / name)
        return tmp_path / name

    yield mount
    for path in mounted:
        subprocess.run(["umount", str(path)], check=False)


def test_full_disk_loses_nothing_and_says_so_in_one_line(smoke_run, tmp_path: Path, mounts) -> None:
    checkpoint = (smoke_run[0] / "smoke" / "r50" / "patchify_stem" / "seed0" / "last.ckpt").stat().st_size
    out = mounts("full", f"size={int(checkpoint * 1.5) // 1024}k")  # room for one checkpoint, not for two
    proc = run_cli(["step=patchify_stem", *SMOKE], out, cwd=tmp_path)
    assert proc.returncode == 1
    run_dir = out / "smoke" / "r50" / "patchify_stem" / "seed0"
    line = one_line(proc.stderr)
    assert f"cannot write {run_dir / 'last.ckpt'}" in line and "No space left on device" in line and "is whole" in line
    assert torch.load(run_dir / "last.ckpt", weights_only=True)["global_step"] == 2  # epoch 0's, whole
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".last.ckpt")]  # no temporary left


def test_read_only_output_root_is_one_line(tmp_path: Path, mounts) -> None:
    out = mounts("ro", "ro")
    proc = run_cli(["step=patchify_stem", *SMOKE], out, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Read-only file system" in one_line(proc.stderr) and str(out) in one_line(proc.stderr)
