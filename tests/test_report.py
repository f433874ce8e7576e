"""roadmap.analysis (the report's library): tables and figures on synthetic results; roadmap.report,
the CLI, on a hand-built experiment."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from roadmap import analysis as report
from roadmap.analysis import summarize
from roadmap.reference import paper_ladder
from roadmap.results import RESULT_FIELDS
from roadmap.rundir import list_runs
from tests.conftest import family_rows

REPO = Path(__file__).resolve().parents[1]
MISSING = "layer_norm"  # a rung that has not run in the synthetic experiment


def _result(step: str, seed: int, top1: float | None, variant: str | None = None, status: str = "completed") -> dict:
    paper = paper_ladder("r50").set_index("step")
    order = int(paper.at[step, "order"])
    record = {name: None for name in RESULT_FIELDS}
    record.update(
        experiment="synthetic", regime="r50", step=step, variant=variant, seed=seed, status=status,
        top1=top1, top5=None if top1 is None else 95.0, top1_ema=None if top1 is None else top1 + 1.0,
        top5_ema=None if top1 is None else 96.0, params=1_000_000 + 10_000 * order,
        gmacs=float(paper.at[step, "paper_gflops"]) / 12, gmacs_224=float(paper.at[step, "paper_gflops"]),
        image_size=64, train_img_per_s=400.0 - 10 * order, reason="NaN loss" if status == "failed" else None,
    )
    return record


def _synthetic_records() -> list[dict]:
    """Three seeds per adopted rung, one per kernel branch, no `layer_norm`, a variant, a failed run."""
    rng = np.random.default_rng(0)
    records = []
    for row in paper_ladder("r50").itertuples():
        if row.adopted == "ref" or row.step == MISSING or row.order < 0:  # order < 0: the recipe step, not run here
            continue
        for seed in (0, 1, 2) if row.adopted == "yes" else (0,):
            records.append(_result(row.step, seed, 60 + 4 * (row.paper_top1 - 78) + rng.normal(0, 0.3)))
    records.append(_result("separate_downsampling", 0, 70.0, variant="without_gelu"))
    records.append(_result("resnet50", 3, None, status="failed"))
    return records


@pytest.fixture(scope="module")
def results() -> pd.DataFrame:
    table = pd.DataFrame(_synthetic_records())
    paper = paper_ladder("r50")[["step", "order", "paper_top1", "paper_top1_std", "paper_gflops"]]
    table = table.merge(paper, on="step", how="left")
    table.loc[table["variant"].notna(), ["paper_top1", "paper_top1_std", "paper_gflops"]] = None
    return table


@pytest.fixture(scope="module")
def summary(results: pd.DataFrame) -> pd.DataFrame:
    return summarize(results)


def _write_run(experiment_dir: Path, record: dict | None, rung: str, seed: int, epochs: int = 3) -> None:
    run_dir = experiment_dir / "r50" / rung / f"seed{seed}"
    run_dir.mkdir(parents=True)
    top1 = 50.0 if record is None or record["top1"] is None else record["top1"]
    metrics = pd.DataFrame({
        "epoch": range(epochs), "step": [10 * (e + 1) for e in range(epochs)], "lr": 1e-3,
        "train/loss": 2.0, "val/loss": 1.5, "val/top1": [top1 - 5 * (epochs - 1 - e) for e in range(epochs)],
        "val/top5": 90.0, "val/top1_ema": top1, "val/top5_ema": 90.0, "img_per_s": 400.0,
    })
    metrics.to_csv(run_dir / "metrics.csv", index=False)
    if record is not None:
        (run_dir / "result.json").write_text(json.dumps(record))


@pytest.fixture()
def experiment_dir(tmp_path: Path) -> Path:
    """<tmp>/synthetic/r50/<rung>/seed<k>/ with result.json and metrics.csv for a few rungs (two
    seeds of resnet50, a kernel branch, a variant), and one rung still running (metrics only)."""
    root = tmp_path / "synthetic"
    _write_run(root, _result("resnet50", 0, 60.0), "resnet50", 0)
    _write_run(root, _result("resnet50", 1, 61.0), "resnet50", 1)
    _write_run(root, _result("stage_ratio", 0, 63.0), "stage_ratio", 0)
    _write_run(root, _result("move_up_dwconv", 0, 64.0), "move_up_dwconv", 0)
    _write_run(root, _result("kernel_5", 0, 65.0), "kernel_5", 0)
    _write_run(root, _result("separate_downsampling", 0, 70.0), "separate_downsampling", 0)
    _write_run(root, _result("separate_downsampling", 0, 68.0, variant="without_gelu"), "separate_downsampling-without_gelu", 0)
    _write_run(root, None, "gelu", 0, epochs=2)
    return root


# ------------------------------------------------------------------------------- tables


def test_ladder_table_rows_gains_and_missing_rung(summary: pd.DataFrame) -> None:
    table = report.ladder_table(summary)
    paper = paper_ladder("r50").query("order >= 0")  # the recipe step (order < 0) is listed once it has run
    assert table["step"].tolist() == paper.sort_values("order")["step"].tolist()  # every paper row, in order
    by_step = table.set_index("step")
    assert math.isnan(by_step.at[MISSING, "top1_mean"]) and by_step.at[MISSING, "paper_top1"] == 81.47
    assert math.isnan(by_step.at["separate_downsampling", "gain"])  # its parent did not run
    assert by_step.at["kernel_9", "parent"] == "move_up_dwconv" and by_step.at["gelu", "parent"] == "kernel_7"
    assert by_step.at["stage_ratio", "gain"] == pytest.approx(
        by_step.at["stage_ratio", "top1_mean"] - by_step.at["resnet50", "top1_mean"])
    assert by_step.at["stage_ratio", "paper_gain"] == pytest.approx(79.36 - 78.82)
    adopted = table[table["adopted"] == "yes"]
    assert adopted["number"].tolist() == list(range(13))  # the README's numbering
    assert by_step.at["resnet50", "n"] == 3  # the failed seed is not counted


def test_spearman_matches_formula(summary: pd.DataFrame) -> None:
    table = report.ladder_table(summary)
    rho, k = report.spearman(table)
    rows = table[table["adopted"] == "yes"].dropna(subset=["top1_mean"])
    assert k == len(rows) == 12
    ours, paper = rows["top1_mean"].rank(), rows["paper_top1"].rank()
    assert rho == pytest.approx(ours.corr(paper))
    if not paper.duplicated().any() and not ours.duplicated().any():  # textbook formula without ties
        assert rho == pytest.approx(1 - 6 * ((ours - paper) ** 2).sum() / (k * (k * k - 1)))
    assert 0.8 < rho <= 1.0  # the synthetic ladder follows the paper up to noise
    assert math.isnan(report.spearman(table.head(2))[0])
    losses = table.assign(train_loss_sum_mean=-table["top1_mean"])  # lower is better: ranked by minus it
    assert report.spearman(losses, "train_loss_sum_mean", lower_is_better=True) == (rho, k)


def test_markdown_table(summary: pd.DataFrame) -> None:
    text = report.markdown_table(report.ladder_table(summary, "r50"), image_size=64)
    for step in paper_ladder("r50").query("adopted != 'ref' and order >= 0")["step"]:
        assert f"`{step}`" in text
    assert "GMACs @64²" in text and "`kernel_5` (not adopted)" in text and "Swin-T (reference)" in text
    assert "| 78.82 ± 0.07 |" in text and "ρ = " in text
    layer_norm = next(line for line in text.splitlines() if "`layer_norm`" in line)
    assert layer_norm.startswith("| 11 |") and "| – |" in layer_norm
    variants = report.variants_table(summary)
    assert "`without_gelu`" in variants and "70.00 (1)" in variants
    assert report.variants_table(summary[summary["variant"] == ""]) == ""


def test_markdown_table_without_runs() -> None:
    empty = summarize(pd.DataFrame(columns=[*RESULT_FIELDS, "paper_top1", "paper_top1_std", "paper_gflops", "order"]))
    text = report.markdown_table(report.ladder_table(empty))
    assert "n/a" in text and "`separate_downsampling`" in text


# ------------------------------------------------------------------------------ figures


def test_figures_on_synthetic_summary(summary: pd.DataFrame, tmp_path: Path) -> None:
    table = report.ladder_table(summary)
    ladder = report.ladder_figure(table)
    ours, paper = ladder.axes
    labels = [t.get_text() for t in ours.get_yticklabels()]
    assert labels[0] == "resnet50" and "kernel_5 (not adopted)" in labels and len(labels) == 16
    assert any(t.get_text() == "not run yet" for t in ours.texts)  # the missing rung is marked
    assert any("Swin-T: 81.3" in t.get_text() for t in paper.texts) and paper.lines  # reference line
    assert any(p.get_hatch() for p in paper.patches)  # branches hatched
    assert sum("GFLOPs" in t.get_text() for t in paper.texts) == 16
    for fig in (ladder, report.top1_vs_gmacs_figure(table, image_size=64), report.top1_vs_throughput_figure(table),
                report.ladder_figure(report.ladder_table(summary.iloc[:0])),
                report.top1_vs_gmacs_figure(report.ladder_table(summary.iloc[:0])),
                report.curves_figure(report.load_curves(tmp_path))):
        assert isinstance(fig, Figure)
    path = report.save_figure(report.top1_vs_gmacs_figure(table, image_size=64), tmp_path / "a.svg")
    first = path.read_bytes()
    report.save_figure(report.top1_vs_gmacs_figure(table, image_size=64), path)
    assert path.read_bytes() == first  # reproducible SVG: re-running does not churn git


@pytest.mark.parametrize("runs", [slice(None), slice(0)], ids=["runs", "no_runs"])
def test_top1_vs_gmacs_places_the_paper_family_beside_the_runs(summary: pd.DataFrame, runs: slice) -> None:
    """Whatever the experiment, the right panel is the paper's Figure 1: one labelled marker per
    family model, trained on 1K and pre-trained on 22K, top-1 against GFLOPs at 224²."""
    table = report.ladder_table(summary.iloc[runs])
    ours, paper = report.top1_vs_gmacs_figure(table, image_size=64).axes
    assert len(ours.containers) == table["top1_mean"].notna().sum()  # one point per rung that ran
    series = {line.get_label(): line for line in paper.get_lines()}
    assert list(series) == ["ImageNet-1K trained", "ImageNet-22K pre-trained"]
    letters = {"tiny": "T", "small": "S", "base": "B", "large": "L", "xlarge": "XL"}
    labels = []
    for label, column in (("ImageNet-1K trained", "top1_1k_224"), ("ImageNet-22K pre-trained", "top1_22k_224")):
        models = [row for row in family_rows() if row[column]]  # XL was not trained on 1K alone
        assert list(series[label].get_xdata()) == [float(row["paper_gflops_224"]) for row in models]
        assert list(series[label].get_ydata()) == [float(row[column]) for row in models]
        labels += [letters[row["model"].removeprefix("convnext_")] for row in models]
    assert [text.get_text() for text in paper.texts] == labels


def test_dynamics_figure(tmp_path: Path) -> None:
    root = tmp_path / "exp"
    for rung, seed, with_dyn in [("resnet50", 0, True), ("resnet50", 1, True), ("gelu", 0, False)]:
        run_dir = root / "r50" / rung / f"seed{seed}"
        run_dir.mkdir(parents=True)
        frame = pd.DataFrame({"epoch": [0, 1, 2], "val/top1": 50.0, "val/top1_ema": 50.0})
        if with_dyn:
            frame = frame.assign(**{"dyn/grad_norm": [3.0, 2.0, 1.0], "dyn/update_ratio/stem.conv": 1e-3,
                                    **{f"dyn/stage{i}_rms": 1.0 + seed for i in range(1, 5)},
                                    **{f"dyn/stage{i}_branch_ratio": 0.1 for i in range(1, 5)}})
        frame.to_csv(run_dir / "metrics.csv", index=False)
    curves = report.load_curves(root)
    fig = report.dynamics_figure(curves)
    assert isinstance(fig, Figure) and len(fig.axes) == 4 + 4 + 2
    grad_norm = next(ax for ax in fig.axes if "gradient norm" in ax.get_title())
    (line,) = grad_norm.get_lines()  # gelu has no dyn/ columns: no line
    assert line.get_label() == "resnet50 (2 seeds)" and line.get_ydata().tolist() == [3.0, 2.0, 1.0]
    stage1 = next(ax for ax in fig.axes if ax.get_title().startswith("stage 1: residual"))
    assert stage1.get_lines()[0].get_ydata().tolist() == [1.5, 1.5, 1.5]  # mean over seeds
    # recorded experiments without these columns: a figure that says so
    empty = report.dynamics_figure(curves[curves["rung"] == "gelu"])
    assert any("trainer.diagnostics=false" in t.get_text() for ax in empty.axes for t in ax.texts)


# --------------------------------------------------------------------- experiment folder


def test_load_report_data_collects_in_memory(experiment_dir: Path) -> None:
    data = report.load_report_data(experiment_dir)
    assert not (experiment_dir / "results.csv").exists()  # read-only unless write_collect
    assert len(data.results) == 7 and data.image_size == 64 and data.regimes == ["r50"]
    assert set(data.curves["rung"]) == {"resnet50", "stage_ratio", "move_up_dwconv", "kernel_5", "gelu",
                                        "separate_downsampling", "separate_downsampling-without_gelu"}
    variant = data.curves[data.curves["rung"] == "separate_downsampling-without_gelu"]
    assert set(variant["step"]) == {"separate_downsampling"} and set(variant["variant"]) == {"without_gelu"}
    report.load_report_data(experiment_dir, write_collect=True)
    assert (experiment_dir / "results.csv").is_file() and (experiment_dir / "summary.csv").is_file()
    assert len(report.load_report_data(experiment_dir).results) == 7  # now read from results.csv


def test_write_report(experiment_dir: Path, tmp_path: Path) -> None:
    written = report.write_report(experiment_dir, tmp_path / "out", ["png", "svg"])
    names = sorted(p.name for p in written)
    figures = [*report.FIGURES, "variants"]  # the fixture has a variant
    assert names == sorted([f"{f}.{x}" for f in figures for x in ("png", "svg")] + ["ladder.md"])
    assert all(p.stat().st_size > 1000 for p in written)
    markdown = (tmp_path / "out" / "ladder.md").read_text()
    assert "![ladder](ladder.png)" in markdown and "Runs: 7 completed." in markdown
    assert "### Variants\n\n![variants](variants.png)" in markdown
    assert "| 60.50 ± 0.71 (2) |" in markdown and "`without_gelu`" in markdown
    assert (experiment_dir / "results.csv").is_file()  # collected on the way


def test_a_report_lists_the_run_directories_once(experiment_dir: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Results (collected on the way) and curves come from one listing of the run directories."""
    from roadmap.analysis import load, results_table

    listed = []

    def counted(folder: Path) -> list:
        listed.append(folder)
        return list_runs(folder)

    for module in (load, results_table):
        monkeypatch.setattr(module, "list_runs", counted)
    report.write_report(experiment_dir, tmp_path / "out", ["png"])
    assert listed == [experiment_dir] and (experiment_dir / "results.csv").is_file()


