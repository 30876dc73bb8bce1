"""Peak resident memory of a process, as Linux keeps it (VmHWM in /proc/<pid>/status)."""

from __future__ import annotations

import os
from pathlib import Path


def peak_rss_mb(pid: int | None = None) -> float:
    """Peak RSS in MB. For a child, read this rather than ru_maxrss of children: that charges
    a child with its parent's pages between fork and exec."""
    status = Path(f"/proc/{pid or os.getpid()}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def reset_peak_rss() -> None:
    """Start measuring the peak afresh from here (Linux: clear_refs 5)."""
    Path("/proc/self/clear_refs").write_text("5")
