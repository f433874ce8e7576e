"""Issue 11 item 9: unreadable images (zero-byte, truncated, garbage) on a copy of the mini set.
`python -m roadmap.run` skips them, names each in its log and counts them in result.json;
data.on_bad_image=error stops the run with a message naming the file."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_data import bad_image_set
from tests.test_run import result_of, run_cli


@pytest.fixture
def bad_copy(mini_data: Path, tmp_path: Path) -> tuple[Path, list[Path]]:
    root = tmp_path / "data"
    bad = bad_image_set(mini_data, root)  # three in train
    empty = root / "val" / "n02102040" / "empty.jpg"
    empty.write_bytes(b"")  # and an empty one in val
    return root, [*bad, empty]


def run_args(root: Path, *extra: str) -> list[str]:
    # Whole epochs, so that every image is read.
    return ["experiment=smoke", "step=resnet50", f"data.root={root}", "data.num_classes=2",
            "trainer.limit_train_batches=null", "recipe.epochs=1", *extra]


@pytest.mark.parametrize("in_memory", ["false", "true"])
def test_run_skips_and_counts_bad_images(bad_copy: tuple[Path, list[Path]], tmp_path: Path, in_memory: str) -> None:
    root, bad = bad_copy
    out = tmp_path / "out"
    proc = run_cli(run_args(root, f"data.in_memory={in_memory}"), out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = result_of(out, "resnet50")
    assert result["status"] == "completed" and result["skipped_images"] == len(bad) == 4
    log = (out / "smoke" / "r50" / "resnet50" / "seed0" / "run.log").read_text()
    for path in bad:
        assert f"skipping unreadable image {path} " in log


def test_run_on_bad_image_error(bad_copy: tuple[Path, list[Path]], tmp_path: Path) -> None:
    root, bad = bad_copy
    proc = run_cli(run_args(root, "data.on_bad_image=error", "data.in_memory=false"), tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 2
    assert "cannot read image" in proc.stderr and any(str(path) in proc.stderr for path in bad)
