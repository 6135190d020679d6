"""The allocator switch of the training config (scripts/workflows/allocator.py)."""

import ctypes
import ctypes.util
import subprocess
import sys

import pytest

from scripts.workflows.allocator import retain_freed_memory


def test_disabled_does_nothing():
    assert retain_freed_memory(False) is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_large_blocks_come_from_the_heap_after_the_switch():
    """With the switch a freed 64 MiB block is reused from the heap instead of being unmapped:
    mallinfo2's mmap'ed bytes (hblkhd) do not grow for a live large allocation. Run in a child process
    so that this test's process keeps glibc's defaults."""
    code = r"""
import ctypes, ctypes.util, sys
from scripts.workflows.allocator import retain_freed_memory
libc = ctypes.CDLL(ctypes.util.find_library("c"))
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def mmapped_bytes_of_a_live_block():
    base = libc.mallinfo2().hblkhd
    p = libc.malloc(64 << 20)
    n = libc.mallinfo2().hblkhd - base
    libc.free(p)
    return n
before = mmapped_bytes_of_a_live_block()
assert retain_freed_memory(True) is True
after = mmapped_bytes_of_a_live_block()
print(before, after)
"""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("C library without mallinfo2 (glibc < 2.33)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    before, after = int(out[0]), int(out[1])
    assert before >= 64 << 20  # glibc's default: a 64 MiB block is its own mapping
    assert after == 0          # after the switch: served from the heap