def test_a_failed_runs_reason_is_one_line_in_ladder_md(experiment_dir: Path, tmp_path: Path) -> None:
    failed = _result("layer_norm", 0, None, status="failed")
    failed["reason"] = "RuntimeError: first line\n" + "  File x.py, line 1\n" * 200
    (experiment_dir / "r50" / "layer_norm" / "seed0").mkdir(parents=True)
    (experiment_dir / "r50" / "layer_norm" / "seed0" / "result.json").write_text(json.dumps(failed))
    report.write_report(experiment_dir, tmp_path / "out", ["png"])
    lines = (tmp_path / "out" / "ladder.md").read_text().splitlines()
    assert [line for line in lines if "failed:" in line] == ["- failed: `r50/layer_norm` seed 0: RuntimeError: first line"]
    assert "x.py" not in "\n".join(lines)


def test_a_study_of_variants_alone_has_no_ladder_to_draw(tmp_path: Path) -> None:
    """Runs that are all variants of a rung (pre-training and fine-tuning, say): the variants figure and
    table, the curves, no ladder figures or ladder table, and a status line that says what it is."""
    root = tmp_path / "study"
    for variant, top1 in (("pretrain", 60.0), ("finetune", 65.0)):
        for seed in (0, 1):
            _write_run(root, _result("resnet50", seed, top1 + seed, variant=variant), f"resnet50-{variant}", seed)
    written = report.write_report(root, formats=["png"])
    assert sorted(p.name for p in written) == ["curves.png", "dynamics.png", "ladder.md", "variants.png"]
    markdown = (root / "report" / "ladder.md").read_text()
    assert "study (r50): a study of variants: 4 completed runs of 2 variants, no plain rung." in markdown
    assert "| `resnet50` | `finetune` | 65.50 ± 0.71 (2) |" in markdown and "![ladder]" not in markdown
    assert "Spearman" not in markdown


