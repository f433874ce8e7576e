"""Shard formats for data.format=shards: litdata (chosen) against webdataset, write and read s, each as a
ratio against reading the same image files one by one, in the same run.

    python benchmarks/shard_formats.py                      # imagenette2-64 train (9,469 JPEGs)
    python benchmarks/shard_formats.py --split val --rounds 5

One process, one thread. Write: every image's bytes, label, path, index and CRC (litdata:
`BinaryWriter` of `roadmap.data.litdata_shards.shard_item`, as `write_shards` writes, without its decode
check; webdataset: `ShardWriter` tars of the bytes and label), 64 MB shards.
Read: one pass over every sample's bytes in write order (litdata `StreamingDataset`, webdataset
`WebDataset`), and litdata's random access `dataset[i]` in a shuffled order; the reference is reading
the files (`open().read()`, ImageFolder order or the same shuffled order). The files are in the page
cache after the first round, so the reference is a local disk's best case, not a network filesystem's.
Rounds alternate the order of the parts; medians over `--rounds`. Needs litdata (the `shards`
extra); without webdataset (`pip install webdataset`) its parts are left out.
"""
from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torchvision.datasets import ImageFolder

from common import environment, print_table
from input_pipeline import default_data_root

from roadmap.data.litdata_shards import shard_item  # noqa: E402 - common puts the repository on sys.path


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=default_data_root(),
                        help="folder holding imagenette2-64/ (default $ROADMAP_DATA_DIR or ../shared/data)")
    parser.add_argument("--split", default="train", choices=("train", "val"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", type=int, default=0, help="only the first N images (0: all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    import litdata
    from litdata.streaming.writer import BinaryWriter

    try:
        import webdataset as wds
    except ImportError:
        wds = None

    samples = ImageFolder(str(args.data_root / "imagenette2-64" / args.split)).samples
    samples = samples[: args.limit or None]
    shuffled = list(range(len(samples)))
    random.Random(0).shuffle(shuffled)
    print(f"# shard formats: {len(samples)} JPEGs of imagenette2-64/{args.split}, litdata {litdata.__version__}, "
          f"webdataset {wds.__version__ if wds else 'not installed: its parts are left out'}")
    for line in environment(torch.device("cpu"), args):
        print(f"# {line}")
    print()

    def items() -> list[dict]:
        return [shard_item(Path(p).read_bytes(), y, p, i) for i, (p, y) in enumerate(samples)]

    def write_litdata(out: Path) -> None:
        writer = BinaryWriter(str(out), chunk_bytes=64 * 2**20)
        for i, item in enumerate(items()):
            writer[i] = item
        writer.done()
        writer.merge()

    def write_wds(out: Path) -> None:
        out.mkdir()
        with wds.ShardWriter(str(out / "%06d.tar"), maxsize=64e6, verbose=0) as sink:
            for i, item in enumerate(items()):
                sink.write({"__key__": f"{i:08d}", "jpg": item["jpeg"], "cls": item["label"]})

    def read_files(order: list[int]) -> None:
        for i in order:
            Path(samples[i][0]).read_bytes()

    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="roadmap-shards-") as tmp:
        ld_dir, wds_dir = Path(tmp) / "litdata", Path(tmp) / "wds"
        for r in range(args.rounds):
            for path in (ld_dir, wds_dir):
                shutil.rmtree(path, ignore_errors=True)
            parts = {
                "write: files read (reference)": lambda: items(),
                "write: litdata": lambda: write_litdata(ld_dir),
                "write: webdataset": lambda: write_wds(wds_dir),
            }
            if wds is None:
                del parts["write: webdataset"]
            for name in (parts if r % 2 == 0 else reversed(list(parts))):
                times.setdefault(name, []).append(seconds(parts[name]))
            dataset = litdata.StreamingDataset(str(ld_dir))
            tars = sorted(str(p) for p in wds_dir.glob("*.tar"))
            parts = {
                "read in order: files (reference)": lambda: read_files(list(range(len(samples)))),
                "read in order: litdata": lambda: [item["jpeg"] for item in dataset],
                "read in order: webdataset": lambda: [s["jpg"] for s in wds.WebDataset(tars, shardshuffle=False,
                                                                                        empty_check=False)],
                "read shuffled: files (reference)": lambda: read_files(shuffled),
                "read shuffled: litdata dataset[i]": lambda: [dataset[i]["jpeg"] for i in shuffled],
            }
            if wds is None:
                del parts["read in order: webdataset"]
            for name in (parts if r % 2 == 0 else reversed(list(parts))):
                times.setdefault(name, []).append(seconds(parts[name]))
            print(f"#   round {r + 1} done", file=sys.stderr, flush=True)

    rows = []
    for name, values in times.items():
        ref = statistics.median(times[next(n for n in times if n.startswith(name.split(":")[0] + ":"))])
        median = statistics.median(values)
        rows.append({"part": name, "median s": median, "us/image": 1e6 * median / len(samples),
                     "speed vs reference": ref / median, "rounds (s)": " ".join(f"{v:.2f}" for v in values)})
    print_table(rows, ["part", "median s", "us/image", "speed vs reference", "rounds (s)"],
                {"median s": 3, "us/image": 1, "speed vs reference": 3})
    return 0


if __name__ == "__main__":
    sys.exit(main())
