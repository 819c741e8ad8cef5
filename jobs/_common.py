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


def check_block(masks, seeds, train_labels, y_train: np.ndarray, n_classes: int):
    """Validate a ``train_block`` call: bool (or 0/1) masks ``[B, n_train]``, ``B`` integer
    seeds, labels ``[B, n_train]`` in ``[0, n_classes)`` (default: ``y_train`` for every
    model). Returns ``(masks, seeds as uint64, int64 labels)``; raises ValueError."""
    n_train = y_train.size
    masks = np.asarray(masks)
    if masks.ndim != 2 or masks.shape[1] != n_train:
        raise ValueError(f"masks must have shape [B, {n_train}], got {masks.shape}")
    if masks.dtype != bool:
        if not np.isin(masks, (0, 1)).all():
            raise ValueError("masks must be boolean (or 0/1)")
        masks = masks.astype(bool)
    B = masks.shape[0]
    seeds = np.asarray(seeds)
    if seeds.shape != (B,) or not np.issubdtype(seeds.dtype, np.integer):
        raise ValueError(f"seeds must be {B} integers, got {seeds.dtype} {seeds.shape}")
    if train_labels is None:
        labels = np.broadcast_to(np.asarray(y_train, np.int64), (B, n_train))
    else:
        labels = np.asarray(train_labels)
        if labels.shape != (B, n_train) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"train_labels must be integers of shape [{B}, {n_train}], got "
                             f"{labels.dtype} {labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
            raise ValueError(f"train_labels must lie in [0, {n_classes})")
        labels = labels.astype(np.int64, copy=False)
    return masks, seeds.astype(np.uint64), labels


def check_examples(which: str, index, n_train: int, n_target: int) -> np.ndarray:
    """Validate an ``examples(which, index)`` call (the report's image hook): ``which`` is
    ``"train"`` or ``"target"``, ``index`` integer positions in that axis of the store.
    Returns the positions as int64; raises ValueError."""
    n = {"train": n_train, "target": n_target}.get(which)
    if n is None:
        raise ValueError(f"which must be 'train' or 'target', got {which!r}")
    idx = np.asarray(index)
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise ValueError(f"index must be a 1-d integer array, got {idx.dtype} {idx.shape}")
    idx = idx.astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"{which} positions must lie in [0, {n})")
    return idx
