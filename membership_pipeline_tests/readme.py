"""The README's command blocks, as the first-hour and README-command tests read them."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def bash_blocks(text: str | None = None) -> list[str]:
    """The bodies of the ```bash blocks (what a reader copies into a shell)."""
    return re.findall(r"^```bash\n(.*?)^```", text or README.read_text(), re.M | re.S)


def console_block(first_line: str) -> list[str]:
    """The ```console block whose first line is ``first_line``: that line, then what the
    README shows it print."""
    for body in re.findall(r"^```console\n(.*?)^```", README.read_text(), re.M | re.S):
        lines = body.splitlines()
        if lines and lines[0] == first_line:
            return lines
    raise AssertionError(f"the README shows no ```console block starting {first_line!r}")
