"""Fine-tuning: `init_from` (roadmap, timm and torchvision sources; raw or EMA; the head swap) and
layer-wise lr decay against the official ConvNeXt assignment."""
from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

import roadmap
from roadmap.finetune import InitFromError, initialize
from roadmap.recipe import layer_decay_groups
from roadmap.rundir import LOCK_FILE, write_result

QUARTER = {"width_mult": 0.25}


def official_layer(name: str, max_layer: int) -> int:
    """The official code's layer of a parameter named as in facebookresearch/ConvNeXt's models
    (`downsample_layers.<i>`, `stages.<i>.<j>`, `norm`, `head`): `optim_factory.get_num_layer_for_convnext`
    (max_layer 12), and `get_num_layer_layer_wise` of its detection/segmentation code (6 for T)."""
    parts = name.split(".")
    if parts[0] == "downsample_layers":
        return {0: 0, 1: 2, 2: 3, 3: max_layer}[int(parts[1])]
    if parts[0] == "stages":
        stage, block = int(parts[1]), int(parts[2])
        return {0: 1, 1: 2, 2: 3 + block // 3, 3: max_layer}[stage]
    return max_layer + 1


def official_name(ours: str) -> str:
    """Our parameter's name in the official model."""
    rules = [(r"^stem\.conv\.", "downsample_layers.0.0."), (r"^stem\.norm\.", "downsample_layers.0.1."),
             (r"^stages\.(\d+)\.downsample\.norm\.", r"downsample_layers.\1.0."),
             (r"^stages\.(\d+)\.downsample\.conv\.", r"downsample_layers.\1.1."),
             (r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2."), (r"^head\.norm\.", "norm."), (r"^head\.fc\.", "head.")]
    for pattern, replacement in rules:
        ours = re.sub(pattern, replacement, ours)
    return ours


@pytest.mark.parametrize(("model", "max_layer"), [("convnext_tiny", 6), ("convnext_small", 12), ("convnext_base", 12),
                                                  ("convnext_large", 12), ("convnext_xlarge", 12)])
def test_layer_decay_multipliers_equal_the_official_assignment(model: str, max_layer: int) -> None:
    decay, weight_decay = 0.8, 0.05
    with torch.device("meta"):
        net = roadmap.build_model(model)
    groups = layer_decay_groups(net, weight_decay, decay, lr=1.0)
    names = {id(p): n for n, p in net.named_parameters()}
    seen = 0
    for group in groups:
        for param in group["params"]:
            name = official_name(names[id(param)])
            assert group["lr"] == pytest.approx(decay ** (max_layer + 1 - official_layer(name, max_layer)), rel=1e-12), name
            no_decay = param.ndim == 1 or name.endswith(".bias")
            assert group["weight_decay"] == (0.0 if no_decay else weight_decay), name
            seen += 1
    assert seen == len(names)
    assert len({g["lr"] for g in groups}) == max_layer + 2  # every layer present, the stem to the head


def test_layer_decay_is_an_adamw_option_alone() -> None:
    from omegaconf import OmegaConf

    from roadmap.ladder import conf_dir
    from roadmap.schema import ConfigError, check

    paper = OmegaConf.to_container(OmegaConf.load(conf_dir() / "recipe" / "paper.yaml").optimizer)
    check({**paper, "layer_decay": 0.8}, "recipe.optimizer")
    with pytest.raises(ConfigError, match="recipe.optimizer.layer_decay=0.8 is an AdamW option"):
        check({**paper, "name": "sgd", "layer_decay": 0.8}, "recipe.optimizer")
    with pytest.raises(ConfigError, match=r"recipe.optimizer.layer_decay=1.5 must be a number >= 0 and <= 1"):
        check({**paper, "layer_decay": 1.5}, "recipe.optimizer")


def _lightning_checkpoint(model: torch.nn.Module, path: Path, ema_scale: float = 2.0) -> Path:
    state = model.state_dict()
    torch.save({"global_step": 8, "state_dict": {**{f"model.{k}": v for k, v in state.items()},
                                                 **{f"ema.module.{k}": v * ema_scale for k, v in state.items()}}}, path)
    return path


def test_same_head_checkpoint_loads_every_weight_raw_or_ema(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = roadmap.build_model("patchify_stem", num_classes=10, **QUARTER)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _lightning_checkpoint(source, run_dir / "last.ckpt")
    write_result(run_dir, {"status": "completed", "top1": 50.0})
    for init_from, ema, scale in [(run_dir, False, 1.0), (run_dir / "last.ckpt", True, 2.0)]:
        target = roadmap.build_model("patchify_stem", num_classes=10, **QUARTER)
        record = initialize(target, str(init_from), ema=ema)
        for key, value in source.state_dict().items():
            assert torch.equal(target.state_dict()[key], value * scale), key
        assert record["init_from"] == str((run_dir / "last.ckpt").resolve()) and len(record["init_from_sha256"]) == 16
        assert record["init_from_weights"] == ("ema" if ema else "raw") and record["head_reinitialized"] is False


def test_a_head_of_another_shape_keeps_the_rungs_own_init(tmp_path: Path) -> None:
    """Pre-trained on 5 classes, fine-tuned on 10: every weight but the head's is the checkpoint's;
    the head is the fresh model's (truncated normal x head_init_scale), as the official code does."""
    torch.manual_seed(0)
    source = roadmap.build_model("separate_downsampling", num_classes=5, **QUARTER)
    path = _lightning_checkpoint(source, tmp_path / "five.ckpt")
    target = roadmap.build_model("separate_downsampling", num_classes=10, head_init_scale=0.001, **QUARTER)
    fresh_head = target.head.fc.weight.detach().clone()
    record = initialize(target, str(path))
    assert record["head_reinitialized"] is True
    assert torch.equal(target.head.fc.weight, fresh_head) and fresh_head.std() < 0.001 * 0.03
    for key, value in source.state_dict().items():
        if not key.startswith("head.fc."):
            assert torch.equal(target.state_dict()[key], value), key


def test_a_timm_state_dict_file_fine_tunes_the_family_rung(tmp_path: Path) -> None:
    torch.manual_seed(0)
    dims = roadmap.compose_arch("convnext_tiny", overrides=QUARTER).stage_widths()
    released = timm.create_model("convnext_tiny", dims=dims)  # 1000 classes
    path = tmp_path / "convnext_tiny.pth"
    torch.save(released.state_dict(), path)
    ours = roadmap.build_model("convnext_tiny", num_classes=10, **QUARTER)
    record = initialize(ours, str(path))
    assert record["init_from_format"] == "timm_convnext" and record["head_reinitialized"] is True
    assert torch.equal(ours.stages[2].blocks[4].conv2.weight.flatten(1), released.stages[2].blocks[4].mlp.fc1.weight)
    official = tmp_path / "official.pth"  # the official code's checkpoints: {"model": …, "model_ema": …}
    torch.save({"model": released.state_dict()}, official)
    assert initialize(roadmap.build_model("convnext_tiny", **QUARTER), str(official))["head_reinitialized"] is False


def test_bad_sources_are_one_line_naming_the_file_and_the_key(tmp_path: Path) -> None:
    model = roadmap.build_model("patchify_stem", num_classes=10, **QUARTER)
    with pytest.raises(InitFromError, match=r"init_from=.*nowhere.ckpt: no such file or folder"):
        initialize(model, str(tmp_path / "nowhere.ckpt"))
    with pytest.raises(InitFromError, match="holds no last.ckpt"):
        initialize(model, str(tmp_path))
    # a run directory whose run has not completed (stopped, still training, failed): not its final weights
    running = tmp_path / "running"
    running.mkdir()
    _lightning_checkpoint(model, running / "last.ckpt")
    with pytest.raises(InitFromError, match=r"running: the run there has not completed \(roadmap.status: interrupted\); "
                                            r"finish it \(its command resumes it\), .* init_from=.*running/last.ckpt$"):
        initialize(model, str(running))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # another sweep trains it: its lock is held by a live process
        (running / LOCK_FILE).write_text(json.dumps({"pid": other.pid, "host": platform.node()}))
        with pytest.raises(InitFromError, match=r"has not completed \(roadmap.status: running\)"):
            initialize(model, str(running))
    finally:
        other.kill()
        other.wait()
    write_result(running, {"status": "failed", "top1": None})
    with pytest.raises(InitFromError, match=r"has not completed \(roadmap.status: failed\)"):
        initialize(model, str(running))
    assert initialize(model, str(running / "last.ckpt"))["init_from"].endswith("last.ckpt")  # the file: as it is
    (tmp_path / "corrupt.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(InitFromError, match=r"corrupt.ckpt: cannot read it \(UnpicklingError"):
        initialize(model, str(tmp_path / "corrupt.ckpt"))
    other = _lightning_checkpoint(roadmap.build_model("resnet50", num_classes=10, **QUARTER), tmp_path / "r50.ckpt")
    with pytest.raises(InitFromError, match=r"r50.ckpt: roadmap weights do not fit this rung: first mismatched key "
                                            r"stem.conv.weight: \[16, 3, 7, 7\] in the weights, \[16, 3, 4, 4\]") as error:
        initialize(model, str(other))
    assert "\n" not in str(error.value)
    plain = tmp_path / "plain.pth"
    torch.save(model.state_dict(), plain)
    with pytest.raises(InitFromError, match="holds no EMA weights"):
        initialize(model, str(plain), ema=True)
