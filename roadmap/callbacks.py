"""Per-epoch metrics that survive a resume: one row per epoch appended to metrics.csv."""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

import lightning as L

from roadmap.diagnostics import PREFIX as DYNAMICS_PREFIX
from roadmap.results import METRICS_FILE, refresh_lock, write_atomic

COLUMNS = ["epoch", "step", "lr", "train/loss", "val/loss", "val/top1", "val/top5", "val/top1_ema",
           "val/top5_ema", "img_per_s"]


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one row to a CSV file; a column the file lacks (e.g. a run resumed with diagnostics
    from one recorded without them) rewrites it with the column added, empty in earlier rows."""
    header: list[str] = []
    if path.is_file():
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
    new = [k for k in row if k not in header]
    if header and new:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=header + new, restval="")
        writer.writeheader()
        writer.writerows([*rows, row])
        write_atomic(path, text.getvalue())
        return
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header or list(row), restval="")
        if not header:
            writer.writeheader()
        writer.writerow(row)


class EpochMetrics(L.Callback):
    """Appends each finished epoch to metrics.csv (rank 0) and keeps this attempt's rows."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / METRICS_FILE
        self.rows: list[dict[str, Any]] = []
        self.resumed_from_step: int | None = None
        self._last_refresh = time.monotonic()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.resumed_from_step = trainer.global_step or None
        self._last_refresh = time.monotonic()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.is_global_zero and time.monotonic() - self._last_refresh > 60:
            refresh_lock(self.path.parent)  # tells `roadmap.status` on other hosts it is alive
            self._last_refresh = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        logged = trainer.callback_metrics
        row: dict[str, Any] = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        sources = {"train/loss": "train/loss_epoch", "lr": "lr"}
        for column in COLUMNS[2:]:
            value = logged.get(sources.get(column, column))
            row[column] = round(float(value), 6) if value is not None else None
        row["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        for key in [k for k in logged if k.startswith(DYNAMICS_PREFIX)]:  # roadmap.diagnostics, in its order
            row[key] = float(f"{float(logged[key]):.6g}")
        self.rows.append(row)
        append_row(self.path, row)

    def history(self) -> list[dict[str, Any]]:
        """Every epoch recorded in metrics.csv (across attempts; a rerun epoch keeps its last row)."""
        if not self.path.is_file():
            return self.rows
        by_epoch: dict[int, dict[str, Any]] = {}
        with open(self.path, newline="") as f:
            for row in csv.DictReader(f):
                by_epoch[int(row["epoch"])] = {k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
        return [by_epoch[e] for e in sorted(by_epoch)]

    def mean_img_per_s(self) -> float | None:
        values = [r["img_per_s"] for r in self.rows if r.get("img_per_s")]
        return round(sum(values) / len(values), 2) if values else None
