"""A newcomer's first hour, as the README writes it: in a fresh copy of the repository (no
``.membership/``, no ``DAGSTER_HOME``, no ``MEMBERSHIP_*`` variable, nothing from earlier runs),
``bin/demo`` succeeds and prints what the README shows, and the commands of the README's first
section succeed on what it made.

The copy shares this checkout's ``.venv`` (installed by ``bin/test``: CI installs it from a fresh
clone), so ``bin/demo`` installs nothing; everything else is the copy's own."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from membership_pipeline.storage import BackfillStatus, MembershipStore
from membership_pipeline_tests.readme import README, ROOT, bash_blocks, console_block

# Lines a first run of a checkout prints and a later one does not (the kernels are cached).
FIRST_RUN_ONLY = re.compile(r"compiling the engine's kernels|  compiled in ")


@pytest.fixture(scope="module")
def fresh_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("first_hour") / "membership_pipeline"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():  # (a file deleted but not yet committed is listed too)
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    venv = Path(sys.prefix)
    # bin/demo in the copy must find its install done, or it would install the copy into this
    # .venv (bin/_venv.sh's stamp names pyproject.toml's hash).
    installed = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    if not list(venv.glob(f".installed-*-{installed}")):
        pytest.fail(f"{venv} holds no install of this pyproject.toml: run the suite by bin/test")
    (copy / ".venv").symlink_to(venv)
    return copy


def newcomer_environment() -> dict[str, str]:
    """This process's environment without anything a newcomer would not have set."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("DAGSTER_", "MEMBERSHIP_", "PYTEST_", "VIRTUAL_ENV"))
        and name not in {"PYTHONPATH", "COV_CORE_SOURCE"}
    }


def run(copy: Path, command: str, timeout: int = 900) -> str:
    completed = subprocess.run(
        command, shell=True, cwd=copy, env=newcomer_environment(), capture_output=True,
        text=True, timeout=timeout, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, f"{command}\n{completed.stdout}\n{completed.stderr}"
    return completed.stdout


def shown_lines_appear(shown: list[str], printed: str) -> None:
    """Each line the README shows begins a line of what was printed, in order: durations and
    run ids vary, ``...`` stands for lines left out (within a line, for columns), and a run of
    whitespace is one gap."""
    lines = printed.splitlines()
    at = 0
    for line in shown:
        if line.strip() in ("", "..."):
            continue
        pattern = _pattern(line)
        found = next((i for i in range(at, len(lines)) if pattern.match(lines[i])), None)
        if found is None and FIRST_RUN_ONLY.search(line):
            continue
        assert found is not None, f"the README shows {line!r}; not printed:\n{printed}"
        at = found + 1


# What varies between runs (durations, run ids), "..." (what the README leaves out) and gaps.
VARYING = re.compile(r"(\.\.\.|\s+|(?<=run )[0-9a-f]{8}\b|\b\d+(?:\.\d+)? s\b)")


def _pattern(line: str) -> re.Pattern[str]:
    parts = [r"\s*"]
    for i, token in enumerate(VARYING.split(line.strip())):
        if i % 2 == 0:
            parts.append(re.escape(token))  # the text between
        elif token == "...":
            parts.append(".*")
        elif token.isspace():
            parts.append(r"\s+")
        elif token.endswith(" s"):
            parts.append(r"[\d.]+ s")  # a duration
        else:
            parts.append("[0-9a-f]{8}")  # a run id
    return re.compile("".join(parts))


def test_bin_demo_on_a_fresh_copy_prints_what_the_readme_shows(fresh_copy: Path) -> None:
    assert not (fresh_copy / ".membership").exists()
    [command, *shown] = console_block("$ bin/demo")
    printed = run(fresh_copy, command.removeprefix("$ "))
    shown_lines_appear(shown, printed)
    assert printed.count(" succeeded in ") == 8
    # Each environment lists distinct segments (a name drawn again would be numbered).
    assert not re.search(r"^  .* \(\d+\)\s+[\d,]+\s+[\d.]+%$", printed, re.M)
    home = fresh_copy / ".membership" / "dagster_home"
    assert (home / "dagster.yaml").read_text() == (ROOT / "dagster.yaml").read_text()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
        assert len(runs) == 8 and {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}


def test_the_first_sections_commands_work_on_the_demos_output(fresh_copy: Path) -> None:
    if not (fresh_copy / ".membership" / "membership_store.sqlite").exists():
        run(fresh_copy, "bin/demo")  # (this test alone)
    first_section = README.read_text().split("### Next to your Flagsmith")[0]
    ran = 0
    for line in "\n".join(bash_blocks(first_section)).splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] != [".venv/bin/membership"]:
            continue  # bin/demo, bin/test; `dg dev` runs until stopped (its arguments: below)
        printed = run(fresh_copy, shlex.join(words))
        ran += 1
        if words[1] == "status":
            status_rows = README.read_text().split("which `membership status`")[1]
            shown_lines_appear(status_rows.split("```")[1].strip().splitlines(), printed)
        if words[1] == "segments":
            names = [row.split()[1:-3] for row in printed.splitlines()[2:]]
            assert len(names) == 40 and len({tuple(n) for n in names}) == 40
    assert ran == 2


def test_bin_demo_reuse_refreshes_every_environment_in_the_instance_named(fresh_copy: Path):
    """``bin/demo --reuse`` with ``DAGSTER_HOME`` set: the Flagsmith database as it is (nothing
    seeded), every environment backfilled again into that instance."""
    home = fresh_copy / ".membership" / "dagster_home"
    if not home.exists():
        run(fresh_copy, "bin/demo")  # (this test alone)
    printed = run(fresh_copy, f"DAGSTER_HOME={shlex.quote(str(home))} bin/demo --reuse")
    assert "seeded" not in printed and printed.count(" succeeded in ") == 8
    with MembershipStore(
        f"sqlite:///{fresh_copy / '.membership/membership_store.sqlite'}"
    ) as store:
        published = store.all_metadata()
    assert len(published) == 8 and {m.publication for m in published} == {2}
    assert {m.last_backfill_status for m in published} == {BackfillStatus.SUCCEEDED}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
        assert len(runs) == 16 and {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}
        assert {r.tags["dagster/partition"] for r in runs} == {m.environment_key for m in published}
