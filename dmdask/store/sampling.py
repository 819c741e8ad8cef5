"""Seeded subset sampling: masks and training seeds as pure functions of (store seed, model index).

Model ``i`` of a store with seed ``s`` always gets the same mask and training seed, whatever
block it is generated in, on whichever machine, in whichever order: a rerun, or a second store
made with the same arguments, reproduces them bit for bit.

* Mask randomness: a Philox bit generator keyed by ``(mix(s), i)`` draws ``n_train`` raw
  uint64 words ``u`` (ties have probability ~n²/2⁶⁵, so the order is well defined).
* ``sampling="fixed"`` (default; the paper's eq. 6): exactly ``k = floor(alpha*n_train + 1/2)``
  ones, at the ``k`` smallest ``u``. ``sampling="bernoulli"``: ``mask = u < alpha·2⁶⁴``.
* Training seed: ``splitmix64(mix(s) ^ (i + 1))``, a uint64.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError

SAMPLING_SCHEMES = ("fixed", "bernoulli")

_MASK_STREAM = np.uint64(0x6D61736B)  # "mask": separates mask and seed streams
_U64 = np.uint64


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = x + _U64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
        return z ^ (z >> _U64(31))


def _mix(store_seed: int) -> np.uint64:
    if not (0 <= int(store_seed) < 2**63):
        raise InputError(f"store seed must be an integer in [0, 2**63), got {store_seed!r}")
    return _splitmix64(np.array([store_seed], dtype=np.uint64))[0]


def model_seeds(store_seed: int, indices: np.ndarray) -> np.ndarray:
    """Training seeds (uint64) of the models at ``indices``."""
    idx = np.asarray(indices, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return _splitmix64(_mix(store_seed) ^ (idx + _U64(1)))


def subset_size(alpha: float, n_train: int) -> int:
    """Number of ones in a fixed-size mask: ``round(alpha * n_train)``, halves rounded up."""
    return int(np.floor(alpha * n_train + 0.5))


def check_alpha(alpha: float) -> float:
    a = float(alpha)
    if not (0.0 < a < 1.0) or not np.isfinite(a):
        raise InputError(f"alpha must be in (0, 1), got {alpha!r}")
    return a


def sample_masks(
    store_seed: int, indices: np.ndarray, n_train: int, alpha: float, sampling: str = "fixed"
) -> np.ndarray:
    """Bool masks ``[len(indices), n_train]`` of the models at ``indices``."""
    if sampling not in SAMPLING_SCHEMES:
        raise InputError(f"sampling must be one of {SAMPLING_SCHEMES}, got {sampling!r}")
    alpha = check_alpha(alpha)
    idx = np.asarray(indices, dtype=np.uint64).ravel()
    key0 = _mix(store_seed) ^ _MASK_STREAM
    u = np.empty((idx.size, n_train), dtype=np.uint64)
    for r, i in enumerate(idx):
        u[r] = np.random.Philox(key=np.array([key0, i], dtype=np.uint64)).random_raw(n_train)
    if sampling == "bernoulli":
        return u < np.uint64(min(int(alpha * 2.0**64), 2**64 - 1))
    k = subset_size(alpha, n_train)
    masks = np.zeros((idx.size, n_train), dtype=bool)
    if k >= n_train:
        masks[:] = True
    elif k > 0:
        sel = np.argpartition(u, k - 1, axis=1)[:, :k]
        np.put_along_axis(masks, sel, True, axis=1)
    return masks
