"""Stopping a child process (a server started by a benchmark or a test): terminate, wait, then kill."""

from __future__ import annotations

import subprocess

__all__ = ["stop_process"]


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
