"""Child processes of the tools: the environment of a bundle run, and stopping a process."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping

from scripts import BUNDLE_ROOT
from scripts.known_warnings import BUNDLE_CONFIG_NOTICE_FILTER

__all__ = ["bundle_env", "stop_process"]


def bundle_env(threads: int | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a ``python -m monai.bundle run`` child process that runs the bundle's own configs.

    ``base`` (default ``os.environ``) with the bundle root first on ``PYTHONPATH``, MONAI's config
    trust notice filtered (``PYTHONWARNINGS``: the configs are this bundle's, see
    ``scripts/known_warnings.py``) and, with ``threads``, ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``.
    """
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join([str(BUNDLE_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONWARNINGS"] = ",".join(filter(None, [env.get("PYTHONWARNINGS"), BUNDLE_CONFIG_NOTICE_FILTER]))
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def stop_process(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """``terminate()`` a running ``proc``, wait up to ``timeout`` s, then ``kill()`` it and reap it."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
