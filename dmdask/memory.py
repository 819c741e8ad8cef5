"""The process's memory policy while dmdask fits: keep freed memory, small pages.

A fit allocates and frees large arrays all the time (row blocks and their casts in the
statistics pass, the d × d Grams, the d × T iterates of every target block). glibc hands
freed memory of that size back to the operating system: arrays above its mmap threshold
(adaptive, at most 32 MiB) are unmapped on free, and the local scheduler's threads allocate
from arenas of their own whose heaps (≤ 64 MiB each) are trimmed. The next allocation then
faults in fresh pages, which on virtual machines that report free pages to the host
(Firecracker, common in the cloud) is slow: here ~0.4 ms per MB in small pages and 3–6 ms
per MB in transparent huge pages — a large share of a fit (benchmarks/RESULTS.md,
*Allocator policy*).

Within :func:`fit_memory`:

* **Freed memory is kept.** glibc serves every thread from the main heap, takes arrays up to
  1 GiB from it and never trims it; on leaving, the thresholds go back to glibc's usual
  values for large arrays (32 MiB / 64 MiB) and ``malloc_trim`` returns the free memory to
  the system, so the process does not keep the fit's peak afterwards. Peak memory measured
  no higher (1.6 M × 5,000 out of core: 1.80 GB against 1.81; 50,000 × 5,000 × 500: 2.09
  against 2.17 GB). Setting ``dmdask.memory.keep-freed`` (default true); without glibc
  (macOS, musl) this part does nothing.
* **No transparent huge pages for NumPy's arrays.** NumPy asks the kernel for huge pages on
  every array of 4 MB or more (``madvise(MADV_HUGEPAGE)``). Where the guest's huge pages come
  from memory the host has taken back, a 2 MB page costs far more to fault in than 512
  small ones: here 800 MB took 2.2–5.1 s to touch with huge pages and 0.32 s without
  (399 huge-page faults, no compaction: ~12 ms per 2 MB page against ~0.8 ms for 512
  small ones), and building the fit's d × d Grams took 1.4–1.9 s with huge pages, 0.24–0.36 s
  without. The GEMMs ran no slower on small pages (same user time). Setting
  ``dmdask.memory.huge-pages`` (default false: NumPy does not ask while a fit runs; its own
  choice returns afterwards).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import os
import sys
import threading

from . import config

__all__ = ["fit_memory"]

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

_lock = threading.Lock()
_depth = 0
_undo = (None, None, None)
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


def _numpy_hugepage():
    """NumPy's switch for huge-page advice on its arrays (returns the previous value), or
    None where this NumPy has none."""
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            return importlib.import_module(mod)._set_madvise_hugepage
        except (ImportError, AttributeError):
            continue
    return None


@contextlib.contextmanager
def fit_memory(enabled: bool = True):
    """Within the block, freed memory stays in the process for the next allocation and NumPy
    does not ask for transparent huge pages (see the module docstring; each part has its
    setting). Re-entrant and thread-safe: the policy holds until the outermost block ends.
    ``enabled=False``: no change."""
    global _depth, _undo
    libc = _glibc() if enabled and config.get("memory.keep-freed", True) else None
    hp = (None if not enabled or config.get("memory.huge-pages", False)
          else _numpy_hugepage())
    if libc is None and hp is None:
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            # what the outermost block changed is what the last one out restores
            if libc is not None:
                _set(libc, True)
            _undo = (libc, hp, hp(False) if hp is not None else None)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc0, hp0, huge0 = _undo
                if libc0 is not None:
                    _set(libc0, False)
                if hp0 is not None:
                    hp0(huge0)
