"""What machine a benchmark ran on, for the header of its results (shared by the scripts)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_info(*extra: str) -> str:
    """Platform, CPU, core count and Python version, then ``extra`` parts."""
    parts = [platform.platform(), cpu_model(), f"{os.cpu_count()} cores",
             f"Python {platform.python_version()}", *extra]
    return ", ".join(parts)
