"""The Dockerfile, checked statically (no container engine here to build it).

Each check ties the image to something that consumes it: the chart's security context,
commands, metrics port and model-store path; pyproject's console scripts; the CLI's
commands; the Makefile's torch pin; and the build context that .dockerignore lets through.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
import yaml

from erc_stream.cli import app

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CHART = ROOT / "deploy" / "helm" / "erc-stream"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


@dataclass(frozen=True)
class Instruction:
    stage: int  # index of the FROM it belongs to (-1: before the first FROM)
    keyword: str
    args: str
    line: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped (Dockerfile syntax)."""
    out: list[Instruction] = []
    stage = -1
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are skipped
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(stage, keyword, args.strip(), start))
    assert not pending, "Dockerfile ends inside a continued line"
    return out


def _exec_form(instr: Instruction) -> list[str]:
    try:
        value = json.loads(instr.args)
    except json.JSONDecodeError:
        pytest.fail(f"line {instr.line}: {instr.keyword} must use the exec (JSON) form so signals reach the process")
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), instr
    return value


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def _arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    out = {}
    for instr in instructions:
        if instr.keyword == "ARG" and "=" in instr.args:
            name, _, default = instr.args.partition("=")
            out.setdefault(name.strip(), default.strip())
    return out


def _resolve(text: str, defaults: dict[str, str]) -> str:
    """``text`` with ``$NAME`` / ``${NAME}`` replaced by ARG defaults."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: defaults.get(m.group(1) or m.group(2), m.group(0)), text)


def _final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def _console_scripts() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def test_parser_joins_continuations_and_skips_comments() -> None:
    text = '# c\nARG A=1\nFROM x AS b\nRUN a \\\n  # inner\n  && b\nCMD ["w"]\n'
    got = parse_dockerfile(text)
    assert [(i.stage, i.keyword, i.args, i.line) for i in got] == [
        (-1, "ARG", "A=1", 2),
        (0, "FROM", "x AS b", 3),
        (0, "RUN", "a && b", 4),
        (0, "CMD", '["w"]', 7),
    ]


def test_every_stage_is_python_3_11_slim(instructions: list[Instruction]) -> None:
    defaults = _arg_defaults(instructions)
    bases = []
    for instr in (i for i in instructions if i.keyword == "FROM"):
        image = instr.args.split()[0]
        bases.append(_resolve(image, defaults))
    assert len(bases) >= 2, "expected a build stage and a runtime stage"
    assert set(bases) == {"python:3.11-slim"}, bases


def test_cpu_torch_is_installed_before_the_project(instructions: list[Instruction]) -> None:
    defaults = _arg_defaults(instructions)
    runs = [
        Instruction(i.stage, i.keyword, _resolve(i.args, defaults).replace('"', ""), i.line)
        for i in instructions
        if i.keyword == "RUN"
    ]
    torch_runs = [i for i in runs if f"--index-url {CPU_INDEX}" in i.args and "torch==" in i.args]
    assert torch_runs, f"no RUN installs torch from {CPU_INDEX}"
    project_runs = [i for i in runs if re.search(r"pip install (?:[^&]* )?\.(?:\s|$)", i.args)]
    assert project_runs, "no RUN installs the project (`pip install .`)"
    assert torch_runs[0].line < project_runs[0].line, "torch must be installed before the project"
    assert torch_runs[0].stage == project_runs[0].stage


def test_torch_pin_matches_the_makefile(instructions: list[Instruction]) -> None:
    makefile_pin = re.search(r'"torch==([^"]+)"', (ROOT / "Makefile").read_text())
    assert makefile_pin, "Makefile no longer pins torch; update this test and the Dockerfile together"
    assert _arg_defaults(instructions)["TORCH_VERSION"] == makefile_pin.group(1)


def test_runs_as_the_chart_user(instructions: list[Instruction], values: dict) -> None:
    pod = values["podSecurityContext"]
    [user] = [i for i in _final_stage(instructions) if i.keyword == "USER"]
    assert user.args == f"{pod['runAsUser']}:{pod['runAsGroup']}"
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0
    runs = " ".join(i.args for i in _final_stage(instructions) if i.keyword == "RUN")
    assert f"--uid {pod['runAsUser']}" in runs and f"--gid {pod['runAsGroup']}" in runs, (
        "the image should create the user it runs as, so tools that look up the uid find a name"
    )


def test_entrypoint_and_command_are_real_commands(instructions: list[Instruction]) -> None:
    final = _final_stage(instructions)
    [entrypoint] = [_exec_form(i) for i in final if i.keyword == "ENTRYPOINT"]
    [cmd] = [_exec_form(i) for i in final if i.keyword == "CMD"]
    scripts = _console_scripts()
    assert entrypoint == ["erc-stream"] and "erc-stream" in scripts
    assert scripts["erc-stream"] == "erc_stream.cli:app"
    assert cmd == ["worker"]
    commands = typer.main.get_command(app).commands  # what `erc-stream <cmd>` dispatches to
    assert cmd[0] in commands, sorted(commands)


def test_chart_commands_are_console_scripts() -> None:
    templates = "\n".join(p.read_text() for p in (CHART / "templates").iterdir() if p.suffix in (".yaml", ".tpl"))
    # Single-word exec commands are ours; the init container's `sh -c` runs in the store image.
    commands = set(re.findall(r'command:\s*\[\s*"([^"]+)"\s*\]', templates))
    assert commands == {"erc-stream", "erc-train"}, commands
    assert commands <= set(_console_scripts())


def test_port_and_paths_match_the_chart(instructions: list[Instruction], values: dict) -> None:
    final = _final_stage(instructions)
    exposed = {int(p.split("/")[0]) for i in final if i.keyword == "EXPOSE" for p in i.args.split()}
    assert exposed == {values["worker"]["metricsPort"]}
    env: dict[str, str] = {}
    for instr in (i for i in final if i.keyword == "ENV"):
        env.update(dict(token.split("=", 1) for token in shlex.split(instr.args)))
    assert env["ERC_MODEL_STORE"] == values["modelStore"]["mountPath"]
    assert env["HOME"] == "/tmp"  # the chart mounts a writable emptyDir there; the root fs is read-only
    assert env["HF_HUB_OFFLINE"] == "1"


def test_dockerignore_lets_through_exactly_what_is_copied(instructions: list[Instruction]) -> None:
    lines = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*", ".dockerignore should be an allow-list starting with `*`"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    copied: set[str] = set()
    for instr in (i for i in instructions if i.keyword == "COPY"):
        tokens = shlex.split(instr.args)
        if any(t.startswith("--from") for t in tokens):
            continue
        sources = [t for t in tokens if not t.startswith("--")][:-1]
        copied.update(s.rstrip("/") for s in sources)
    assert copied, "the Dockerfile copies nothing from the build context"
    assert copied == allowed, f"copied {sorted(copied)} but .dockerignore lets through {sorted(allowed)}"
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
