"""A tiny MadryLab-layout run store from a known linear model, for the format tests."""

from __future__ import annotations

import os

import numpy as np

from dmdask.store.madrylab import import_madrylab


def linear_store(tmp, *, n_fit=300, n_held=120, n_train=24, n_target=16, noise=0.3, seed=0,
                 heldout=True, block_size=64):
    """Write a MadryLab ``.npy`` directory whose margins are ``mask @ W.T + b + noise``
    (fixed-size masks, half the examples), import it (the last ``n_held`` rows held out) and
    return ``(store path, W [n_target, n_train], b [n_target], masks, margins)``."""
    rng = np.random.default_rng(seed)
    n = n_fit + n_held
    masks = np.zeros((n, n_train), bool)
    for i in range(n):
        masks[i, rng.choice(n_train, n_train // 2, replace=False)] = True
    W = rng.standard_normal((n_target, n_train))
    b = rng.standard_normal(n_target)
    margins = (masks @ W.T + b + noise * rng.standard_normal((n, n_target))).astype(np.float32)
    src = os.path.join(tmp, "npy")
    os.makedirs(src)
    np.save(os.path.join(src, "masks.npy"), masks)
    np.save(os.path.join(src, "margins.npy"), margins)
    np.save(os.path.join(src, "_completed.npy"), np.ones(n, bool))
    store = os.path.join(tmp, "store")
    import_madrylab(src, store, heldout_rows=n_held if heldout else 0, progress=False,
                    block_size=block_size)
    return store, W, b, masks, margins
