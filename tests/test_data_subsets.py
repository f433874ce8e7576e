"""ImageNet-22K's layout (one folder per WordNet id, data.held_out) and class subsets (data.classes,
data=imagenet100), each on a small fake tree."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import DictConfig

from roadmap.data import DataError, build_datamodule
from roadmap.data.sources import CLASS_LISTS, class_list
from roadmap.run import execute
from tests.conftest import SHARED, TINY
from tests.test_data import make_cfg, write_images
from tests.test_recipe import compose_run

WNIDS = ["n01440764", "n02102040", "n02979186"]


def imagenet22k_tree(root: Path, per_class: int = 3) -> Path:
    """<root>/<wnid>/img<i>.JPEG, as fall11_whole unpacks (no train/ and val/)."""
    for wnid in WNIDS:
        write_images(root / wnid, per_class, ".JPEG")
    return root


def imagenet_tree(root: Path, wnids: list[str], per_class: int = 1) -> Path:
    """ImageNet-1K's layout: <root>/train/<wnid>/ and <root>/val/<wnid>/."""
    for split in ("train", "val"):
        for wnid in wnids:
            write_images(root / split / wnid, per_class, ".JPEG")
    return root


def cfg_of(data: str, root: Path, **overrides: object) -> DictConfig:
    return make_cfg(data, **{"data.root": str(root), "data.num_workers": 0, "data.in_memory": False, **overrides})


def datasets_of(cfg: DictConfig):
    dm = build_datamodule(cfg, per_device_batch=2)
    dm.setup("fit")
    return dm


def error_of(cfg: DictConfig) -> str:
    with pytest.raises(DataError) as error:
        datasets_of(cfg)
    message = str(error.value)
    assert "\n" not in message
    return message


# --- ImageNet-22K ----------------------------------------------------------------------------


def test_imagenet22k_without_held_out_trains_on_every_image_without_validation(tmp_path: Path) -> None:
    root = imagenet22k_tree(tmp_path / "fall11_whole")
    dm = datasets_of(cfg_of("imagenet22k", root, **{"data.num_classes": 3}))
    assert dm.train_set.classes == WNIDS and len(dm.train_set) == 9
    assert sorted(set(dm.train_set.targets)) == [0, 1, 2]
    assert dm.val_set is None and dm.val_dataloader() == []  # Lightning runs no validation
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape[0] == 2 and labels.max() < 3


def test_imagenet22k_held_out_images_are_the_val_set_and_left_out_of_training(tmp_path: Path) -> None:
    root = imagenet22k_tree(tmp_path / "winter21_whole")
    held = tmp_path / "held_out.txt"
    held.write_text(f"# held-out images\n{WNIDS[0]}/img0.JPEG\n\n{WNIDS[2]}/img1.JPEG  # another\n")
    dm = datasets_of(cfg_of("imagenet22k", root, **{"data.num_classes": 3, "data.held_out": str(held)}))
    val = {(Path(path).relative_to(root).as_posix(), label) for path, label in dm.val_set.samples}
    assert val == {(f"{WNIDS[0]}/img0.JPEG", 0), (f"{WNIDS[2]}/img1.JPEG", 2)}
    assert len(dm.train_set) == 7 and not {path for path, _ in val} & {
        Path(path).relative_to(root).as_posix() for path, _ in dm.train_set.samples}
    assert dm.val_set.classes == dm.train_set.classes == WNIDS
    assert dm.val_set.transform is not dm.train_set.transform  # the eval transform
    images, labels = next(iter(dm.val_dataloader()))
    assert images.shape[0] == 2 and labels.tolist() == [0, 2]


def test_imagenet22k_class_count_differs_from_num_classes(tmp_path: Path) -> None:
    root = imagenet22k_tree(tmp_path / "winter21_whole")
    message = error_of(cfg_of("imagenet22k", root))  # the preset's 21841
    assert message == f"data.num_classes=21841 but {root} has 3 classes; set data.num_classes=3."


def test_imagenet22k_held_out_list_errors(tmp_path: Path) -> None:
    root = imagenet22k_tree(tmp_path / "fall11_whole")
    held = tmp_path / "held_out.txt"
    held.write_text(f"{WNIDS[0]}/img0.JPEG\n{WNIDS[1]}/missing.JPEG\nn99999999/img0.JPEG\n")
    message = error_of(cfg_of("imagenet22k", root, **{"data.num_classes": 3, "data.held_out": str(held)}))
    assert message.startswith(f"data.held_out='{held}': 2 of its 3 images are not under data.root={root}, "
                              f"the first {WNIDS[1]}/missing.JPEG;")
    message = error_of(cfg_of("imagenet22k", root, **{"data.num_classes": 3, "data.held_out": str(tmp_path / "no.txt")}))
    assert message.startswith(f"data.held_out='{tmp_path / 'no.txt'}' is not a file;")


