"""Removal orders and predicted effects (REFERENCE §3).

Every heuristic gives, per target, an *order* of training examples; the removal set for k is
its first k entries, so the sets of one target and heuristic are nested and a grid of k costs one
order. Heuristics:

``top``           largest weight first (Δ̂ over |R| = k is maximised by these)
``bottom``        most negative weight first
``random``        a random permutation of the training set (seeded per target)
``random_class``  a random permutation of the training examples of the target's class
``zero``          a random permutation of the examples whose weight is exactly 0
``top:NAME``      the top scores of estimator NAME (a baseline's removal set)

An order shorter than k (``random_class``, ``zero``) leaves that k undefined (NaN, untrained).
Predicted effect (margin drop) of removing R: Δ̂(R) = Σ_{j∈R} w_j (the bias cancels); for the
α-control of F.8 (the rest kept with probability α): α·Σ_{j∈R} w_j.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError

__all__ = ["BASE_HEURISTICS", "check_indices", "parse_heuristics", "predicted_effect",
           "removal_order", "removal_sums", "top_k"]

BASE_HEURISTICS = ("top", "bottom", "random", "random_class", "zero")


def parse_heuristics(names, estimators=()) -> list[str]:
    """Validate heuristic names (``top:NAME`` needs NAME among ``estimators``)."""
    out = []
    for h in names:
        h = str(h).strip()
        base, _, est = h.partition(":")
        if base not in BASE_HEURISTICS or (est and base != "top"):
            raise InputError(f"unknown heuristic {h!r}; known: {', '.join(BASE_HEURISTICS)} "
                             "and top:ESTIMATOR")
        if est and est not in estimators:
            raise InputError(f"heuristic {h!r} needs estimator {est!r} in --estimators")
        if h in out:
            raise InputError(f"heuristic {h!r} given twice")
        out.append(h)
    if not out:
        raise InputError("give at least one heuristic")
    return out


def top_k(w: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest entries of ``w``, largest first (ties: lower index first)."""
    order = np.lexsort((np.arange(w.size), -np.asarray(w, np.float64)))
    return order[:k]


def _rng(seed: int, target: int, heuristic: str) -> np.random.Generator:
    salt = int.from_bytes(heuristic.encode()[:8].ljust(8, b"\0"), "little")
    return np.random.default_rng([int(seed), int(target), salt])


def removal_order(heuristic: str, w: np.ndarray, *, target: int, target_label: int,
                  train_label: np.ndarray, seed: int = 0, scores=None) -> np.ndarray:
    """The removal order of one target: int64 indices into the training set (see module doc).
    ``w``: the target's datamodel weights; ``scores``: the baseline's scores for ``top:NAME``."""
    w = np.asarray(w, np.float64)
    base, _, _ = heuristic.partition(":")
    if heuristic.startswith("top:"):
        return top_k(np.asarray(scores, np.float64), w.size)
    if base == "top":
        return top_k(w, w.size)
    if base == "bottom":
        return top_k(-w, w.size)
    rng = _rng(seed, target, heuristic)
    if base == "random":
        return rng.permutation(w.size).astype(np.int64)
    if base == "random_class":
        pool = np.flatnonzero(np.asarray(train_label) == target_label)
    else:  # zero
        pool = np.flatnonzero(w == 0.0)
    return pool[rng.permutation(pool.size)].astype(np.int64)


def check_indices(idx, n_train: int, what: str = "removal set") -> np.ndarray:
    """``idx`` as int64 training indices, refusing out-of-range or repeated ones."""
    a = np.asarray(idx)
    if a.size and not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.mod(a, 1) == 0):
            raise InputError(f"{what}: indices must be integers")
    a = a.astype(np.int64).ravel()
    bad = a[(a < 0) | (a >= n_train)]
    if bad.size:
        raise InputError(f"{what}: training indices {bad[:5].tolist()} are outside "
                         f"[0, {n_train})")
    u, c = np.unique(a, return_counts=True)
    if (c > 1).any():
        raise InputError(f"{what}: training indices {u[c > 1][:5].tolist()} are repeated")
    return a


def predicted_effect(w: np.ndarray, removed, *, alpha: float | None = None) -> float:
    """Δ̂(R) = Σ_{j∈R} w_j, or α·Σ_{j∈R} w_j for the random α-control."""
    s = float(np.asarray(w, np.float64)[np.asarray(removed, np.int64)].sum())
    return s if alpha is None else float(alpha) * s


def removal_sums(w, orders, ks) -> np.ndarray:
    """Σ_{j ∈ first k of order} w_j for every row and k, as one gather and prefix sum on the
    array backend (setting ``dmdask.array.backend``: NumPy or CuPy).

    ``w``: float ``[T, N]``; ``orders``: int ``[T, H, L]`` (−1 pads an order shorter than L);
    ``ks``: ascending k ≤ L. Returns float64 NumPy ``[T, H, len(ks)]``, NaN where an order has
    fewer than k entries."""
    from ..backend import namespace, to_numpy

    xp = namespace()
    W = xp.asarray(np.asarray(w, np.float64))
    o = xp.asarray(np.asarray(orders, np.int64))
    valid = o >= 0
    vals = xp.take_along_axis(W[:, None, :], xp.where(valid, o, 0), axis=2)
    csum = xp.cumsum(xp.where(valid, vals, 0.0), axis=2)
    kk = xp.asarray(np.asarray(ks, np.int64) - 1)
    out = csum[:, :, kk]
    defined = valid[:, :, kk]
    return to_numpy(xp.where(defined, out, xp.nan))
