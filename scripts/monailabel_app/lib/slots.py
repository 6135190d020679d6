"""Bounded concurrent inferences: a few slots, one of them always free for small images.

:data:`SLOTS` is the server's; :func:`configure_slots` replaces it at start-up, so other modules
read it as ``slots.SLOTS`` (never a copy bound at import).
"""

from __future__ import annotations

import contextlib
from typing import Any, Mapping

from .errors import ServerBusyError

__all__ = ["InferenceSlots", "SLOTS", "configure_slots", "is_large_work"]


class InferenceSlots:
    """Bounded concurrent inferences: at most ``workers`` at once, of which at most ``large_workers``
    on large work (more pixels x slices than the internal grid holds: a large image or any volume),
    so large work never takes every slot from small images; more than ``max_waiting`` waiting
    requests are refused with 503 (their threads would otherwise fill the server's thread pool).

    Example::

        with SLOTS.slot(large=pixels > 512 * 512):
            ...  # run the inference
    """

    def __init__(self, workers: int = 2, large_workers: int = 1, max_waiting: int = 16, wait_s: float = 600.0):
        import threading

        self.workers, self.large_workers, self.max_waiting, self.wait_s = workers, large_workers, max_waiting, wait_s
        self._all = threading.BoundedSemaphore(workers)
        self._large = threading.BoundedSemaphore(large_workers)
        self._lock = threading.Lock()
        self.waiting = 0
        #: inferences stopped early because their client disconnected
        self.cancelled = 0

    @contextlib.contextmanager
    def slot(self, large: bool):
        with self._lock:
            if self.waiting >= self.max_waiting:
                raise ServerBusyError(f"{self.waiting} inference requests are already waiting; retry later")
            self.waiting += 1
        acquired = []
        try:
            for sem in ([self._large] if large else []) + [self._all]:
                if not sem.acquire(timeout=self.wait_s):
                    raise ServerBusyError(f"no inference slot became free within {self.wait_s:.0f} s; retry later")
                acquired.append(sem)
        except BaseException:
            for sem in reversed(acquired):
                sem.release()
            raise
        finally:
            with self._lock:
                self.waiting -= 1
        try:
            yield
        finally:
            for sem in reversed(acquired):
                sem.release()


#: the server's inference slots (``--conf infer_workers N``, default 2, sets ``workers``)
SLOTS = InferenceSlots()


def configure_slots(workers: int) -> None:
    """Replace :data:`SLOTS` with ``workers`` concurrent inferences (>= 2: one stays free for small images)."""
    global SLOTS
    workers = max(2, int(workers))
    SLOTS = InferenceSlots(workers=workers, large_workers=workers - 1)


def is_large_work(header, settings: Mapping[str, Any]) -> bool:
    """Whether an image is large work for :data:`SLOTS`: more pixels x slices than the internal grid."""
    internal = int(settings.get("max_internal_size") or 0)
    return internal > 0 and header.slice_pixels * header.slices > internal * internal