def test_held_out_images_of_classes_left_out_are_dropped(tmp_path: Path) -> None:
    root = imagenet22k_tree(tmp_path / "fall11_whole")
    (tmp_path / "two.txt").write_text(f"{WNIDS[2]}\n{WNIDS[0]}\n")
    held = tmp_path / "held_out.txt"
    held.write_text(f"{WNIDS[1]}/img0.JPEG\n{WNIDS[2]}/img0.JPEG\n")
    cfg = cfg_of("imagenet22k", root, **{"data.num_classes": 2, "data.classes": str(tmp_path / "two.txt"),
                                         "data.held_out": str(held)})
    dm = datasets_of(cfg)
    assert dm.train_set.classes == [WNIDS[0], WNIDS[2]] and len(dm.train_set) == 5
    assert [label for _, label in dm.val_set.samples] == [1]


# --- class subsets ---------------------------------------------------------------------------


def test_classes_from_a_file_read_only_those_folders_in_sorted_order(tmp_path: Path) -> None:
    root = imagenet_tree(tmp_path / "imagenet", [*WNIDS, "n04592741"], per_class=2)
    listed = tmp_path / "classes.txt"
    listed.write_text(f"# two classes, not in order\n{WNIDS[2]}\n\n{WNIDS[0]}  # tench\n")
    dm = datasets_of(cfg_of("imagenet", root, **{"data.num_classes": 2, "data.classes": str(listed)}))
    for split in (dm.train_set, dm.val_set):
        assert split.classes == [WNIDS[0], WNIDS[2]] and split.class_to_idx == {WNIDS[0]: 0, WNIDS[2]: 1}
        assert [(Path(path).parent.name, label) for path, label in split.samples] == [
            (WNIDS[0], 0), (WNIDS[0], 0), (WNIDS[2], 1), (WNIDS[2], 1)]


def test_the_shipped_imagenet100_list_and_its_preset(tmp_path: Path) -> None:
    reference = SHARED / "reference" / "imagenet100.txt"
    assert (CLASS_LISTS / "imagenet100.txt").read_bytes() == reference.read_bytes()
    wnids = [line for line in reference.read_text().splitlines() if line and not line.startswith("#")]
    assert len(wnids) == 100 and class_list("imagenet100").wnids == sorted(wnids)
    cfg = cfg_of("imagenet100", imagenet_tree(tmp_path / "imagenet", [*wnids, "n99999999"]))
    assert (cfg.data.name, cfg.data.classes, cfg.data.num_classes) == ("imagenet", "imagenet100", 100)
    dm = datasets_of(cfg)
    assert dm.train_set.classes == sorted(wnids) and len(dm.train_set) == len(dm.val_set) == 100
    assert dm.train_set.targets == list(range(100))


def test_a_listed_class_without_a_folder(tmp_path: Path) -> None:
    root = imagenet_tree(tmp_path / "imagenet", WNIDS[:1])
    listed = tmp_path / "classes.txt"
    listed.write_text("\n".join(WNIDS))
    message = error_of(cfg_of("imagenet", root, **{"data.num_classes": 3, "data.classes": str(listed)}))
    assert message.startswith(f"data.classes='{listed}': 2 of its 3 classes have no folder in {root / 'train'}, "
                              f"the first {WNIDS[1]};")


def test_num_classes_must_match_the_list(tmp_path: Path) -> None:
    root = imagenet_tree(tmp_path / "imagenet", WNIDS)
    listed = tmp_path / "classes.txt"
    listed.write_text("\n".join(WNIDS[:2]))
    message = error_of(cfg_of("imagenet", root, **{"data.classes": str(listed)}))
    assert message == f"data.num_classes=1000 but data.classes='{listed}' has 2 classes; set data.num_classes=2."


@pytest.mark.parametrize("data, key, value, says", [
    ("imagenet", "data.classes", "imagenet99", "data.classes='imagenet99' is neither a named list (imagenet100) nor a file"),
    ("cifar10", "data.classes", "imagenet100", "data.classes='imagenet100' picks class folders of imagenet, imagenet22k, "
                                               "imagenette; data.name='cifar10' has none: set data.classes=null."),
    ("imagenet", "data.held_out", "held.txt", "data.held_out='held.txt' applies to data=imagenet22k"),
], ids=["unknown list", "classes of cifar", "held_out of imagenet"])
def test_bad_selections(tmp_path: Path, data: str, key: str, value: str, says: str) -> None:
    root = imagenet_tree(tmp_path / "imagenet", WNIDS)
    assert error_of(cfg_of(data, root, **{"data.num_classes": 3, key: value})).startswith(says)


# --- a run without validation ----------------------------------------------------------------


def test_a_run_without_validation_records_no_accuracy(tmp_path: Path) -> None:
    """data=imagenet22k without data.held_out, end to end in this process: it trains, and result.json
    and metrics.csv hold no validation numbers."""
    import pandas as pd

    root = imagenet22k_tree(tmp_path / "fall11_whole", per_class=4)
    out = tmp_path / "out"
    assert execute(compose_run("experiment=smoke", "data=imagenet22k", f"data.root={root}", "data.num_classes=3",
                               *TINY, f"output_root={out}")) == 0
    run_dir = out / "smoke" / "r50" / "separate_downsampling" / "seed0"
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "completed" and result["dataset"] == "imagenet22k" and result["optimizer_steps"] == 1
    assert result["top1"] is None and result["top1_max"] is None and result["val_loss"] is None
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert metrics["val/top1"].isna().all() and metrics["train/loss"].notna().all()
