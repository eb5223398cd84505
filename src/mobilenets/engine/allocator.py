"""Keep freed memory in the process (glibc): CPU training without page-fault churn.

glibc's ``malloc`` serves every block above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and gives it
back with ``munmap`` when it is freed. A training step allocates and frees activation-sized blocks every step, so
every step the kernel maps and zeroes those pages again, one page fault per 4 KiB: on SSDLite-V2 α 0.5 at 256×256,
batch 32, an elementwise backward (``hardtanh_backward`` on 32×96×64×64) took three times as long as the same op
into a preallocated output.

:func:`keep_freed_memory` asks glibc, through ``mallopt``, to serve large blocks from the heap (``M_MMAP_MAX`` 0)
and to keep up to 2 GiB of free heap top instead of trimming it (``M_TRIM_THRESHOLD``), so most freed activations
are reused by the next step (not all: ``tests/test_engine.py`` still sees about a quarter of the faults, probably
because PyTorch's 64-byte aligned requests are a little larger than the freed blocks they could reuse).
``experiments/training/allocator_check.py`` measures page faults and step time with and without it.
The process keeps its peak heap until it exits — right for a training run, which is where the engine calls it.
Results do not change (only where blocks are placed). On other C libraries it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import cache

_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_MAX = -4
_KEEP_TOP = 2**31 - 1  # mallopt takes an int: keep up to 2 GiB of free heap top


@cache
def keep_freed_memory() -> bool:
    """Switch glibc's malloc to reuse freed large blocks (once per process). True if glibc took both settings."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018  (only glibc has it: musl's mallopt is a no-op)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    trimmed = mallopt(_M_TRIM_THRESHOLD, _KEEP_TOP)
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(trimmed)
