"""The commands, settings and imports the README and the documentation site show are real ones.

Every shell command in a ```bash block must start one of the project's entry points (train.py, gensynth-generate,
gensynth-export, a benchmark, the set-up and docs commands) with arguments those entry points accept: train.py's
overrides compose with Hydra (a sweep's first value stands for the sweep), a benchmark's arguments pass its own
parser and its train.py overrides compose too. Every ``synthesis.*`` / ``gate.*`` setting named in the text exists,
(in the text outside code blocks), and every ``gensynth_pl`` import in a ```python block resolves.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import re
import shlex
import tomllib
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

import gensynth_pl  # noqa: F401  registers the structured-config schemas the configs compose with

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
PLACEHOLDER = re.compile(r"<[^<>]+>")  # <run dir>, <date>/<time>, <partition>: any value fits
SETUP = {tuple(shlex.split(c)) for c in (  # the set-up, test and docs commands, as the README and Getting started give them
    "python3 -m venv .venv", ".venv/bin/pip install -e .", '.venv/bin/pip install -e ".[test]"',
    '.venv/bin/pip install -e ".[docs]"', ".venv/bin/python train.py", ".venv/bin/python -m pytest",
    ".venv/bin/mkdocs serve", "mkdocs serve", "mkdocs build --strict",
)}
CONFIG_NAME = {"train.py": "train", "gensynth-generate": "generate", "gensynth-export": "export"}


def blocks(language: str) -> list[tuple[str, str]]:
    """(page, code) of every fenced block in ``language``."""
    return [(page.relative_to(ROOT).as_posix(), code) for page in PAGES
            for code in re.findall(rf"```{language}\n(.*?)```", page.read_text(), re.S)]


def shell_commands() -> list[tuple[str, str]]:
    """(page, command) for every command of every bash block: continuation lines joined, comments dropped, ``&&``
    chains split."""
    commands = []
    for page, code in blocks("bash"):
        for line in code.replace("\\\n", " ").splitlines():
            tokens = shlex.split(PLACEHOLDER.sub("x", line), comments=True)
            command: list[str] = []
            for token in [*tokens, "&&"]:
                if token != "&&":
                    command.append(token)
                elif command:
                    commands.append((page, shlex.join(command)))
                    command = []
    return commands


COMMANDS = shell_commands()


def first_of_sweeps(overrides: list[str]) -> list[str]:
    """A multirun's overrides with each sweep replaced by its first value (what its first job composes)."""
    chosen = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.is_sweep_override():
            chosen.append(f"{override.get_key_element()}={next(override.sweep_string_iterator())}")
        else:
            chosen.append(override.input_line)
    return chosen


def compose_app(config_name: str, arguments: list[str]) -> None:
    """What a Hydra app would compose from ``arguments`` (``-m`` and ``--cfg job [--package P]`` allowed)."""
    arguments = [a for a in arguments if a not in ("-m", "--multirun")]
    if arguments[:2] == ["--cfg", "job"]:
        arguments = arguments[4:] if arguments[2:3] == ["--package"] else arguments[2:]
    assert not any(a.startswith("-") for a in arguments), f"unknown flag in {arguments}"
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        compose(config_name, overrides=first_of_sweeps(arguments), return_hydra_config=True)


class Parsed(Exception):
    """Raised by the patched ``parse_args`` to stop a benchmark right after its arguments are parsed."""

    def __init__(self, namespace: argparse.Namespace) -> None:
        self.namespace = namespace


def check_benchmark(module_name: str, arguments: list[str], monkeypatch) -> None:
    """The benchmark's own parser accepts ``arguments``; its train.py overrides compose."""
    module = importlib.import_module(module_name)
    parse_args = argparse.ArgumentParser.parse_args

    def parse_then_stop(parser, args=None, namespace=None):
        raise Parsed(parse_args(parser, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    with pytest.raises(Parsed) as parsed:
        module.main(arguments)
    namespace = parsed.value.namespace
    if hasattr(namespace, "overrides") and hasattr(namespace, "experiment"):
        from benchmarks.common import settings

        settings(namespace.experiment, namespace.overrides, Path("unused"))


@pytest.mark.parametrize("page,command", COMMANDS, ids=[f"{p}: {c[:60]}" for p, c in COMMANDS])
def test_every_shell_command_is_an_entry_point_with_valid_arguments(page, command, monkeypatch):
    tokens = shlex.split(command)
    while re.fullmatch(r"[A-Z_]+=\S*", tokens[0]):  # an environment prefix such as OMP_NUM_THREADS=1
        tokens = tokens[1:]
    if tuple(tokens) in SETUP:
        extras = re.findall(r"\.\[(\w+)\]", command)
        declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        assert set(extras) <= set(declared), f"{page}: extra {extras} not in pyproject.toml"
    elif tokens[:2] == ["python", "train.py"]:
        compose_app("train", tokens[2:])
    elif tokens[0] in CONFIG_NAME:
        compose_app(CONFIG_NAME[tokens[0]], tokens[1:])
    elif tokens[:2] == ["python", "-m"] and tokens[2].startswith("benchmarks."):
        check_benchmark(tokens[2], tokens[3:], monkeypatch)
    else:
        pytest.fail(f"{page}: `{command}` is not one of the project's entry points")


def test_every_setting_named_in_the_text_exists():
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train")
    missing = set()
    for page in PAGES:
        prose = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks are checked above, or are Python
        for key in re.findall(r"(?<![=\w./])((?:synthesis|gate)\.[a-z_]+(?:\.[a-z_]+)*)", prose):
            if not key.endswith((".md", ".py")) and OmegaConf.select(cfg, key, default=KeyError) is KeyError:
                missing.add(f"{page.relative_to(ROOT)}: {key}")
    assert not missing, sorted(missing)


@pytest.mark.parametrize("page,code", blocks("python"), ids=[p for p, _ in blocks("python")])
def test_python_examples_compile_and_their_imports_resolve(page, code):
    tree = ast.parse(code, filename=page)
    imports = [node for node in tree.body if isinstance(node, ast.ImportFrom) and node.module.startswith("gensynth_pl")]
    exec(compile(ast.Module(body=imports, type_ignores=[]), page, "exec"), {})
