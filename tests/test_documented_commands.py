"""Every concrete command in the README, docs/, the experiments' READMEs and the comments of conf/'s
presets works as documented:
its overrides compose (Hydra), name existing presets, rungs and keys, and pass the run's checks
(`plan_run`) — without training. Synopses with placeholders (`<step>`, `[…]`, `…`) are skipped;
the commands themselves run end to end at smoke size in test_run, test_sweep, test_report and test_ladder."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra import compose

from roadmap.ladder import compose_run, hydra_context
from roadmap.plan import plan_run
from roadmap.preset import expand, plan_rungs
from roadmap.shards import build_parser

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "experiments" / "README.md",
             *sorted((REPO / "experiments").glob("*/README.md"))]
PRESETS = sorted((REPO / "conf").rglob("*.yaml"))  # their comments say how to run them
CONFIG_OF = {"run": "train", "inspect": "inspect", "sweep": "sweep", "status": "status", "collect": "collect",
             "report": "report"}
COMMAND = re.compile(r"python -m roadmap\.(\w+)(.*)")


def _commands(text: str) -> list[str]:
    """The `python -m roadmap.…` command lines of fenced blocks (continuations joined, comments cut) and inline code."""
    lines = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        lines += [line.split(" #")[0] for line in block.replace("\\\n", " ").splitlines()]
    lines += re.findall(r"`([^`]*python -m roadmap\.[^`]*)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return [m.group(0).strip() for line in lines if (m := COMMAND.search(line))]


# Commands that need arguments: named alone, they are a reference in prose, not an invocation.
NEEDS_ARGUMENTS = {"shards", "sweep", "status"}


def _is_synopsis(command: str, args: list[str]) -> bool:
    return (not args and command in NEEDS_ARGUMENTS) or any(
        a.startswith("[") or "<" in a or "…" in a or "..." in a for a in args)


def _commented_commands(text: str) -> list[str]:
    """The comment lines of a YAML file that are a `python -m roadmap.…` command (not prose naming one)."""
    lines = [line.strip().lstrip("#").strip() for line in text.splitlines() if line.strip().startswith("#")]
    return [line for line in lines if line.startswith("python -m roadmap.")]


def documented_commands() -> list[tuple[str, str, list[str]]]:
    found = {}
    sources = [(d, _commands) for d in DOCUMENTS] + [(p, _commented_commands) for p in PRESETS]
    for document, commands in sources:
        for line in commands(document.read_text()):
            command, rest = COMMAND.match(line).groups()
            args = shlex.split(rest)
            if not _is_synopsis(command, args):
                found.setdefault(line, (document.relative_to(REPO).as_posix(), command, args))
    return [found[line] for line in sorted(found)]


def _hydra_overrides(args: list[str]) -> list[str]:
    """The overrides of a Hydra command line, without its --flags (`--cfg job`)."""
    overrides, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg.startswith("--"):
            skip = arg in ("--cfg", "-c", "--package", "-p")
        else:
            overrides.append(arg)
    return overrides


COMMANDS = documented_commands()


def test_the_documents_have_commands_to_check() -> None:
    assert {command for _, command, _ in COMMANDS} >= {"run", "inspect", "sweep", "status", "collect", "report", "shards"}


@pytest.mark.parametrize(("document", "command", "args"), COMMANDS,
                         ids=[f"{doc}:{cmd} {' '.join(args)}"[:120] for doc, cmd, args in COMMANDS])
def test_a_documented_command_composes_and_passes_its_checks(document: str, command: str, args: list[str],
                                                            tmp_path: Path) -> None:
    if command == "shards":
        build_parser().parse_args(args)
        return
    if command == "schema":  # writes the config reference: `python -m roadmap.schema > docs/config.md`
        assert args == [">", "docs/config.md"]
        return
    assert command in CONFIG_OF, f"{document}: python -m roadmap.{command} is no command"
    overrides = _hydra_overrides(args)
    # Planned under an empty output_root: an `init_from=<experiment>` of the command names recorded runs
    # whose checkpoints are not committed (a clone has their folders, not their last.ckpt).
    elsewhere = f"output_root={tmp_path}"
    if command in ("run", "inspect"):
        cfg = compose_run([*overrides, elsewhere], CONFIG_OF[command])
        if command == "run":
            plan_run(cfg)
        return
    with hydra_context():
        cfg = compose(CONFIG_OF[command], overrides=overrides)
    if command in ("sweep", "status"):
        rungs, _ = expand(cfg)
        passed_on = [o for o in overrides if o.lstrip("+~").split("=", 1)[0].split(".")[0] not in ("roadmap", "launcher")]
        plan_rungs(rungs[:1], [*passed_on, elsewhere])
