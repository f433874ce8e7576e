"""What the downstream tasks' datamodules share: the training set shuffled in batches, the validation
images one per batch (each at its own size), built once per process."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset


class TaskDataModule(L.LightningDataModule):
    """Subclasses say how their (train, val) sets are built (`build`) and batched (`collate_fn`)."""

    collate_fn: Callable[[list], Any] | None = None

    def __init__(self, per_device_batch: int, num_workers: int) -> None:
        super().__init__()
        self.per_device_batch, self.num_workers = per_device_batch, num_workers
        self.train_set: Dataset | None = None
        self.val_set: Any = None

    def build(self) -> tuple[Dataset, Any]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set, self.val_set = self.build()

    def prepare_data(self) -> None:
        self.setup()

    @property
    def validates(self) -> bool:
        return self.val_set is not None

    def skipped_images(self) -> list[str]:
        return []  # these readers stop at an unreadable image (one line naming it)

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=self.per_device_batch if train else 1, shuffle=train, drop_last=train,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          collate_fn=type(self).collate_fn)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)
