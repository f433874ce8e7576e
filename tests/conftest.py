"""Shared test fixtures. Reference files and data are read from ../shared beside the repository."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from tests.slurm_cluster import slurm_cluster  # noqa: F401 - the session's one-node SLURM cluster

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"../shared not found beside the repository (looked at {SHARED})")
    return SHARED


@pytest.fixture(scope="session")
def ladder_rows(shared_dir: Path) -> list[dict[str, str]]:
    with open(shared_dir / "reference" / "ladder.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="session")
def mini_data(shared_dir: Path) -> Path:
    return shared_dir / "data" / "imagenette2-64-mini"


@pytest.fixture(scope="session", autouse=True)
def decoded_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data.in_memory's cache (when the data folder is read-only) goes to a temporary folder, not ~/.cache."""
    folder = tmp_path_factory.mktemp("xdg_cache")
    os.environ["XDG_CACHE_HOME"] = str(folder)
    return folder
