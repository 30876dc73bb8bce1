"""Files of the project's checkout that its commands read at run time (the Dagster instance
configurations, ``deploy/``), found from the package's own folder: a command finds them from any
working directory of a source checkout (``bin/`` installs the package editable)."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def project_file(relative: str) -> Path:
    """``relative`` under the project's root; ``FileNotFoundError`` in one line if it is not
    there (the package was installed without its checkout)."""
    path = PROJECT_ROOT / relative
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: run this command from a checkout of membership_pipeline "
            "(bin/demo installs one into .venv)"
        )
    return path
