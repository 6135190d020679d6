"""Where a measurement was taken: commit, machine and library versions (recorded beside results)."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import version
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from scripts import BUNDLE_ROOT

__all__ = ["cpu_model", "git_commit", "load_average", "machine_info", "library_versions"]


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(dirty_flag: bool = True) -> str:
    """Short ``HEAD`` of the bundle's repository; ``-dirty`` appended when tracked files differ from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=BUNDLE_ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        if dirty_flag:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=BUNDLE_ROOT,
                                   capture_output=True, text=True, check=True).stdout.strip()
            commit += "-dirty" if dirty else ""
        return commit
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load_average() -> Optional[List[float]]:
    """The 1, 5 and 15 minute load averages (``None`` where the system has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> Dict[str, Any]:
    """Platform, CPU model, logical CPUs, torch threads, CUDA device and load average of this machine."""
    import torch

    return {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "load_average": load_average(),
    }


def library_versions(names: Sequence[str] = ("torch", "monai", "pytorch-ignite", "numpy", "scipy", "mlflow",
                                             "pillow")) -> Dict[str, str]:
    """Installed versions of the given distributions."""
    return {name: version(name) for name in names}
