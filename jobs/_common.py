"""Pieces every job shares: the correct-class margin and a scoped torch thread count."""

from __future__ import annotations

import contextlib

import numpy as np


def margins_from_logits(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Correct-class margins ``z[y] - max_{c != y} z[c]`` (REFERENCE §0): logits
    ``[..., n, C]``, labels ``[n]`` -> float32 ``[..., n]``, computed in the logits' dtype."""
    z = np.asarray(logits)
    labels = np.asarray(labels, np.int64)
    n = labels.size
    correct = np.take_along_axis(z, np.broadcast_to(labels[:, None], z.shape[:-1] + (1,)),
                                 axis=-1)[..., 0]
    other = z.copy()
    other[..., np.arange(n), labels] = -np.inf
    return (correct - other.max(axis=-1)).astype(np.float32)


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run with ``torch.set_num_threads(threads)`` if ``threads`` is given, then restore."""
    if threads is None:
        yield
        return
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(old)
