"""A sparse symmetric k-nearest-neighbour graph of points, exact, computed blockwise.

Each row block of the points (a dask chunk, NumPy or CuPy) meets all the points through dask's
matrix product (the sum over feature chunks in dask), giving one (rows × n) block of squared
distances at a time, never n × n; only its ``k`` nearest indices and distances come back. The
graph is scikit-learn's ``kneighbors_graph(X, k, include_self=True)`` symmetrised as
``SpectralClustering(affinity="nearest_neighbors")`` does, ½(A + Aᵀ), with connectivity (1) or
RBF (exp(−γ d²)) weights on the edges.
"""

from __future__ import annotations

import numpy as np

__all__ = ["knn_graph", "nearest_k"]


def _top_k_block(d2, row0: int, k: int):
    """The ``k`` smallest squared distances per row (the point itself first: its own
    distance is forced below every other, as ``include_self=True`` means)."""
    from ..backend import get_namespace, to_numpy

    xp = get_namespace(d2)
    d2 = xp.maximum(d2, 0.0)
    r = xp.arange(d2.shape[0])
    own = row0 + r
    d2[r, own] = -1.0
    part = xp.argpartition(d2, k - 1, axis=1)[:, :k]
    vals = xp.take_along_axis(d2, part, axis=1)
    order = xp.argsort(vals, axis=1, kind="stable")
    idx = xp.take_along_axis(part, order, axis=1)
    vals = xp.maximum(xp.take_along_axis(vals, order, axis=1), 0.0)
    return np.concatenate([to_numpy(idx).astype(np.float64), to_numpy(vals)], axis=1)


def nearest_k(x, k: int, *, client=None) -> tuple[np.ndarray, np.ndarray]:
    """(indices, squared distances), each (n × k), of the ``k`` nearest points of every row
    of ``x`` (dask or NumPy, points × features), itself included first."""
    import dask
    import dask.array as da

    from ..scheduling import compute
    from .nystrom import _as_dask

    x = _as_dask(x).astype(np.float64)
    n = x.shape[0]
    sq = (x * x).sum(axis=1)
    g = (x @ x.T).rechunk({1: -1})  # one (rows × n) block per row block of x
    d2 = da.blockwise(lambda gb, sa, sb: sa[:, None] + sb[None, :] - 2.0 * gb, "ij",
                      g, "ij", sq, "i", sq.rechunk(-1), "j", dtype=np.float64,
                      meta=x._meta)
    starts = np.cumsum((0,) + d2.chunks[0][:-1])
    kk = int(min(k, n))
    top = dask.delayed(_top_k_block, pure=True)
    res = compute([top(b, int(s0), kk) for b, s0 in zip(d2.to_delayed().ravel(), starts,
                                                       strict=True)], client=client)
    blk = np.concatenate(res, axis=0)
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
