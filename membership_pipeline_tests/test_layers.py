"""The layers' import contracts (``[tool.importlinter]`` in pyproject.toml, run by bin/test) hold
for the package, and an import against them is caught: the check can fail."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` over the package in ``tree``, with the project's contracts."""
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache", "--config", str(ROOT / "pyproject.toml")],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},  # this tree's package, not the installed one
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_contracts_hold_and_an_upward_import_breaks_them(tmp_path):
    kept = lint_imports(ROOT)
    assert kept.returncode == 0, kept.stdout[-3000:]
    assert "0 broken" in kept.stdout

    shutil.copytree(
        ROOT / "membership_pipeline",
        tmp_path / "membership_pipeline",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    policy = tmp_path / "membership_pipeline" / "model" / "refresh_mode.py"
    policy.write_text(policy.read_text() + "\nimport membership_pipeline.defs.membership.jobs\n")
    broken = lint_imports(tmp_path)
    assert broken.returncode != 0
    assert "membership_pipeline.model is not allowed to import membership_pipeline.defs" in (
        broken.stdout
    )
    assert "membership_pipeline.model is not allowed to import dagster" in broken.stdout

    # A new top-level module in no layer is caught too: the layers are exhaustive.
    shutil.rmtree(tmp_path / "membership_pipeline")
    shutil.copytree(
        ROOT / "membership_pipeline",
        tmp_path / "membership_pipeline",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (tmp_path / "membership_pipeline" / "helpers.py").write_text('"""Anything."""\n')
    unplaced = lint_imports(tmp_path)
    assert unplaced.returncode != 0
    assert "membership_pipeline.helpers" in unplaced.stdout + unplaced.stderr
