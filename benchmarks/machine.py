"""What machine a benchmark ran on (no heavy imports: the peer benchmark's workers import this too)."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name (e.g. "AMD EPYC 9R14"), or the platform's guess where /proc is missing."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
