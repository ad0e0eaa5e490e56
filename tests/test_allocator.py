"""metalearn.allocator: glibc's malloc keeps mid-sized blocks in the heap (no mapping of their own, so
no fresh zeroed pages for every meta-step's tensors), unless METALEARN_MALLOC=default; the `metalearn`
command applies it. Each check runs in a fresh process: malloc settings are process-wide."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from metalearn import allocator, cli

# In a fresh process: tune, then malloc a 2 MB block (above glibc's initial 128 kB mmap threshold,
# below ours) and report how much mmapped memory (mallinfo2's hblkhd) it added.
PROBE = """
import ctypes, json
from metalearn import allocator
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
applied = allocator.tune()
before = libc.mallinfo2().hblkhd
block = libc.malloc(2 * 2**20)
print(json.dumps({"applied": applied, "mmapped": libc.mallinfo2().hblkhd - before}))
libc.free(block)
"""


def _probe(malloc_setting: str) -> dict:
    env = {**os.environ, "METALEARN_MALLOC": malloc_setting}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_tuned_malloc_takes_a_2mb_block_from_the_heap_and_the_default_maps_it():
    tuned, default = _probe("tuned"), _probe("default")
    assert tuned == {"applied": True, "mmapped": 0}
    assert default["applied"] is False and default["mmapped"] >= 2 * 2**20


def test_the_metalearn_command_tunes_the_allocator_first(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(allocator, "tune", lambda: calls.append("tune") or True)
    assert cli.main(["runtimes", "--dir", str(tmp_path / "missing"), "--out", str(tmp_path / "r.csv")]) == 2
    assert calls == ["tune"]
