"""What the figures were measured on: the machine, the Python, and the bench's options."""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path
from typing import Any

from bench.workload import Durations


def machine(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        # SQLite's fsync costs what the file system makes it cost (nothing on tmpfs).
        "workdir_filesystem": _filesystem(workdir),
        "options": _options(args),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return "unknown"


def _filesystem(path: Path) -> str:
    """The type of the file system holding ``path`` (the longest mount point above it)."""
    best, kind = "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    target = str(path.resolve())
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1]
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, kind = point, fields[2]
    return kind


def _options(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in sorted(vars(args).items()):
        if isinstance(value, Durations):
            value = value.text
        elif isinstance(value, Path):
            value = str(value)
        elif name == "bridge_env":
            value = [f"{k}=…" for k in value]  # values may be secrets
        out[name] = value
    return out
