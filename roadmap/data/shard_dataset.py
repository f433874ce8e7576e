"""litdata's StreamingDataset for a shard split, naming the chunk file of an item it cannot read (imported
only when litdata is installed, by `litdata_shards.open_split`)."""
from __future__ import annotations

from typing import Any

from litdata import StreamingDataset

from roadmap.data.errors import DataError


class ShardDataset(StreamingDataset):
    """A StreamingDataset whose read errors (damaged item headers or Arrow blocks in a chunk of the right size)
    raise a DataError naming the chunk file; `shard_sample` (a `ShardSample`) is set by `open_split`."""

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, (slice, str)):
            return super().__getitem__(index)
        position = int(getattr(index, "index", index))  # a ChunkedIndex (iterating) or an int
        try:
            return super().__getitem__(index)
        except DataError:
            raise
        except Exception as error:  # noqa: BLE001 - any damage litdata or pyarrow meets, named with its file
            if not 0 <= position < len(self):
                raise
            raise self.shard_sample.damaged(position, error) from error
