"""One source of truth for a ladder: Hydra composes a rung's deltas over the whole run config, the
command line wins or is refused, à la carte delta lists, and every committed run stays `done`."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose
from omegaconf import OmegaConf

import roadmap
from roadmap import ladder
from roadmap import analysis as report
from roadmap.analysis import collect, write_report
from roadmap.reference import paper_table
from roadmap.plan import RunConfigError, plan_run
from roadmap.training import build_model
from roadmap.preset import expand, plan_rungs, status_of
from tests.conftest import TINY
from tests.processes import run_python
from tests.test_run import SMOKE, run_cli

REPO = Path(__file__).resolve().parents[1]


def test_a_step_override_on_the_command_line_takes_effect() -> None:
    plan = plan_run(ladder.compose_run(["step=kernel_7", "model.width=32"]))
    assert plan.arch.width == 32 and plan.arch.kernel_size == 7 and plan.cfg.model.width == 32
    assert "arch" not in plan.cfg  # one builder block per config.yaml


def test_a_regime_key_that_is_not_read_is_refused_in_one_line(tmp_path: Path) -> None:
    proc = run_cli(["step=kernel_7", "regime.arch.width=32", *SMOKE], tmp_path, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "regime.arch.width" in lines[0] and "not in struct" in lines[0]
    assert not list(tmp_path.iterdir())


def test_cfg_job_shows_the_composed_rung(tmp_path: Path) -> None:
    proc = run_python("roadmap.inspect", ["step=gelu", "--cfg", "job"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    shown = OmegaConf.create(proc.stdout)
    assert shown.step == "gelu" and shown.model.activation == "gelu" and shown.model.kernel_size == 7
    assert shown.model.separate_downsampling is False  # a later step is not applied


def test_a_delta_may_set_any_run_key() -> None:
    """A step file is a Hydra config over the run config; the command line still wins over it."""
    with ladder.hydra_context():
        cfg = compose("train", ["step=gelu", "+steps=[gelu]", "recipe.epochs=3"])
    assert cfg.model.activation == "gelu" and cfg.recipe.epochs == 3


@pytest.mark.parametrize(("deltas", "name"), [
    (["gelu", "layer_norm"], "gelu+layer_norm"),
    (["stage_ratio", "patchify_stem"], "patchify_stem"),  # a whole chain is that step's rung
    (["patchify_stem", "stage_ratio"], "patchify_stem+stage_ratio"),  # a reordering
    (["stage_ratio", "patchify_stem", "width_96"], "width_96_without_depthwise_conv"),
    ([], "resnet50"),
])
def test_a_delta_list_gets_a_readable_deterministic_name(deltas: list[str], name: str) -> None:
    cfg = ladder.compose_run([f"deltas=[{','.join(deltas)}]"])
    assert cfg.step == name and cfg.output_dir.endswith(f"/r50/{name}/seed0")


def test_a_reordering_composes_in_its_order() -> None:
    a = ladder.compose_arch(regime="r50", deltas=["width_96", "stage_ratio"])
    assert a.width == 96 and a.depths == [3, 3, 9, 3]
    r200 = ladder.compose_arch("stage_ratio", "r200")  # a regime's own version of a step
    assert r200.depths == [3, 3, 27, 3] and r200.width == 84


def test_an_invalid_combination_gives_the_builders_reason_before_writing(tmp_path: Path) -> None:
    proc = run_cli(["deltas=[move_up_dwconv]", *SMOKE], tmp_path, cwd=tmp_path)
    assert proc.returncode == 2
    assert "dwconv_position='top'" in proc.stderr and "depthwise=true" in proc.stderr
    assert not list(tmp_path.iterdir())
    bad = run_cli(["deltas=[gelu,relu6]", *SMOKE], tmp_path, cwd=tmp_path)
    assert bad.returncode == 2 and "'relu6'" in bad.stderr and "valid deltas" in bad.stderr


def test_a_delta_list_runs_on_the_mini_set(tmp_path: Path) -> None:
    proc = run_cli(["deltas=[gelu,layer_norm]", *SMOKE, *TINY], tmp_path, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = tmp_path / "smoke" / "r50" / "gelu+layer_norm" / "seed0"
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "completed" and result["step"] == "gelu+layer_norm"
    config = OmegaConf.load(run_dir / "config.yaml")
    assert list(config.deltas) == ["gelu", "layer_norm"] and config.model.norm == "layer" and "arch" not in config


@pytest.mark.slow  # 10 rungs, ~11 processes; in the default set: test_sweep.py::test_leave_one_out_takes_each_delta_out_and_names_the_impossible_ones, test_a_delta_list_runs_on_the_mini_set
def test_the_leave_one_out_preset_runs_on_the_mini_set(tmp_path: Path) -> None:
    proc = run_cli(["+roadmap=leave_one_out", *SMOKE, *TINY, "trainer.diagnostics=false"], tmp_path, cwd=tmp_path,
                   module="roadmap.sweep", timeout=3600)  # 10 rungs one after another
    assert proc.returncode == 0, proc.stderr[-2000:]
    done = sorted(p.parent.parent.name for p in (tmp_path / "smoke" / "r50").glob("*/seed0/result.json"))
    assert len(done) == 10 and "separate_downsampling_without_gelu" in done and "layer_norm" in done
    assert "depthwise_conv cannot be removed alone" in (tmp_path / "smoke" / "sweep.log").read_text()


COMMITTED = {  # each committed experiment and the sweep that recorded it
    "imagenette_proxy": ["+roadmap=seeds", "roadmap.seeds=[0,1]", "experiment=imagenette_proxy"],
    "proxy_study": ["+roadmap=proxy_study", "roadmap.seeds=[0,1]", "experiment=imagenette_proxy",
                    "experiment_name=proxy_study"],  # seed 1 where a change is within 2 SE
    "imagenette_proxy_v2": ["+roadmap=seeds", "roadmap.seeds=[0,1]", "experiment=imagenette_proxy_v2"],
    "imagenette_proxy_v3": ["+roadmap=all", "experiment=imagenette_proxy_v3"],
    "imagenette_proxy_v4": ["+roadmap=seeds", "roadmap.seeds=[0,1]", "experiment=imagenette_proxy_v4"],  # seed 1 running
    "proxy_study_v2": ["+roadmap=proxy_study_v2", "experiment=imagenette_proxy_v2", "experiment_name=proxy_study_v2"],
    "proxy_resolution": ["+roadmap=proxy_resolution", "roadmap.seeds=[0,1]", "experiment=imagenette_proxy_v2",
                         "experiment_name=proxy_resolution"],  # seed 1 of the kernel_7 pair
}


# proxy_study plans 110 rungs (a minute): the slow set; its hashes are the same machinery as the others'.
@pytest.mark.parametrize("experiment", [pytest.param(e, marks=pytest.mark.slow) if e == "proxy_study" else e
                                        for e in sorted(COMMITTED)])
def test_every_committed_run_is_done_under_its_sweep(experiment: str) -> None:
    """The recorded runs' config.yaml files (written before the deltas were composed by Hydra)
    hash as the same runs under the current layout: `roadmap.sweep` skips them."""
    overrides = [*COMMITTED[experiment], f"output_root={REPO / 'experiments'}"]
    with ladder.hydra_context():
        cfg = compose("sweep", overrides)
    rungs, _ = expand(cfg)
    with ladder.hydra_context():
        plan_rungs(rungs, [o for o in overrides if not o.lstrip("+").startswith("roadmap")])
    recorded = {p.parent for p in (REPO / "experiments" / experiment).glob("*/*/seed*/result.json")
                if json.loads(p.read_text())["status"] == "completed"}  # not a run in progress here
    assert recorded and recorded <= {r.out_dir for r in rungs}
    assert {r.label: status_of(r) for r in rungs if r.out_dir in recorded} == {
        r.label: "done" for r in rungs if r.out_dir in recorded}


def test_committed_experiments_collect_and_report(tmp_path: Path) -> None:
    for experiment in COMMITTED:
        shutil.copytree(REPO / "experiments" / experiment, tmp_path / experiment,
                        ignore=shutil.ignore_patterns("report", "results.*", "summary.csv"))
    results, summary = collect(tmp_path / "imagenette_proxy")
    assert len(results) == 26 and (results["status"] == "completed").all()
    assert summary["paper_top1"].notna().sum() == 13
    assert results["train_loss_sum"].notna().all() and summary["train_loss_sum_mean"].notna().all()
    gelu = tmp_path / "imagenette_proxy" / "r50" / "gelu" / "seed0"  # derived from metrics.csv where missing
    assert results.query("step == 'gelu' and seed == 0")["train_loss_sum"].item() == pytest.approx(
        pd.read_csv(gelu / "metrics.csv").drop_duplicates("epoch", keep="last")["train/loss"].sum(), abs=1e-4)
    markdown = report.markdown_table(report.ladder_table(summary, "r50"))
    assert "Of our training-loss sum (lower ranks higher; 13 rungs): ρ = " in markdown
    written = write_report(tmp_path / "proxy_study", formats=["png"], control_dir=tmp_path / "imagenette_proxy")
    assert (tmp_path / "proxy_study" / "report" / "ladder.md").is_file() and written


def test_fidelity_unchanged_through_hydra_composition() -> None:
    assert roadmap.build_model("separate_downsampling", layer_scale=1e-6).cfg.separate_downsampling
    assert sum(p.numel() for p in roadmap.build_model("separate_downsampling", layer_scale=1e-6).parameters()) == 28_589_128


def test_the_classic_recipe_rung_is_a_recipe_delta_off_the_baseline() -> None:
    cfg = ladder.compose_run(["step=classic_recipe", "experiment=paper_imagenet"])
    assert ladder.step_chain("classic_recipe") == ["classic_recipe"]
    assert cfg.recipe.optimizer.name == "sgd" and cfg.recipe.epochs == 90 and list(cfg.recipe.schedule.milestones) == [30, 60]
    assert cfg.recipe.augment.mixup == 0 and cfg.recipe.augment.randaugment is None
    assert OmegaConf.to_container(cfg.model) == OmegaConf.to_container(ladder.compose_run(
        ["step=resnet50", "experiment=paper_imagenet"]).model)  # the same model: only the recipe changes
    assert ladder.changed_fields("classic_recipe")["recipe.optimizer.name"] == "sgd"


def test_the_classic_recipe_rung_runs_on_the_mini_set(tmp_path: Path) -> None:
    proc = run_cli(["+roadmap=training_techniques", *SMOKE, *TINY], tmp_path, cwd=tmp_path, module="roadmap.sweep",
                   timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    classic = json.loads((tmp_path / "smoke" / "r50" / "classic_recipe" / "seed0" / "result.json").read_text())
    assert classic["status"] == "completed" and classic["epochs"] == 1 and classic["lr"] == pytest.approx(0.1 * 16 / 256)
    assert OmegaConf.load(tmp_path / "smoke" / "r50" / "classic_recipe" / "seed0" / "config.yaml").recipe.optimizer.name == "sgd"
    results, _ = collect(tmp_path / "smoke")
    assert set(results["step"]) == {"resnet50", "classic_recipe"}
    assert results.set_index("step").at["classic_recipe", "paper_top1"] == 76.13


def test_the_steps_group_by_hand_must_be_the_rungs_own() -> None:
    argv = ladder.with_rung_overrides(["run", "deltas=[gelu,layer_norm]", "--cfg", "job"])
    assert argv == ["run", "deltas=[gelu,layer_norm]", "+steps=[gelu,layer_norm]", "step=gelu+layer_norm", "--cfg", "job"]
    assert ladder.with_rung_overrides(argv) == argv  # a DDP rank re-running the command line
    with pytest.raises(ladder.LadderError, match=r"\+steps=\[gelu\]: a rung's deltas are chosen by step=<name>"):
        ladder.compose_run(["step=gelu", "+steps=[gelu]"])


SECOND = ["regime=bag_of_tricks", "~model.width_mult", "model.channels=[8,16,32,64]", "model.stem_width=8"]


def test_a_ladder_on_another_factory_is_yaml_alone() -> None:
    """conf/regime/bag_of_tricks.yaml builds timm's ResNet; its builder-only checks are skipped,
    what its factory refuses is one line, its params and MACs come from the FLOP counter."""
    plan = plan_run(ladder.compose_run(["step=avg_down", *SECOND, *SMOKE]))
    assert plan.arch is None and plan.cfg.model._target_ == "timm.create_model" and plan.cfg.model.avg_down
    model = build_model(plan)
    assert type(model).__name__ == "ResNet" and model.fc.out_features == 10 and plan.num_classes == 10
    assert ladder.changed_fields("mixup", "bag_of_tricks") == {
        "recipe.augment.mixup": 0.2, "recipe.augment.cutmix": 0.0, "recipe.augment.mixup_prob": 1.0}
    assert ladder.compose_model("mixup", "bag_of_tricks") == ladder.compose_model("avg_down", "bag_of_tricks")
    paper = paper_table("bag_of_tricks").set_index("step")  # the regime YAML's numbers, blank where it has none
    assert paper.at["avg_down", "paper_top1"] == 77.16 and pd.isna(paper.at["mixup", "paper_top1"])
    with pytest.raises(RunConfigError, match=r"^model\._target_=timm\.create_model refused .*'width_mult'"):
        build_model(plan_run(ladder.compose_run(["step=avg_down", "regime=bag_of_tricks", *SMOKE])))
    with pytest.raises(ladder.LadderError, match="not by roadmap's builder"):
        roadmap.convert_state_dict({}, "avg_down", "bag_of_tricks")
    with torch.device("meta"):
        counts = roadmap.complexity(roadmap.build_model("avg_down", "bag_of_tricks"))
    assert counts["params"] == 25_576_264 and counts["gmacs"] == pytest.approx(4.33, abs=0.01)  # the paper's 4.3


def test_a_ladder_on_another_factory_runs_sweeps_collects_and_reports(tmp_path: Path) -> None:
    """Its last rung (the recipe delta, on the model deltas) through sweep, collect and report."""
    proc = run_cli(["+roadmap=bag_of_tricks", "roadmap.steps=[mixup]", *SECOND, *SMOKE, *TINY], tmp_path,
                   cwd=tmp_path, module="roadmap.sweep", timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    mixup = OmegaConf.load(tmp_path / "smoke" / "bag_of_tricks" / "mixup" / "seed0" / "config.yaml")
    assert mixup.recipe.augment.mixup == 0.2 and mixup.model.stem_type == "deep" and mixup.model.stem_width == 8
    results, _ = collect(tmp_path / "smoke")
    row = results.set_index("step").loc["mixup"]
    assert row["status"] == "completed" and row["params"] > 0 and row["gmacs"] > 0 and pd.isna(row["paper_top1"])
    written = write_report(tmp_path / "smoke", formats=["png"])
    markdown = (tmp_path / "smoke" / "report" / "ladder.md").read_text()
    assert "## bag_of_tricks" in markdown and "| 76.66 |" in markdown and "`avg_down`" in markdown  # not run: the YAML's
    assert tmp_path / "smoke" / "report" / "ladder_bag_of_tricks.png" in written
