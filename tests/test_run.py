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

from roadmap.results import RESULT_FIELDS

MINI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagenette2-64-mini"
SMOKE = ["experiment=smoke", f"data.root={MINI}"]


def run_cli(args: list[str], out: Path, cwd: Path, module: str = "roadmap.run", **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", ""), "PYTHONUNBUFFERED": "1"}
    env.pop("WANDB_MODE") if not env["WANDB_MODE"] else None
    return subprocess.run(
        [sys.executable, "-m", module, *args, f"output_root={out}"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600, **kwargs,
    )


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
    optional = {"reason", "resumed_from_step", "variant"}
    assert [k for k in RESULT_FIELDS if result[k] is None and k not in optional] == []
    assert result["status"] == "completed" and result["step"] == "patchify_stem"
    assert result["optimizer_steps"] == 4  # 2 epochs x 4 batches / accumulate 2
    assert result["global_batch"] == result["per_device_batch"] * result["accumulate"] * result["devices"]
    assert 0 <= result["top1"] <= 100 and result["params"] > 0 and result["gmacs"] > 0
    assert (run_dir / "last.ckpt").is_file() and (run_dir / "config.yaml").is_file()
    epochs = (run_dir / "metrics.csv").read_text().strip().splitlines()
    assert len(epochs) == 1 + 2  # header + one row per epoch


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
    import torch

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


def test_killed_run_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    args = ["step=move_up_dwconv", *SMOKE, "recipe.epochs=6"]
    reference = run_cli(args, tmp_path / "uninterrupted", cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr[-2000:]
    expected_steps = result_of(tmp_path / "uninterrupted", "move_up_dwconv")["optimizer_steps"]

    out = tmp_path / "out"
    run_dir = out / "smoke" / "r50" / "move_up_dwconv" / "seed0"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "roadmap.run", *args, f"output_root={out}"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.time() + 300
    while not (run_dir / "last.ckpt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "result.json").exists(), "the run finished before it could be killed"

    resumed = run_cli(args, out, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    result = result_of(out, "move_up_dwconv")
    assert result["resumed_from_step"] and result["resumed_from_step"] > 0
    assert result["optimizer_steps"] == expected_steps


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
