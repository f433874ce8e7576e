"""The documentation: the README stays a short front door, its set-up commands are the ones CI runs,
every relative link resolves, and experiments/README.md indexes every recorded experiment."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EXPERIMENTS = ROOT / "experiments"
INSTALL = ('pip install torch==2.14.1 torchvision==0.29.1 && pip install -e ".[dev]" && '
           "ROADMAP_DATA_DIR=../shared/data python -m roadmap.run")

# [text](target) and ![alt](target); the target ends at whitespace or ')'.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def doc_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md")), EXPERIMENTS / "README.md"]


def relative_links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)  # code blocks hold no links
    targets = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # http(s), mailto, …; an anchor in the same file
        targets.append(target.split("#", 1)[0])
    return targets


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines (at most 150): move detail to docs/"


def test_readme_has_the_setup_commands() -> None:
    text = README.read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    test_commands = [line.strip() for line in ci.splitlines() if line.strip().startswith("python -m pytest")]
    assert test_commands, ".ci/run runs no `python -m pytest` line"
    readme_lines = {line.strip() for line in text.splitlines()}
    for command in test_commands:
        assert command in readme_lines, f"README.md lacks CI's test command: {command}"
    assert INSTALL in readme_lines, f"README.md lacks the install command: {INSTALL}"


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing"
    broken = [t for t in relative_links(path) if not (path.parent / t).exists()]
    assert not broken, f"{path.relative_to(ROOT)} links to missing files: {broken}"


def test_experiments_index_names_every_folder() -> None:
    text = (EXPERIMENTS / "README.md").read_text(encoding="utf-8")
    folders = sorted(p.name for p in EXPERIMENTS.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert folders, "experiments/ has no folder"
    missing = [name for name in folders if not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text)]
    assert not missing, f"experiments/README.md does not mention: {missing}"
