"""A sparse symmetric k-nearest-neighbour graph of points, exact, computed blockwise.

Each pair of row blocks of the points (dask chunks, NumPy or CuPy) gives one (rows_i × rows_j)
block of squared distances through dask's matrix product (the sum over feature chunks in dask),
never n × n nor a row block against all points; each block keeps its rows' ``k`` nearest, and
a second step merges them per row block: only n × k indices and distances come back. The
graph is scikit-learn's ``kneighbors_graph(X, k, include_self=True)`` symmetrised as
``SpectralClustering(affinity="nearest_neighbors")`` does, ½(A + Aᵀ), with connectivity (1) or
RBF (exp(−γ d²)) weights on the edges.
"""

from __future__ import annotations

import numpy as np

__all__ = ["knn_graph", "nearest_k"]


def _top_k(d2, cols, k: int):
    """Per row the ``k`` smallest of ``d2`` (ties: the lower column) as
    (global column indices, values), both float64 on the host, side by side (rows × 2k)."""
    from ..backend import get_namespace, to_numpy

    xp = get_namespace(d2)
    kk = min(k, d2.shape[1])
    part = xp.argpartition(d2, kk - 1, axis=1)[:, :kk] if kk < d2.shape[1] else \
        xp.broadcast_to(xp.arange(d2.shape[1]), d2.shape)
    vals = xp.take_along_axis(d2, part, axis=1)
    order = xp.argsort(vals, axis=1, kind="stable")
    idx = xp.take_along_axis(part, order, axis=1)
    vals = xp.take_along_axis(vals, order, axis=1)
    idx, vals = to_numpy(idx), to_numpy(vals).astype(np.float64)
    out = np.full((d2.shape[0], 2 * k), np.inf)
    out[:, :kk] = np.asarray(cols)[idx]
    out[:, k:k + kk] = vals
    return out


def _block_candidates(xs, ys, sa, sb, ra, rb, k: int):
    """One (rows_i × rows_j) block of squared distances, its feature chunks summed in the task
    (``xs``, ``ys``: lists over the feature chunks), reduced to each row's ``k`` nearest in the
    block; the point itself is forced first (−1), as ``include_self=True`` means."""
    from ..backend import get_namespace

    g = xs[0] @ ys[0].T
    for a, b in zip(xs[1:], ys[1:], strict=True):
        g += a @ b.T
    xp = get_namespace(g)
    d2 = xp.maximum(sa[:, None] + sb[None, :] - 2.0 * g, 0.0)
    r0, c0 = int(ra[0]), int(rb[0])
    r1, c1 = r0 + d2.shape[0], c0 + d2.shape[1]
    lo, hi = max(r0, c0), min(r1, c1)
    if lo < hi:  # this block holds part of the diagonal
        i = xp.arange(lo, hi)
        d2[i - r0, i - c0] = -1.0
    return _top_k(d2, np.arange(c0, c1), k)


def _merge(cand, k: int):
    """The ``k`` best of every row's candidates from all column blocks."""
    nb = cand.shape[1] // (2 * k)
    blocks = cand.reshape(cand.shape[0], nb, 2, k)
    cols = blocks[:, :, 0, :].reshape(cand.shape[0], -1)
    vals = blocks[:, :, 1, :].reshape(cand.shape[0], -1)
    order = np.lexsort((cols, vals), axis=1)[:, :k]
    out = np.empty((cand.shape[0], 2 * k))
    out[:, :k] = np.take_along_axis(cols, order, axis=1)
    out[:, k:] = np.maximum(np.take_along_axis(vals, order, axis=1), 0.0)
    return out


def nearest_k(x, k: int, *, client=None) -> tuple[np.ndarray, np.ndarray]:
    """(indices, squared distances), each (n × k), of the ``k`` nearest points of every row
    of ``x`` (dask or NumPy, points × features), itself included first. Each task sees one
    (rows_i × rows_j) block of distances (summed over feature chunks by dask) and keeps its
    rows' k best; a second step merges them per row block."""
    import warnings

    import dask.array as da

    from ..scheduling import compute
    from .nystrom import _as_dask

    x = _as_dask(x).astype(np.float64)
    n = x.shape[0]
    kk = int(min(k, n))
    sq = (x * x).sum(axis=1)
    # one task per (row block, row block): the feature chunks summed inside it, so no partial
    # product waits in memory for the others
    pos = da.arange(n, chunks=(x.chunks[0],))  # global row numbers, for the diagonal
    with warnings.catch_warnings():  # (n / rows)² blocks are the point here, not a mistake
        warnings.simplefilter("ignore", da.PerformanceWarning)
        cand = da.blockwise(_block_candidates, "ij", x, "ik", x, "jk", sq, "i", sq, "j", pos, "i",
                            pos, "j", k=kk, concatenate=False, dtype=np.float64,
                            meta=np.empty((0, 0)), adjust_chunks={"j": lambda _: 2 * kk})
    best = cand.rechunk({1: -1}).map_blocks(_merge, kk, dtype=np.float64,
                                             chunks=(cand.chunks[0], (2 * kk,)))
    blk = compute([best], client=client)[0]
    if not np.isfinite(blk).all():
        from ..errors import InputError

        raise InputError("the points contain NaN or infinite values")
    return blk[:, :kk].astype(np.int64), blk[:, kk:]


def knn_graph(x, k: int, *, weights: str = "connectivity", gamma: float = 1.0, client=None):
    """½(A + Aᵀ) of the (n × n, scipy CSR) k-nearest-neighbour graph of the rows of ``x``:
    A_ij = 1 (``weights="connectivity"``) or exp(−γ‖x_i − x_j‖²) (``"rbf"``) for the ``k``
    nearest j of i (i itself among them)."""
    from scipy import sparse

    idx, d2 = nearest_k(x, k, client=client)
    n, kk = idx.shape
    vals = np.ones_like(d2) if weights == "connectivity" else np.exp(-gamma * d2)
    a = sparse.csr_array((vals.ravel(), idx.ravel(), np.arange(0, n * kk + 1, kk)),
                         shape=(n, n))
    return 0.5 * (a + a.T)
