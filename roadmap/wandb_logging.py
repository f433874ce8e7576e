"""Weights & Biases logging that never hangs: offline unless an API key is set and the service
answers within seconds. WANDB_MODE, when set, wins."""
from __future__ import annotations

import hashlib
import netrc
import os
import socket
from typing import Any
from urllib.parse import urlparse

from omegaconf import OmegaConf

from roadmap.rundir import run_name

WANDB_HOST = "api.wandb.ai"


def has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        host = urlparse(os.environ.get("WANDB_BASE_URL", f"https://{WANDB_HOST}")).hostname or WANDB_HOST
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def reachable(host: str = WANDB_HOST, port: int = 443, timeout_s: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wandb_mode() -> str:
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if has_api_key() and reachable() else "offline"


def build_wandb_logger(plan: Any) -> Any:
    """A WandbLogger whose run id follows the output directory, so a resumed run continues it."""
    from lightning.pytorch.loggers import WandbLogger

    cfg = plan.cfg
    mode = wandb_mode()
    os.environ["WANDB_MODE"] = mode  # wandb's service reads it too; offline never calls the network
    run_id = hashlib.sha1(str(plan.out_dir.resolve()).encode()).hexdigest()[:12]
    return WandbLogger(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        name=run_name(cfg.experiment_name, cfg.regime.name, cfg.step, cfg.variant, int(cfg.seed)),
        id=run_id,
        resume="allow",
        save_dir=str(plan.out_dir),
        offline=mode == "offline",
        config=OmegaConf.to_container(cfg, resolve=True),
        settings={"init_timeout": 60, "silent": True},
    )
