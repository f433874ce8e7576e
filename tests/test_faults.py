"""The faults the project survives, one test each (issue 30): a bad key or value on the command line,
a run file that cannot be read, bad data found mid-training, an empty experiment. Each ends in one
line on stderr naming the key or the file and what to do, with the exit code docs/troubleshooting.md
promises (0 done, 1 failed, 2 wrong command or directory, nothing written). A name that would leave
output_root, a stale or malformed lock and a symlinked rerun/ are in tests/test_rundir.py; the data
faults (a shard index that would run code, damaged chunks, every image mode, a truncated in-memory
cache, a failed download) in tests/test_faults_data.py."""
from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from roadmap import schema
from roadmap.ladder import LadderError
from roadmap.plan import plan_run
from roadmap.run import execute
from roadmap.rundir import run_state
from tests.conftest import MINI_DATA, SMOKE, TINY
from tests.processes import run_python
from tests.test_recipe import compose_run


def cli(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return run_python(module, args, cwd=cwd)


def run_in_process(capsys: pytest.CaptureFixture, out: Path, *overrides: str) -> tuple[int, list[str]]:
    """`python -m roadmap.run step=gelu <smoke> …` in this process: its exit code and its stderr lines."""
    code = execute(compose_run("step=gelu", *SMOKE, *TINY, f"output_root={out}", *overrides))
    return code, capsys.readouterr().err.splitlines()


def test_a_plus_key_that_nothing_reads_is_refused(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    """`+recipe.epoch=2` (a typo of recipe.epochs, added with +): refused in one line naming the key
    and the nearest valid key, exit 2, nothing written; never a dead key in the config and its hash."""
    code, err = run_in_process(capsys, tmp_path / "out", "+recipe.epoch=2")
    assert (code, err) == (2, ["roadmap.run: error: recipe.epoch is not a config key (nothing reads it); "
                               "the nearest valid key is recipe.epochs"])
    assert not (tmp_path / "out").exists()
    plan_run(compose_run("step=gelu", *SMOKE, "+recipe.schedule.milestones=[10]"))  # a key the schema reads: accepted


def test_an_unknown_key_does_not_suggest_adding_it(tmp_path: Path) -> None:
    """`recipe.epoch=2`: the same line as for `+recipe.epoch=2`, not Hydra's advice to add it with +
    (a model argument or a schema key the config leaves unset keeps that advice: + adds it rightly)."""
    with pytest.raises(LadderError) as error:
        compose_run("step=gelu", *SMOKE, "recipe.epoch=2")
    assert str(error.value) == "recipe.epoch is not a config key (nothing reads it); the nearest valid key is recipe.epochs"
    with pytest.raises(LadderError, match=r"use \+recipe\.schedule\.milestones=\[10\]"):
        compose_run("step=gelu", *SMOKE, "recipe.schedule.milestones=[10]")


@pytest.fixture(scope="module")
def smoke_config() -> dict:
    return OmegaConf.to_container(compose_run("step=gelu", *SMOKE))


@pytest.mark.parametrize("key, value, says", [
    ("recipe.augment.mixup", "abc", "recipe.augment.mixup='abc' must be a number >= 0"),
    ("trainer.limit_train_batches", "abc",
     "trainer.limit_train_batches='abc' must be a fraction in [0, 1] or a count (an integer >= 0) or null"),
    ("trainer.limit_train_batches", 1.5,
     "trainer.limit_train_batches=1.5 must be a fraction in [0, 1] or a count (an integer >= 0) or null"),
    ("recipe.grad_clip", "big", "recipe.grad_clip='big' must be a number >= 0 or null"),
    ("recipe.augment.scale", "abc", "recipe.augment.scale='abc' must be a list of two numbers >= 0"),
    ("recipe.augment.hflip", 2, "recipe.augment.hflip=2 must be a number >= 0 and <= 1"),
    ("recipe.augment.random_erasing_mode", "xyz",
     "recipe.augment.random_erasing_mode='xyz' must be one of ('pixel', 'rand', 'const')"),
    ("trainer.precision", "xyz", "trainer.precision='xyz' must be one of ('auto', '32-true', 'bf16-mixed', "),
])
def test_a_bad_value_names_the_key_the_value_and_what_is_valid(smoke_config: dict, key: str, value: object,
                                                              says: str) -> None:
    """A value of the wrong type or out of range: the schema's one check names the key, the value and
    what is valid (not a float conversion, a TypeError or Lightning's own argument name)."""
    config = copy.deepcopy(smoke_config)
    *blocks, leaf = key.split(".")
    node = config
    for part in blocks:
        node = node[part]
    assert leaf in node
    node[leaf] = value
    with pytest.raises(schema.ConfigError) as error:
        schema.check(config)
    assert str(error.value).startswith(says)


CORRUPT = {
    "config.yaml": ("step: [gelu\n", "is not a readable run config"),
    "config.yaml ": ("cmd: !!python/object/apply:os.system ['echo hacked']\n", "is not a readable run config"),
    "result.json": ('{"status": "comp', "is not valid JSON"),
    "result.json ": ("[1, 2]\n", "is not a run result"),
}


@pytest.mark.parametrize("name", CORRUPT)
def test_a_run_file_that_cannot_be_read_is_one_line(capsys: pytest.CaptureFixture, tmp_path: Path, name: str) -> None:
    """A corrupt config.yaml (bad YAML, or a `!!python/object` tag: the loader is safe, and says so in
    one line) or result.json in the run's directory: `roadmap.run` names the file and says to move it
    away, exit 2, the directory unchanged; the run's state is `corrupt`."""
    content, says = CORRUPT[name]
    plan = plan_run(compose_run("step=gelu", *SMOKE, *TINY, f"output_root={tmp_path / 'out'}"))
    path = plan.out_dir / name.strip()
    path.parent.mkdir(parents=True)
    path.write_text(content)
    code, err = run_in_process(capsys, tmp_path / "out")
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"roadmap.run: error: {path} {says}") and err[0].endswith("; move it away to rerun this run")
    assert sorted(p.name for p in plan.out_dir.iterdir()) == [path.name] and path.read_text() == content
    assert run_state(plan.out_dir, plan.config_hash) == "corrupt"


def test_a_corrupt_metrics_csv_is_found_before_resuming(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    """An interrupted run (last.ckpt) whose metrics.csv cannot be read: refused before training (not
    an epoch later, as `failed` with `invalid literal for int()`), in one line naming the file and the
    fix (repair it, or force=true to train from the start), exit 2, nothing changed."""
    plan = plan_run(compose_run("step=gelu", *SMOKE, *TINY, f"output_root={tmp_path / 'out'}"))
    plan.out_dir.mkdir(parents=True)
    (plan.out_dir / "last.ckpt").write_bytes(b"a checkpoint")  # never read: the metrics are checked first
    metrics = plan.out_dir / "metrics.csv"
    metrics.write_text("epoch,step,train/loss\n0,2,2.3\nnot a number,4,2.1\n")
    code, err = run_in_process(capsys, tmp_path / "out")
    assert (code, err) == (2, [f"roadmap.run: error: {metrics} is not a run's metrics table (line 3: ValueError: "
                               "could not convert string to float: 'not a number'); repair it, or train the run "
                               "again from the start with force=true"])
    assert sorted(p.name for p in plan.out_dir.iterdir()) == ["last.ckpt", "metrics.csv"]


def test_a_run_another_process_trains_is_refused_at_once(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    """The run's lock is held by another live process (another sweep started the rung): refused before
    anything is built, in one line naming the holder, with the exit code a sweep reads as "running
    elsewhere" (75), the directory unchanged."""
    import platform
    import sys

    plan = plan_run(compose_run("step=gelu", *SMOKE, *TINY, f"output_root={tmp_path / 'out'}"))
    plan.out_dir.mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"pid": other.pid, "host": platform.node(), "started": "2026-12-08T01:26:18"}
        (plan.out_dir / "running.json").write_text(json.dumps(lock))
        code, err = run_in_process(capsys, tmp_path / "out")
    finally:
        other.kill()
        other.wait()
    assert (code, err) == (75, [f"roadmap.run: error: {plan.out_dir} is already being trained by pid {other.pid} on "
                                f"{platform.node()} (since 2026-12-08T01:26:18); wait for it or stop it"])
    assert sorted(p.name for p in plan.out_dir.iterdir()) == ["running.json"]


def test_status_shows_a_corrupt_run_and_goes_on(tmp_path: Path) -> None:
    """`roadmap.status` over a rung whose config.yaml cannot be read: the table shows every rung, that
    one as `corrupt`, then one line on stderr naming the file and what to do; exit 2."""
    config = tmp_path / "smoke" / "r50" / "gelu" / "seed0" / "config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("cmd: !!python/object/apply:os.system ['echo hacked']\n")
    proc = cli("roadmap.status", ["+roadmap=all", "roadmap.steps=[resnet50,gelu]", *SMOKE, f"output_root={tmp_path}"],
               tmp_path)
    assert proc.returncode == 2 and "hacked" not in proc.stdout + proc.stderr
    states = {line.split()[0]: line.split()[1] for line in proc.stdout.splitlines()[1:]}
    assert states == {"r50/resnet50/seed0": "pending", "r50/gelu/seed0": "corrupt"}
    assert proc.stderr.splitlines() == [
        f"roadmap.status: error: {config} is not a readable run config (could not determine a constructor for the "
        "tag 'tag:yaml.org,2002:python/object/apply:os.system' at line 1); move it away to rerun this run"]


def test_a_bad_image_mid_training_fails_the_run_in_one_line(tmp_path: Path) -> None:
    """data.on_bad_image=error, data.in_memory=false, an unreadable image met after the first optimizer
    step (here in validation): the run ends `failed` (exit 1), with a result.json saying why and run.log
    naming the file; stderr is that one line: no `Seed set to 0`, no Lightning hint (srun, the log interval)."""
    data = tmp_path / "data"
    for split, count in (("train", 4), ("val", 2)):
        for wnid in ("n01440764", "n02102040"):
            (data / split / wnid).mkdir(parents=True)
            for image in sorted((MINI_DATA / split / wnid).iterdir())[:count]:
                shutil.copy(image, data / split / wnid)
    bad = data / "val" / "n01440764" / "0_empty.jpg"  # the first image validated
    bad.write_bytes(b"")
    out = tmp_path / "out"
    proc = cli("roadmap.run", ["step=resnet50", *SMOKE, f"data.root={data}", "data.num_classes=2", "recipe.epochs=1",
                               "data.on_bad_image=error", "data.in_memory=false", f"output_root={out}"], tmp_path)
    run_dir = out / "smoke" / "r50" / "resnet50" / "seed0"
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.splitlines() == [
        f"roadmap.run: error: the run failed: DataError: cannot read image {bad} (UnidentifiedImageError: cannot "
        f"identify image file '{bad}'); data.on_bad_image=skip skips unreadable images "
        f"(named in the log, counted in result.json). (result in {run_dir / 'result.json'})"]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "failed" and str(bad) in result["reason"]
    assert f"DataError: cannot read image {bad}" in (run_dir / "run.log").read_text()
    assert run_state(run_dir, result["config_hash"]) == "failed"


def test_collect_on_an_empty_experiment_writes_nothing(tmp_path: Path) -> None:
    """`roadmap.collect` where no run has a result.json: one line saying there is nothing to collect,
    exit 2 (as for any command that finds nothing to work on), and no folder left behind."""
    proc = cli("roadmap.collect", ["experiment=smoke", f"output_root={tmp_path / 'out'}"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"roadmap.collect: error: nothing to collect: no result.json in the run directories under "
        f"{tmp_path / 'out' / 'smoke'} (check experiment_name and output_root); nothing was written"]
    assert list(tmp_path.iterdir()) == []
