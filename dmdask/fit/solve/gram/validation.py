"""Validation MSE of path points from the held-out statistics, in the training split's
standardisation."""

from __future__ import annotations

from ...stats import SufficientStats
from .arrays import _padded_rows
from .standardise import _std_tiles


class _ValGram:
    """Validation statistics in the training split's standardisation, centred at the
    validation means (no cancellation): for raw w = w̃/σ and b = ȳ_tr − μᵀw,

        MSE_val = w̃ᵀQ_v w̃ − 2 w̃ᵀq_v + yv_v + (m_vᵀw + b − ȳ_v)²

    with Q_v = D⁻¹(G_v − s_v s_vᵀ/n_v)D⁻¹/n_v, q_v = D⁻¹(C_v − s_v Σy_v/n_v)/n_v. The quadratic
    term is one GEMM on the rows of the supports (float32 when ``fast``)."""

    def __init__(self, val_stats: SufficientStats, sigma, fast=False, Q=None):
        xp = val_stats.xp
        self.st = val_stats
        self.xp = xp
        self.inv = xp.where(sigma > 0, 1.0 / xp.where(sigma > 0, sigma, 1.0), 0.0)
        self.fast = fast
        if Q is None:  # Q_v (float32 when ``fast``), unless built already
            Q64, Q32, _ = _std_tiles(val_stats.G, val_stats.s, val_stats.n, sigma,
                                     keep64=not fast, want32=fast)
            Q = Q32 if fast else Q64
        self.Q = Q

    # targets whose support has at most d/_GATHER_DIV coordinates get w̃ᵀQ_v w̃ from a gather
    # of Q_v[S_t, S_t] (~3 ns per entry) instead of their column of one GEMM (d² multiply-adds)
    _GATHER_DIV = 16

    def quad(self, W, U, Wu):
        """w̃_tᵀ Q_v w̃_t for every column of ``W`` (U: rows where W is nonzero, Wu = W[U])."""
        xp = self.xp
        d, T = W.shape
        nnz = (W != 0).sum(axis=0)
        small = nnz <= d // self._GATHER_DIV
        out = xp.zeros(T)
        big = xp.flatnonzero(~small)
        if big.size:
            Wb = Wu[:, big]
            if 2 * U.size >= d:
                M = (self.Q @ (W[:, big].astype(xp.float32) if self.fast else W[:, big]))[U]
            else:
                M = self.Q[U][:, U] @ (Wb.astype(xp.float32) if self.fast else Wb)
            out[big] = xp.sum(Wb * M, axis=0)
        sm = xp.flatnonzero(small & (nnz > 0))
        if sm.size:
            idx, valid = _padded_rows(W[:, sm] != 0)
            K = idx.shape[1]
            Qf = self.Q.reshape(-1)
            step = max(1, 2**22 // (K * K))  # ≤ 4M gathered entries at a time
            for t0 in range(0, sm.size, step):
                ii = idx[t0:t0 + step]
                cols = sm[t0:t0 + step]
                w = W[ii, cols[:, None]] * valid[t0:t0 + step]
                Qs = xp.take(Qf, ii[:, :, None] * d + ii[:, None, :]).astype(xp.float64)
                out[cols] = xp.sum(w * (Qs @ w[:, :, None])[:, :, 0], axis=1)
        return out

    def fn(self, mu, sigma, ybar, cols):
        xp, st, inv = self.xp, self.st, self.inv
        nv = st.n

        def fn(Wstd, idx):
            c = cols[idx]
            U = xp.flatnonzero((Wstd != 0).any(axis=1))
            Wu = Wstd[U]
            quad = self.quad(Wstd, U, Wu)
            qv = (st.C[U][:, c] - xp.outer(st.s[U], st.sy[c] / nv)) * (inv[U][:, None] / nv)
            lin = xp.sum(Wu * qv, axis=0)
            yvv = xp.maximum(st.syy[c] - st.sy[c] ** 2 / nv, 0.0) / nv
            w = Wu * inv[U][:, None]
            delta = (st.s[U] / nv - mu[U]) @ w + ybar[idx] - st.sy[c] / nv
            return quad - 2 * lin + yvv + delta**2

        return fn
