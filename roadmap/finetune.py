"""Fine-tuning: a run's first weights from another run, a checkpoint or a released state dict
(`init_from`), and the official ConvNeXt grouping for layer-wise lr decay.

The official code (facebookresearch/ConvNeXt `main.py`, `optim_factory.py`) loads a checkpoint's
weights into a freshly built model, dropping the head when its shape differs; the fresh head keeps
its init (truncated normal, std 0.02, times `head_init_scale`). Layer-wise lr decay gives each
parameter lr × decay^(L + 1 − layer), layers numbered as `layer_id` does.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from roadmap.model.convert import ConversionError, detect_format, map_onto_model
from roadmap.rundir import CHECKPOINT_FILE, check_record, recorded_config_hash, run_state

HEAD_KEYS = ("head.fc.weight", "head.fc.bias")


class InitFromError(RuntimeError):
    """`init_from` names no readable checkpoint, or weights that do not fit the rung (one line)."""


def layer_id(name: str, depths: list[int]) -> int:
    """A parameter's layer for layer-wise lr decay (`get_num_layer_for_convnext`, and the detection
    and segmentation code's `get_num_layer_layer_wise`): the stem 0; stage 0's blocks 1; stage 1
    and its downsampling 2; stage 2's blocks in threes, 3 + block // 3 (its downsampling 3); the last
    stage and its downsampling L = 3 + ceil(depths[2] / 3) (12 for S/B/L/XL, 6 for T); the rest L + 1."""
    if len(depths) != 4:
        raise ValueError(f"layer-wise lr decay groups the official four stages; this model has depths={depths}")
    last = 3 + math.ceil(depths[2] / 3)
    parts = name.split(".")
    if parts[0] == "stem":
        return 0
    if parts[0] != "stages":
        return last + 1
    stage = int(parts[1])
    if stage == 3:
        return last
    if parts[2] == "downsample" or stage < 2:
        return stage + 1
    return 3 + int(parts[3]) // 3


def group_matcher(depths: list[int]) -> Callable[[str], int]:
    """What `RoadmapNet.group_matcher` gives timm's `param_groups_layer_decay`: name → layer."""
    return lambda name: layer_id(name, depths)


def checkpoint_file(init_from: str) -> Path:
    """A completed run directory's last.ckpt, or the file itself (taken as it is)."""
    path = Path(init_from).expanduser()
    if path.is_dir():
        folder, path = path, path / CHECKPOINT_FILE
        if not path.is_file():
            raise InitFromError(f"init_from={init_from}: the folder holds no {CHECKPOINT_FILE} (a run directory "
                                f"has one once its first epoch has ended)")
        # A run still training (another sweep's, say) has a last.ckpt too: not the weights it will end with.
        try:
            check_record(folder)
            state = run_state(folder, recorded_config_hash(folder) or "")
        except ValueError as error:
            raise InitFromError(f"init_from={init_from}: {error}") from error
        if state != "done":
            raise InitFromError(f"init_from={init_from}: the run there has not completed (roadmap.status: {state}); "
                                f"finish it (its command resumes it), or give its checkpoint to start from it as it "
                                f"is: init_from={path}")
    elif not path.is_file():
        raise InitFromError(f"init_from={init_from}: no such file or folder")
    return path


def source_weights(path: Path, ema: bool) -> dict[str, torch.Tensor]:
    """The raw (or EMA) weights a checkpoint holds: a roadmap/Lightning last.ckpt (`model.*`,
    `ema.module.*`), the official code's `{"model": …, "model_ema": …}`, or a plain state dict."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure to read it is the same one line
        raise InitFromError(f"init_from={path}: cannot read it ({type(error).__name__}: "
                            f"{str(error).strip().splitlines()[0] if str(error).strip() else ''})") from error
    if not isinstance(state, Mapping):
        raise InitFromError(f"init_from={path}: holds a {type(state).__name__}, not a state dict or checkpoint")
    which = "EMA" if ema else "raw"
    if "state_dict" in state and "global_step" in state:  # Lightning
        prefix = "ema.module." if ema else "model."
        weights = {k.removeprefix(prefix): v for k, v in state["state_dict"].items() if k.startswith(prefix)}
    elif "model" in state and isinstance(state["model"], Mapping):  # the official code's checkpoints
        weights = dict(state.get("model_ema" if ema else "model") or {})
    elif ema:
        weights = {}
    else:
        weights = dict(state.get("state_dict", state))
    if not weights:
        raise InitFromError(f"init_from={path}: holds no {which} weights (init_from_ema={str(ema).lower()})")
    return weights


def content_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def initialize(model: nn.Module, init_from: str, ema: bool = False) -> dict[str, Any]:
    """Load `init_from`'s weights into `model` (renamed from timm/torchvision keys when they are
    theirs); a head of another shape is left as the model initialized it. Returns what result.json
    records of the source."""
    path = checkpoint_file(init_from)
    weights = source_weights(path, ema)
    try:
        converted = map_onto_model(weights, model, drop=HEAD_KEYS)
    except ConversionError as error:
        raise InitFromError(f"init_from={path}: {error}") from error
    model.load_state_dict(converted, strict=False)
    kept_head = all(k in converted for k in HEAD_KEYS)
    return {
        "init_from": str(path.resolve()),
        "init_from_sha256": content_hash(path),
        "init_from_format": detect_format(weights),
        "init_from_weights": "ema" if ema else "raw",
        "head_reinitialized": not kept_head,
    }
