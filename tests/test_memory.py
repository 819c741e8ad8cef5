"""The allocator policy of fits (dmdask/memory.py): freed memory stays in the process while
a fit runs and goes back to the system when it ends."""

import os

import dask
import numpy as np
import pytest

from dmdask import memory

pytestmark = pytest.mark.skipif(memory._glibc() is None, reason="glibc only")

MB = 1 << 20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _alloc_free(mb: int = 256) -> tuple[int, int]:
    """RSS growth while a touched ``mb`` MB array lives, and after it is freed."""
    before = _rss()
    a = np.ones(mb * MB // 8)
    during = _rss() - before
    del a
    return during, _rss() - before


def test_freed_memory_is_kept_inside_and_returned_after():
    during, after = _alloc_free()
    assert during > 200 * MB and after < 64 * MB  # glibc unmaps an array this large on free
    with memory.keep_freed_memory():
        during, kept = _alloc_free()
        assert during > 200 * MB and kept > 200 * MB  # freed, still resident
        with memory.keep_freed_memory():  # re-entrant: the inner exit changes nothing
            pass
        during, more = _alloc_free()
        assert during < 64 * MB and more < 64 * MB  # the next array reuses those pages
        base = _rss()
    assert _rss() < base - 200 * MB  # malloc_trim handed them back on the outer exit
    during, after = _alloc_free()
    assert during > 200 * MB and after < 64 * MB  # large arrays are unmapped on free again


def test_policy_can_be_switched_off():
    with dask.config.set({"dmdask.memory.keep-freed": False}), memory.keep_freed_memory():
        assert _alloc_free()[1] < 64 * MB
    with memory.keep_freed_memory(enabled=False):
        assert _alloc_free()[1] < 64 * MB
