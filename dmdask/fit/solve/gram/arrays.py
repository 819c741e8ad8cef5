"""Array helpers shared by the inner solvers: the soft threshold, the power iteration, padded
stacks of per-target working sets and their sub-Grams, chunks of similar size, batched solves,
sparse matrices of the array's own library."""

from __future__ import annotations

import numpy as np

from ....backend import get_namespace


def _soft(z, t, xp):
    return xp.sign(z) * xp.maximum(xp.abs(z) - t, 0.0)


def _power_L(Q, xp, iters=30):
    v = xp.ones(Q.shape[0]) / np.sqrt(Q.shape[0])
    lam = 1.0
    for _ in range(iters):
        w = Q @ v
        lam = float(xp.linalg.norm(w))
        if lam == 0:
            return 1.0
        v = w / lam
    return lam * 1.05 + 1e-12


def _batched_solve(M, b, xp):
    """Solutions of M[i] x = b[i]; NaN rows where M[i] is singular (a batched solve raises for
    the whole batch if one matrix is)."""
    try:
        return xp.linalg.solve(M, b[..., None])[..., 0]
    except Exception:
        out = xp.full(b.shape, xp.nan)
        for i in range(b.shape[0]):
            try:
                out[i] = xp.linalg.solve(M[i], b[i])
            except Exception:
                pass
        return out


def _size_chunks(sizes, ratio=1.5, min_chunk=32, max_entries=2**24):
    """Positions of ``sizes`` in chunks of similar size (ascending): a chunk grows while its
    largest size is ≤ ``ratio`` × its smallest (or it has fewer than ``min_chunk`` members)
    and its padded stack chunk·K² stays ≤ ``max_entries``."""
    order = np.argsort(sizes, kind="stable")
    out = []
    i = 0
    n = order.size
    while i < n:
        lo = max(int(sizes[order[i]]), 1)
        j = i + 1
        while j < n:
            k = max(int(sizes[order[j]]), 1)
            if (j - i + 1) * k * k > max_entries and j > i:
                break
            if k > ratio * lo and j - i >= min_chunk:
                break
            j += 1
        out.append(order[i:j])
        i = j
    return out


def _csr(xp, M):
    """``M`` as a CSR sparse matrix of the array's own library (SciPy or CuPy)."""
    if xp is np:
        import scipy.sparse as sps
    else:  # pragma: no cover - GPU only
        import cupyx.scipy.sparse as sps
    return sps.csr_matrix(M)


def _padded_rows(M):
    """For a boolean [d, T] mask: ``idx`` [T, K] with the rows of each column's True entries
    (ascending, padded with the first of them, or 0) and ``valid`` [T, K]; K = max count."""
    xp = get_namespace(M)
    T = M.shape[1]
    cnt = M.sum(axis=0)
    K = max(int(cnt.max()) if T else 0, 1)
    t, j = xp.nonzero(M.T)  # sorted by column t, then row j
    start = xp.cumsum(cnt) - cnt
    pos = xp.arange(t.size) - start[t]
    idx = xp.zeros((T, K), dtype=xp.int64)
    idx[t, pos] = j
    valid = xp.arange(K)[None, :] < cnt[:, None]
    idx = xp.where(valid, idx, idx[:, :1])
    return idx, valid


def _stack_grams(Q, A):
    """Index [T, K] of each target's working set A[:, t] (ascending, padded with its first
    index), validity mask [T, K], and the stacked Grams Q[A_t, A_t] [T, K, K] with padded
    rows/columns zero and unit diagonal (padded coordinates then stay 0)."""
    xp = get_namespace(Q)
    idx, valid = _padded_rows(A)  # [T, K], A_t ascending
    K = idx.shape[1]
    d = Q.shape[0]
    flat = idx[:, :, None] * d + idx[:, None, :]
    Qs = xp.take(Q.reshape(-1), flat)
    del flat
    vv = valid[:, :, None] & valid[:, None, :]
    Qs *= vv
    pad = ~valid
    if bool(pad.any()):
        ii = xp.arange(K)
        Qs[:, ii, ii] += pad
    return idx, valid, Qs
