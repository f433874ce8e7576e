"""`python -m roadmap.shards <source> <out> [--force] [--chunk-mb 64] [--on-bad-image skip|error]`: write an
ImageNet layout as litdata shards, read by `data.format=shards` (`roadmap.data.litdata_shards`).

<source> is any layout `data=imagenet` reads (train/ and val/ class folders, or the official archives +
devkit, extracted first). Each split is written into `<out>/.<split>.partial` and renamed when complete,
and the manifest comes last: rerunning an interrupted command keeps the finished splits; a finished
output is only rewritten with --force.

"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from roadmap.data.errors import DataError
from roadmap.data.litdata_shards import write_shards


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m roadmap.shards", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="an ImageNet layout: train/ and val/ class folders, or the archives")
    parser.add_argument("out", type=Path, help="the shard folder to write (data.root for data.format=shards)")
    parser.add_argument("--force", action="store_true", help="rewrite a finished output")
    parser.add_argument("--chunk-mb", type=float, default=64, help="size of a chunk file in MiB (default 64)")
    parser.add_argument("--on-bad-image", choices=("skip", "error"), default="skip",
                        help="an unreadable image: skip (logged, listed in the manifest) or stop")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        manifest = write_shards(args.source, args.out, args.force, int(args.chunk_mb * 2**20), args.on_bad_image)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{split} {info['images']} images ({len(info['skipped'])} skipped)"
                       for split, info in manifest["splits"].items())
    print(f"wrote {args.out}: {len(manifest['classes'])} classes, {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