def test_write_report_without_runs(tmp_path: Path) -> None:
    written = report.write_report(tmp_path / "nothing", formats=["png"])
    assert (tmp_path / "nothing" / "report" / "ladder.png") in written
    assert "none finished yet" in (tmp_path / "nothing" / "report" / "ladder.md").read_text()


def test_cli(experiment_dir: Path) -> None:
    env = {**os.environ, "MPLBACKEND": "Agg"}
    cmd = [sys.executable, "-m", "roadmap.report", "experiment=smoke", f"output_root={experiment_dir.parent}",
           "experiment_name=synthetic", "formats=[png,svg]"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = experiment_dir / "report"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{f}.{x}" for f in (*report.FIGURES, "variants") for x in ("png", "svg")] + ["ladder.md"])
    assert "13 files" in done.stdout


def test_compared_experiments_figure_and_table(experiment_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "inverted"
    _write_run(other, _result("resnet50", 0, 65.0), "resnet50", 0)
    _write_run(other, _result("separate_downsampling", 0, 60.0), "separate_downsampling", 0)
    written = report.write_report(experiment_dir, formats=["png"], compare_dirs=[other])
    assert experiment_dir / "report" / "compare.png" in written
    markdown = (experiment_dir / "report" / "ladder.md").read_text()
    assert "### Compared experiments" in markdown and "![compare](compare.png)" in markdown
    # endpoint - first rung: 70 - 60.5, ± 2 SE from the pooled std (resnet50's, 0.71) with n = 1 and 2
    assert "| synthetic | 4/13 (1–2) | 60.50 ± 0.71 | 70.00 | +9.50 ± 1.73 |" in markdown
    assert "| inverted | 2/13 (1) | 65.00 | 60.00 | -5.00 | – | – | 0 of 1 | 0 of 0 | – |" in markdown


def test_cli_names_an_unknown_compared_experiment(experiment_dir: Path) -> None:
    cmd = [sys.executable, "-m", "roadmap.report", "experiment=smoke", f"output_root={experiment_dir.parent}",
           "experiment_name=synthetic", "compare=[nope]"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert f"compare=nope: no results.csv in {experiment_dir.parent / 'nope'}" in done.stderr
    assert "experiments with one: none" in done.stderr  # synthetic has run directories, not yet a results.csv


def test_seed_spread_and_steps_beyond_noise(summary: pd.DataFrame) -> None:
    table = report.ladder_table(summary)
    median, largest, pooled, k = report.seed_spread(table)
    assert k == 12 and 0 < median <= largest  # 12 adopted rungs with 3 seeds (layer_norm missing)
    rows = table[(table["adopted"] == "yes") & (table["n"] >= 2)]
    assert pooled == pytest.approx(math.sqrt((rows["top1_std"] ** 2).mean()))  # equal n: mean variance
    clear = report.beyond_noise(table)
    by_step = table.set_index("step")
    for row in clear.itertuples():
        se = pooled * math.sqrt(1 / row.n + 1 / by_step.at[row.parent, "n"])
        assert row.gain_se == pytest.approx(se) and abs(row.gain) > 2 * se
    # width_96's synthetic change (4 x 2.22 points) is far beyond the noise of 0.3
    assert "width_96" in set(clear["step"])
    assert "separate_downsampling" not in set(clear["step"])  # its parent layer_norm has no runs
    text = report.markdown_table(table)
    assert "Seed spread" in text and "pooled" in text and "`width_96` +" in text
    one_seed = summary[summary["step"] == "resnet50"].assign(n=1, top1_std=np.nan)
    assert "Seed spread: n/a" in report.markdown_table(report.ladder_table(one_seed))
    assert report.beyond_noise(report.ladder_table(one_seed)).empty


def test_ordered_pairs_counts_pairs_the_paper_separates(summary: pd.DataFrame) -> None:
    table = report.ladder_table(summary)
    agree, total = report.ordered_pairs(table)
    rows = table[table["adopted"] == "yes"].dropna(subset=["top1_mean", "paper_top1"])
    gaps = [abs(a - b) for i, a in enumerate(rows["paper_top1"]) for b in list(rows["paper_top1"])[i + 1:]]
    assert total == sum(g >= 0.5 for g in gaps) and 0 < total < len(gaps)
    assert agree == total  # the synthetic ladder is the paper's, scaled, plus noise of 0.3
    reversed_table = table.assign(top1_mean=-table["top1_mean"])
    assert report.ordered_pairs(reversed_table) == (0, total)
    assert "ordered as in the paper: " in report.markdown_table(table)


def test_factor_study_table_against_a_control(experiment_dir: Path, tmp_path: Path) -> None:
    study = tmp_path / "study"
    _write_run(study, _result("resnet50", 0, 58.0, variant="lr_low"), "resnet50-lr_low", 0)
    _write_run(study, _result("separate_downsampling", 0, 73.0, variant="lr_low"), "separate_downsampling-lr_low", 0)
    report.write_report(study, formats=["png"], control_dir=experiment_dir)
    markdown = (study / "report" / "ladder.md").read_text()
    assert "### Factor study (control: synthetic)" in markdown
    assert "| control | 60.50 ± 0.71 (2) | 70.00 (1) |" in markdown
    assert "| `lr_low` | 58.00 (1) [-2.50] | 73.00 (1) [+3.00] |" in markdown
