"""What machine a benchmark ran on (no heavy imports: the peer benchmark's workers import this too)."""

from __future__ import annotations

import platform
from pathlib import Path


def _cpuinfo(field: str) -> str | None:
    """The first value of `field` in /proc/cpuinfo, or None where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    """The CPU's model name (e.g. "AMD EPYC 9R14"), or the platform's guess where /proc is missing."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


# The CPU features that choose a fast path (AVX-512, its BF16 and VNNI products, Intel's AMX)
FLAGS = ("avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")


def cpu_flags() -> list[str]:
    """Which of FLAGS this CPU has (from /proc/cpuinfo; empty where it is missing)."""
    present = set((_cpuinfo("flags") or "").split())
    return [f for f in FLAGS if f in present]


def machine() -> dict[str, object]:
    """The CPU a figure came from: its model name and the flags that matter."""
    return {"cpu": cpu_name(), "flags": cpu_flags()}


def write_report(path: Path | None, report: dict) -> None:
    """`report` as indented JSON at `path` (its folder made), if a path is given."""
    if path is not None:
        import json

        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
