"""Report figures with nothing to draw say so; a single epoch is drawn as a point, at its epoch from 0."""
from __future__ import annotations

import numpy as np
import pandas as pd


def test_figures_with_nothing_to_draw_say_so_and_single_epochs_have_markers() -> None:
    from roadmap.analysis import curves_figure, dynamics_figure

    curves = pd.DataFrame({"regime": "r50", "rung": "gelu", "step": "gelu", "variant": None, "seed": 0, "order": 8,
                           "epoch": [0], "val/top1": [np.nan], "val/top1_ema": [np.nan], "dyn/grad_norm": [1.5]})
    texts = [t.get_text() for ax in curves_figure(curves).axes for t in ax.texts]
    assert texts == ["no validation yet (validated every trainer.check_val_every_n_epoch)"] * 2
    [ax] = dynamics_figure(curves).axes
    [line] = ax.get_lines()
    assert line.get_marker() == "o"
    # one epoch convention: the figure's x is metrics.csv's epoch (from 0, as run.log's `epoch 0 done`)
    assert list(line.get_xdata()) == [0] and ax.get_xlabel().startswith("epoch (0 = the first")


def test_variants_are_drawn_beside_their_plain_rung_with_their_resolution_and_classes(tmp_path) -> None:
    """A study's variants (here a pre-training at 64 px on 5 classes and a fine-tune at 128 px, 2 seeds)
    get one bar each, mean over seeds with a dot per seed, after their plain rung (grey); without a
    variant there is nothing to draw (test_report: the report links the figure under its table)."""
    from matplotlib.collections import PathCollection

    from roadmap.analysis import ReportData, variants_figure

    def run(variant, seed, top1, size, classes, step="convnext_tiny", status="completed"):
        return {"regime": "family", "step": step, "variant": variant, "seed": seed, "status": status, "order": 0,
                "top1": top1, "image_size": size, "num_classes": classes}

    results = pd.DataFrame([run(None, 0, 50.0, 64, 10), run("pretrain_5cls", 0, 60.0, 64, 5),
                            run("pretrain_5cls", 1, 62.0, 64, 5), run("finetune_128", 0, 40.0, 128, 10),
                            run("finetune_128", 1, None, 128, 10, status="interrupted"),
                            run(None, 0, 70.0, 64, 10, step="convnext_small")])
    data = ReportData(tmp_path, results, pd.DataFrame(), pd.DataFrame())
    variants = data.variant_runs("family")
    assert sorted(variants["top1"]) == [40.0, 50.0, 60.0, 62.0]  # completed; convnext_small has no variant
    [ax] = variants_figure(variants).axes
    assert [t.get_text() for t in ax.get_yticklabels()] == [
        "convnext_tiny · plain rung", "convnext_tiny · finetune_128", "convnext_tiny · pretrain_5cls"]
    assert [round(p.get_width(), 6) for p in ax.patches] == [50.0, 40.0, 61.0]
    assert ax.patches[0].get_facecolor()[:3] != ax.patches[2].get_facecolor()[:3]  # the plain rung is grey
    texts = [t.get_text() for t in ax.texts]
    assert texts[2] == "61.00  (64 px, 5 classes; 2 seeds)" and texts[1] == "40.00  (128 px, 10 classes; 1 seed)"
    dots = [c for c in ax.collections if isinstance(c, PathCollection)]  # not the error bars
    assert [len(c.get_offsets()) for c in dots] == [1, 1, 2]

    plain = ReportData(tmp_path, results[results["variant"].isna()], pd.DataFrame(), pd.DataFrame())
    assert plain.variant_runs("family").empty


def test_a_downstream_runs_curves_are_its_own_metrics_where_it_has_them() -> None:
    """Detection: AP box and mask on val, and on the training images only where task.eval_train scored them."""
    from roadmap.analysis import curves_figure

    curves = pd.DataFrame({"regime": "r50", "rung": "resnet50", "step": "resnet50", "variant": "", "seed": 0,
                           "order": 0, "epoch": [0, 1], "val/top1": np.nan, "val/top1_ema": np.nan,
                           "val/ap_box": [1.0, 2.0], "val/ap_mask": [0.5, 1.5]})
    axes = curves_figure(curves, task="detection").axes
    assert [ax.get_title() for ax in axes] == ["AP$^{box}$, val (%)", "AP$^{mask}$, val (%)"]
    assert list(axes[0].get_lines()[0].get_ydata()) == [1.0, 2.0]
    trained = curves.assign(**{"val/ap_box_train": [3.0, 6.0], "val/ap_mask_train": [2.0, 4.0]})
    assert len(curves_figure(trained, task="detection").axes) == 4
