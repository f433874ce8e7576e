"""Progress lines for logs that are not a terminal (roadmap.callbacks.PlainProgress)."""
from __future__ import annotations

import pytest


def test_progress_lines_give_the_rate_of_their_own_interval(caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    """A progress line's img/s covers the batches since the previous line, not the epoch so far."""
    from types import SimpleNamespace

    import torch

    from roadmap import callbacks

    clock = iter([0.0, 0.0, 10.0, 11.0])  # made, epoch start; 2 slow batches end at 10 s, 2 fast ones at 11 s
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: next(clock))
    trainer = SimpleNamespace(num_training_batches=4, world_size=1, current_epoch=0, global_step=0, callback_metrics={})
    progress = callbacks.PlainProgress(every=2)
    progress.on_train_epoch_start(trainer, None)
    batch = (torch.zeros(8, 3, 4, 4), torch.zeros(8))
    with caplog.at_level("INFO", logger="roadmap.run"):
        for index in range(4):
            progress.on_train_batch_end(trainer, None, None, batch, index)
    assert [r.getMessage().split(", ")[-1] for r in caplog.records] == [
        "1.6 img/s over the last 2 batches", "16.0 img/s over the last 2 batches"]
