"""roadmap.diagnostics: each statistic against a manual computation on a tiny RoadmapNet, the
callback under a Lightning Trainer with gradient accumulation, metrics.csv columns end to end, and
the same weights with diagnostics on and off."""
from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import roadmap
from roadmap.callbacks import COLUMNS, write_epoch_row
from roadmap.diagnostics import ActivationStats, TrainingDynamics, update_layers
from roadmap.results import train_loss_sum
from tests.test_run import SMOKE, result_of, run_cli

LR = 0.1


def tiny(step: str) -> nn.Module:
    torch.manual_seed(0)
    # layer_scale 0.5 so the branch ratio includes gamma (where the rung has one); no drop path.
    return roadmap.build_model(step, num_classes=10, width_mult=0.25, drop_path=0.0, layer_scale=0.5)


def rms(x: torch.Tensor) -> float:
    return x.double().pow(2).mean().sqrt().item()


def manual_stats(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Stage-output RMS and last-block branch/input RMS, by running the modules one by one."""
    stats, h = {}, model.stem(x)
    for i, stage in enumerate(model.stages, start=1):
        h = stage.blocks[:-1](stage.downsample(h))
        last = stage.blocks[-1]
        y = last.act1(last.norm1(last.conv1(h)))
        y = last.act2(last.norm2(last.conv2(y)))
        y = last.norm3(last.conv3(y))
        if last.gamma is not None:
            y = y * last.gamma.view(1, -1, 1, 1)
        stats[f"stage{i}_branch_ratio"] = rms(y) / rms(h)
        h = last(h)
        stats[f"stage{i}_rms"] = rms(h)
    return stats


@pytest.mark.parametrize("step", ["resnet50", "separate_downsampling"])
def test_activation_stats_match_a_manual_computation(step: str) -> None:
    model = tiny(step).train()
    a, b = torch.randn(4, 3, 32, 32), 3 * torch.randn(4, 3, 32, 32)
    stats = ActivationStats(model)
    with torch.no_grad():
        expected_a, expected_b = manual_stats(model, a), manual_stats(model, b)
        stats.active = True
        model(a)
        stats.end_batch()
        model(2 * b)  # not measured: inactive
        stats.end_batch()
        stats.active = True
        model(b)
        stats.end_batch()
    assert stats.batches == 2
    means = stats.means()
    assert set(means) == set(expected_a)
    for name, value in means.items():
        assert value == pytest.approx((expected_a[name] + expected_b[name]) / 2, rel=1e-5), name
    stats.remove()
    stats.reset()
    with torch.no_grad():
        model(a)
    assert stats.batches == 0 and all(math.isnan(v) for v in stats.means().values())


def test_activation_stats_under_bf16_autocast_and_channels_last() -> None:
    model = tiny("separate_downsampling").train().to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = manual_stats(model, x)
        stats = ActivationStats(model)
        stats.active = True
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(x)
        stats.end_batch()
    for name, value in stats.means().items():
        assert value == pytest.approx(expected[name], rel=0.05), name


class SGDNet(L.LightningModule):
    """A tiny rung under plain SGD (no momentum, no decay): an update is exactly -LR * grad, so the
    update/weight ratio is LR * |grad| / |weight|, computed here from the gradients alone."""

    def __init__(self) -> None:
        super().__init__()
        self.model = tiny("separate_downsampling")
        self.expected: list[list[float]] = []

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self.model(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.model.parameters(), lr=LR)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = torch.cat([p.grad.flatten() for p in self.model.parameters() if p.grad is not None])
        layers = update_layers(self.model).values()
        self.expected.append([grads.norm().item(), *(LR * (m.weight.grad.norm() / m.weight.norm()).item() for m in layers)])


def test_callback_logs_epoch_means_with_gradient_accumulation(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,)))
    module = SGDNet()
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, accumulate_grad_batches=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path,
        callbacks=[TrainingDynamics(every_n_batches=3)],
    )
    trainer.fit(module, train_dataloaders=DataLoader(data, batch_size=4))
    assert len(module.expected) == 2  # 4 batches, 2 optimizer steps
    logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("dyn/")}
    names = ["grad_norm", *(f"update_ratio/{n}" for n in update_layers(module.model))]
    for j, name in enumerate(names):
        expected = sum(step[j] for step in module.expected) / 2
        assert logged[f"dyn/{name}"] == pytest.approx(expected, rel=1e-3), name
    assert {f"dyn/stage{i}_{s}" for i in range(1, 5) for s in ("rms", "branch_ratio")} <= set(logged)
    assert all(math.isfinite(v) and v > 0 for v in logged.values())
    # the hooks are gone after fit
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in module.model.modules())


def test_write_epoch_row_adds_new_columns_and_replaces_later_epochs(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    old = {c: 1.0 for c in COLUMNS} | {"epoch": 0}
    write_epoch_row(path, old)  # a run recorded before the diagnostics
    write_epoch_row(path, old | {"epoch": 1, "dyn/grad_norm": 2.5})  # resumed with them
    write_epoch_row(path, old | {"epoch": 2})  # and again without
    table = pd.read_csv(path)
    assert table.columns.tolist() == [*COLUMNS, "dyn/grad_norm"]
    assert table["epoch"].tolist() == [0, 1, 2]
    assert table["dyn/grad_norm"].isna().tolist() == [True, False, True] and table.at[1, "dyn/grad_norm"] == 2.5
    write_epoch_row(path, old | {"epoch": 1, "train/loss": 0.5})  # epoch 1 trained again after a resume
    table = pd.read_csv(path)
    assert table["epoch"].tolist() == [0, 1] and table.at[1, "train/loss"] == 0.5


def test_train_loss_sum() -> None:
    assert train_loss_sum([{"train/loss": 2.0}, {"train/loss": 1.5}, {"train/loss": None}]) == 3.5
    assert train_loss_sum([]) is None


def test_run_records_diagnostics_and_computes_the_same_weights_without_them(tmp_path: Path) -> None:
    """End to end on the smoke config (gradient accumulation 2, channels_last, layer scale): the
    dyn/ columns are in metrics.csv with finite values, and the final weights are bitwise those
    of the same run with trainer.diagnostics=false."""
    args = ["step=separate_downsampling", *SMOKE, "trainer.deterministic=true"]
    runs = {}
    for flag in ("true", "false"):
        out = tmp_path / flag
        proc = run_cli([*args, f"trainer.diagnostics={flag}"], out, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        run_dir = out / "smoke" / "r50" / "separate_downsampling" / "seed0"
        runs[flag] = (result_of(out, "separate_downsampling"), pd.read_csv(run_dir / "metrics.csv"),
                      torch.load(run_dir / "last.ckpt", weights_only=True)["state_dict"])
    (on, metrics_on, weights_on), (off, metrics_off, weights_off) = runs["true"], runs["false"]
    dyn = [c for c in metrics_on if c.startswith("dyn/")]
    assert len(dyn) == 1 + 5 + 8 and "dyn/update_ratio/head.fc" in dyn and "dyn/stage4_branch_ratio" in dyn
    assert "dyn/update_ratio/stages.0.blocks.0.conv1" in dyn  # the endpoint's spatial (7×7 depthwise) conv
    assert len(metrics_on) == 2 and metrics_on[dyn].notna().all().all()
    assert (metrics_on[dyn] > 0).all().all() and metrics_on[dyn].apply(lambda c: c.map(math.isfinite)).all().all()
    assert not [c for c in metrics_off if c.startswith("dyn/")]
    assert on["config_hash"] == off["config_hash"]  # trainer.diagnostics is not part of the run's identity
    assert on["train_loss_sum"] == pytest.approx(metrics_on["train/loss"].sum(), abs=1e-5)
    assert on["train_loss_sum"] == off["train_loss_sum"]
    assert weights_on.keys() == weights_off.keys()
    assert all(torch.equal(weights_on[k], weights_off[k]) for k in weights_on)
