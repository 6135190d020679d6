"""Keep freed memory in the process instead of returning it to the kernel (glibc ``mallopt``).

Why: a training step of the bundle's networks on a CPU allocates and frees the same tensors of
tens of megabytes every iteration (the implicit decoder's per-query tensors are ~33 MB each at
batch 4, 128 x 128). glibc serves allocations above its mmap threshold with fresh ``mmap`` pages
and unmaps them on ``free``, so every iteration pays the kernel's page faults (and page zeroing)
again for memory it just gave back. Serving every allocation from the heap (``M_MMAP_MAX = 0``)
and never trimming it (a large ``M_TRIM_THRESHOLD``) removes that cost: measured 0.88x step time
(docs/benchmarks.md, "Levers tried", commit 8320396). The process then keeps the memory of its peak
until it exits (the peak itself was not re-measured).

Hand-written because neither PyTorch nor MONAI exposes the C library's allocator settings; the
environment variables ``MALLOC_MMAP_MAX_`` / ``MALLOC_TRIM_THRESHOLD_`` do the same, but only for a
process started with them. On a C library without ``mallopt`` (macOS, musl, Windows) nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["retain_freed_memory"]

_M_TRIM_THRESHOLD = -1  # glibc malloc.h
_M_MMAP_MAX = -4
_TRIM_THRESHOLD_BYTES = 1 << 30  # return memory to the kernel only above 1 GiB of free heap top

logger = logging.getLogger(__name__)


def retain_freed_memory(enabled: bool = True) -> bool:
    """Serve all allocations from the heap and keep freed memory for reuse (process-wide, glibc).

    Args:
        enabled: ``False`` does nothing (the config switch ``retain_freed_memory``).

    Returns:
        ``True`` when the settings were applied, ``False`` when disabled or not available.

    Example::

        retain_freed_memory()   # in a bundle config: initialize: ["$scripts.workflows.allocator.retain_freed_memory(@retain_freed_memory)"]
    """
    if not enabled:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        logger.info("retain_freed_memory: the C library has no mallopt (%s); allocator unchanged", name)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES) == 1
    if not ok:
        logger.info("retain_freed_memory: mallopt refused the settings; allocator unchanged")
    return ok
