"""The process allocator's policy while dmdask fits: keep freed memory for reuse.

A fit allocates and frees large arrays all the time (row blocks and their casts in the
statistics pass, the d × d Grams, the d × T iterates of every target block). glibc hands
freed memory of that size back to the operating system: arrays above its mmap threshold
(adaptive, at most 32 MiB) are unmapped on free, and the local scheduler's threads allocate
from arenas of their own whose heaps (≤ 64 MiB each) are trimmed. The next allocation then
faults in fresh pages, and on virtual machines that report free pages to the host
(Firecracker, common in the cloud) a fresh page costs ~1–7 ms per MB — a large share of a
fit here (benchmarks/RESULTS.md, *Allocator policy*).

:func:`keep_freed_memory` makes glibc serve every thread from the main heap, take arrays up
to 1 GiB from it and never trim it while a fit runs; on leaving, the thresholds go back to
glibc's usual values for large arrays (32 MiB / 64 MiB) and ``malloc_trim`` returns the
free memory to the system, so the process does not keep the fit's peak afterwards. Peak
memory measured no higher (1.6 M × 5,000 out of core: 1.80 GB against 1.81; 50,000 × 5,000
× 500: 2.03 against 2.16 GB). Setting
``dmdask.memory.keep-freed`` (default true); without glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading

from . import config

__all__ = ["keep_freed_memory"]

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

_lock = threading.Lock()
_depth = 0
_libc = None


def _glibc():
    """glibc's ``mallopt``/``malloc_trim``, or None where the C library is not glibc."""
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL("libc.so.6")
                libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl has no mallopt)
                libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                libc.malloc_trim.argtypes = [ctypes.c_size_t]
                _libc = libc
            except (OSError, AttributeError):
                pass
    return _libc or None


def _set(libc, keep: bool) -> None:
    if keep:
        libc.mallopt(_M_ARENA_MAX, 1)  # threads started from now on share the main heap
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)
        libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)  # mallopt takes a C int
    else:
        # glibc's adaptive thresholds end at these values once large arrays have been freed
        # (the adaptive mode cannot be switched back on); the arena cap is its default
        libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 64 << 20)
        libc.mallopt(_M_ARENA_MAX, 8 * (os.cpu_count() or 1))
        libc.malloc_trim(0)


@contextlib.contextmanager
def keep_freed_memory(enabled: bool = True):
    """Within the block, freed memory stays in the process for the next allocation (see the
    module docstring). Re-entrant and thread-safe: the policy holds until the outermost block
    ends. ``enabled=False`` or setting ``dmdask.memory.keep-freed: false``: no change."""
    libc = _glibc() if enabled and config.get("memory.keep-freed", True) else None
    if libc is None:
        yield
        return
    global _depth
    with _lock:
        _depth += 1
        if _depth == 1:
            _set(libc, True)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _set(libc, False)
