"""Every command of the README's ```bash blocks (install, demo, deploy, capture, serve, Celery,
benchmarks, tests) parses against the current command lines, and every project file it names
exists: a renamed flag, a removed command or a moved file fails here. Each command is parsed,
not run: our argparse commands stop right after parsing, Dagster's click commands are resolved
to their subcommand with their options checked.

Syntax placeholders are read as a value (``<env>`` → ``1``) and optional parts as given
(``[--keep 2]`` → ``--keep 2``)."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import itertools
import os
import re
import shlex
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import pytest

from membership_pipeline_tests.readme import ROOT, bash_blocks

SEPARATORS = {"&&", "||", ";", "|", "&"}
SHELL_BUILTINS = {"export", "cd", "mkdir", "curl", "KEY", "sleep", "kill"}
BIN_SCRIPTS = {"bin/demo": "membership-demo", "bin/benchmark": "membership-benchmark-engine"}
CLICK_COMMANDS = {"dagster", "dg", "dagster-daemon", "dagster-webserver", "dagster-celery"}


def readme_commands() -> Iterator[list[str]]:
    """Each simple command of every ```bash block, as words (assignments before it dropped)."""
    for block in bash_blocks():
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"<[^>]*>", "1", line).replace("[", "").replace("]", "")
            command: list[str] = []
            for word in [*shlex.split(line, comments=True), ";"]:
                if word in SEPARATORS:
                    if command:
                        yield command
                    command = []
                elif command or not re.match(r"^[A-Za-z_]\w*=", word):
                    command.append(word)


COMMANDS = list(readme_commands())


def _id(words: list[str]) -> str:
    return " ".join(words)[:70]


def test_the_readme_shows_the_commands_a_user_copies() -> None:
    programs = {Path(words[0]).name for words in COMMANDS}
    for expected in ("demo", "test", "membership", "membership-capture", "dagster-daemon",
                     "membership-celery-worker", "dg"):  # fmt: skip
        assert expected in programs, f"no README command runs {expected}"
    subcommands = {tuple(w[1:3]) for w in COMMANDS if Path(w[0]).name == "membership"}
    assert ("capture", "enable") in {s[-2:] for s in subcommands} or any(
        "capture" in w and "enable" in w for w in COMMANDS
    )
    assert any(Path(w[0]).name == "membership" and "serve" in w for w in COMMANDS)


@pytest.mark.parametrize("words", COMMANDS, ids=_id)
def test_a_readme_command_parses(words: list[str], monkeypatch, capsys) -> None:
    program, args = words[0], words[1:]
    name = Path(program).name
    if name in SHELL_BUILTINS or program.startswith("$"):
        return
    _files_exist(words)
    if program == "cp":
        return
    if program.startswith("bin/"):
        assert os.access(ROOT / program, os.X_OK), f"{program} is not an executable script"
        if program == "bin/test":
            return  # pytest's own options; the paths it names were checked above
        name = BIN_SCRIPTS[program]
    elif program.startswith(".venv/bin/"):
        assert (Path(sys.executable).parent / name).exists(), f"{program} is not installed"
    _parses(name, args, monkeypatch, capsys)


USER_FILES = {"--config", "-c"}  # a run config the user writes


def _files_exist(words: list[str]) -> None:
    """Words that name a file of the project (a relative path with a folder or a known
    extension, not a URL, a variable, or a file the user writes)."""
    for before, word in itertools.pairwise(words):
        if before in USER_FILES:
            continue
        value = word.split("=", 1)[-1] if word.startswith("--") else word
        if "://" in value or value.startswith(("$", "/", "-", "~")) or ":" in value:
            continue
        if "/" in value or value.endswith((".yaml", ".py", ".toml")):
            assert (ROOT / value).exists(), f"the README names {value}, which does not exist"


def _parses(name: str, args: list[str], monkeypatch, capsys) -> None:
    if name == "membership-run":  # membership-run [--in-process] dagster|dg ARGS
        rest = args[1:] if args[:1] == ["--in-process"] else args
        assert rest[:1] in (["dagster"], ["dg"]), f"membership-run cannot run {rest[:1]}"
        _parses(rest[0], rest[1:], monkeypatch, capsys)
    elif name in CLICK_COMMANDS:
        _click_parses(_click_command(name), name, args)
    else:
        _argparse_parses(_entry_point(name), name, args, monkeypatch, capsys)


def _entry_point(name: str) -> Callable[[], object]:
    found = importlib.metadata.entry_points(group="console_scripts", name=name)
    assert found, f"no command {name} is installed"
    return next(iter(found)).load()


class _Parsed(Exception):
    pass


def _argparse_parses(main: Callable[[], object], name: str, args: list[str], monkeypatch,
                     capsys) -> None:  # fmt: skip
    """Runs the command's own main until its arguments are parsed (argparse exits with status 2
    on arguments it does not know)."""
    parse_args = argparse.ArgumentParser.parse_args
    parse_known_args = argparse.ArgumentParser.parse_known_args
    inside: list[bool] = []

    def parse_then_stop(self, *a, **k):
        inside.append(True)
        raise _Parsed(parse_args(self, *a, **k))

    def known_then_stop(self, *a, **k):
        result = parse_known_args(self, *a, **k)
        if not inside:  # called by the command itself, not by parse_args or a subparser
            raise _Parsed(result)
        return result

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", known_then_stop)
    monkeypatch.setattr(sys, "argv", [name, *args])
    try:
        main()
    except _Parsed:
        return
    except SystemExit as stopped:
        assert stopped.code == 0, f"{name} {shlex.join(args)}: {capsys.readouterr().err}"
        return
    pytest.fail(f"{name} returned without parsing its arguments")


def _click_command(name: str) -> click.Command:
    entry = next(iter(importlib.metadata.entry_points(group="console_scripts", name=name)))
    found = entry.load()
    return found if isinstance(found, click.Command) else importlib.import_module(entry.module).cli


def _click_parses(command: click.Command, name: str, args: list[str]) -> None:
    """Resolves the subcommand and parses its options, as click does before invoking it."""
    try:
        context = command.make_context(name, list(args))
        while isinstance(command, click.Group):
            rest = [*getattr(context, "_protected_args", []), *context.args]
            sub_name, sub, rest = command.resolve_command(context, rest)
            assert sub is not None and sub_name is not None
            context = sub.make_context(sub_name, rest, parent=context)
            command = sub
    except click.exceptions.Exit:
        return  # --help
    except click.UsageError as error:
        pytest.fail(f"{name} {shlex.join(args)}: {error.format_message()}")
