"""The memory policy of fits (dmdask/memory.py): freed memory stays in the process while a
fit runs and goes back to the system when it ends; NumPy's arrays get small pages."""

import os

import dask
import numpy as np
import pytest

from dmdask import memory

glibc = pytest.mark.skipif(memory._glibc() is None, reason="glibc only")

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


@glibc
def test_freed_memory_is_kept_inside_and_returned_after():
    during, after = _alloc_free()
    assert during > 200 * MB and after < 64 * MB  # glibc unmaps an array this large on free
    with memory.fit_memory():
        during, kept = _alloc_free()
        assert during > 200 * MB and kept > 200 * MB  # freed, still resident
        with memory.fit_memory():  # re-entrant: the inner exit changes nothing
            pass
        during, more = _alloc_free()
        assert during < 64 * MB and more < 64 * MB  # the next array reuses those pages
        base = _rss()
    assert _rss() < base - 200 * MB  # malloc_trim handed them back on the outer exit
    during, after = _alloc_free()
    assert during > 200 * MB and after < 64 * MB  # large arrays are unmapped on free again


@glibc
def test_policy_can_be_switched_off():
    with dask.config.set({"dmdask.memory.keep-freed": False}), memory.fit_memory():
        assert _alloc_free()[1] < 64 * MB
    with memory.fit_memory(enabled=False):
        assert _alloc_free()[1] < 64 * MB


def _thp_mode() -> str | None:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return None


def _huge_kb() -> int:
    with open("/proc/self/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("AnonHugePages:"))


def _huge_growth(mb: int = 128) -> int:
    """Growth of the process's huge-page memory while a fresh, touched ``mb`` MB array lives."""
    before = _huge_kb()
    a = np.ones(mb * MB // 8)
    grown = _huge_kb() - before
    del a
    return grown * 1024


@pytest.mark.skipif(_thp_mode() != "madvise" or memory._numpy_hugepage() is None,
                    reason="needs transparent huge pages in madvise mode (only advised "
                           "memory gets them) and NumPy's advice switch")
def test_numpy_arrays_get_small_pages_inside_only():
    hp = memory._numpy_hugepage()
    prev = hp(True)  # NumPy's default on Linux; restored below
    try:
        # outside: NumPy advises, the kernel backs most of the array with huge pages
        assert _huge_growth() > 64 * MB
        # inside: none of it (a margin for khugepaged collapsing advised memory elsewhere)
        with memory.fit_memory():
            assert _huge_growth() < 32 * MB
            with memory.fit_memory():  # re-entrant
                pass
            assert _huge_growth() < 32 * MB
        assert _huge_growth() > 64 * MB  # NumPy's own choice is back
        with dask.config.set({"dmdask.memory.huge-pages": True}), memory.fit_memory():
            assert _huge_growth() > 64 * MB
    finally:
        hp(prev)
