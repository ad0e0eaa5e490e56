"""The CPU memory allocator, set for meta-learning's allocation pattern (glibc's malloc, Linux).

A meta-step allocates and frees the same few hundred tensors of 0.1-10 MB again and again (feature
maps of a chunk of tasks, their gradients and second-order terms). With glibc's defaults, blocks
above the mmap threshold (128 kB at first, raised as such blocks are freed) get their own mapping,
and free memory at the top of the heap beyond the trim threshold is returned to the system: either
way the next allocation of that size starts on fresh pages, which the kernel zeroes on first touch.
With every block below 32 MB taken from the heap and 64 MB of free heap kept, freed memory is reused
instead of zeroed again: far fewer page faults, faster meta-steps (`python -m bench.allocator`;
measured: docs/notes/speed.md). The price: up to TOP_PAD more resident memory per
process after a peak.

`tune()` is called by the `metalearn` command and by bench/speed.py's workers (every implementation
alike). METALEARN_MALLOC=default leaves glibc's defaults (the benchmark's comparison uses it).
"""
from __future__ import annotations

import ctypes
import os
import sys

# mallopt(3) parameters (malloc.h)
M_TOP_PAD, M_MMAP_THRESHOLD = -2, -3
MMAP_THRESHOLD = 32 * 2**20   # glibc's largest: blocks below it come from the heap
TOP_PAD = 64 * 2**20          # free memory kept at the top of the heap (and added when it grows)


def tune() -> bool:
    """Apply the settings above to this process's malloc; whether they were applied (not on other
    C libraries or systems, nor with METALEARN_MALLOC=default). Safe to call more than once."""
    if os.environ.get("METALEARN_MALLOC", "").lower() == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TOP_PAD, TOP_PAD) == 1
