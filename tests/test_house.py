"""The shape of the code: one owner of the run directory, commands that do not import commands,
benchmarks on public names only. Read from the source (ast), so a violation names its file and line."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "roadmap"
COMMANDS = {"run", "sweep", "status", "inspect", "collect", "report", "shards"}  # python -m roadmap.<name>
RUN_DIR_OWNER = PACKAGE / "rundir.py"
# What only the run-directory module may spell: the layout and the names of a run's and an experiment's files.
RUN_PATH_PATTERN = re.compile(
    r"/seed|seed(\{|\$\{|\*)|\*/\*/|^(config\.yaml|result\.json|last\.ckpt|metrics\.csv|previous_metrics\.csv|"
    r"run\.log|stdout\.log|running\.json|slurm_job\.json|results\.csv|results\.parquet|summary\.csv|ladder\.md)$"
)


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def _imported_modules(tree: ast.AST, module: str) -> set[str]:
    """The roadmap modules a module imports (`from roadmap import x` counts as roadmap.x when x is a module)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(module.split(".")[: -node.level] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in found if name.startswith("roadmap")}


def _code_strings(tree: ast.AST) -> list[ast.Constant]:
    """Every string constant that is not a docstring (f-string parts included)."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_no_command_module_imports_another_command_module() -> None:
    commands = {f"roadmap.{name}" for name in COMMANDS}
    offences = []
    for path in _modules():
        module = _module_name(path)
        imported = _imported_modules(ast.parse(path.read_text()), module) & commands
        if module in commands:
            imported.discard(module)
        offences += [f"{path.relative_to(REPO)} imports {name}" for name in sorted(imported)]
    assert not offences, "commands are thin; what they share lives in library modules:\n" + "\n".join(offences)


def test_the_run_path_is_spelled_in_the_run_directory_module_only() -> None:
    offences = []
    for path in _modules():
        if path == RUN_DIR_OWNER:
            continue
        for node in _code_strings(ast.parse(path.read_text())):
            if RUN_PATH_PATTERN.search(node.value):
                offences.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
    for path in sorted((REPO / "conf").rglob("*.yaml")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"seed\$\{|/seed|\*/\*/", code):
                offences.append(f"{path.relative_to(REPO)}:{number}: {code.strip()}")
    assert not offences, "ask roadmap.rundir for run paths and file names:\n" + "\n".join(offences)


def test_the_run_path_check_finds_a_layout_string() -> None:
    """The check above can fail: it finds the layout as the configs used to spell it."""
    tree = ast.parse('out = f"{root}/{experiment}/{regime}/{rung}/seed{seed}"\nname = "result.json"\n')
    assert [n.value for n in _code_strings(tree) if RUN_PATH_PATTERN.search(n.value)] in (
        ["/seed", "result.json"], ["result.json", "/seed"])


@pytest.mark.parametrize("path", sorted((REPO / "benchmarks").glob("*.py")), ids=lambda p: p.name)
def test_benchmarks_import_public_library_names_only(path: Path) -> None:
    tree = ast.parse(path.read_text())
    offences = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("roadmap"):
            if node.module.removeprefix("roadmap.") in COMMANDS:
                offences.append(f"line {node.lineno}: from {node.module} (a command module)")
            offences += [f"line {node.lineno}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert not offences, f"{path.name} imports private or command names: {offences}"
