"""The union-working-set route: the targets of a group solved on the union of their working
sets with dense GEMMs, by coordinate descent (``method="cd"``) or FISTA (``"fista"``)."""

from __future__ import annotations

from .arrays import _soft
from .gap import _gap


def solve_union(prob, q, yv, lam, W, C, lam_prev, tol, max_iter):
    """The union working set for a group of targets (dense GEMMs)."""
    xp = prob.xp
    thr = tol * yv / 2
    strong = xp.abs(C) >= (2 * lam - lam_prev)[None, :]
    inU = ((W != 0).any(axis=1) | strong.any(axis=1)) & prob.usable
    total = 0
    conv = xp.zeros(q.shape[1], dtype=bool)
    while True:
        U = xp.flatnonzero(inU)
        if U.size:
            QU = prob.Q[xp.ix_(U, U)]
            out = xp.flatnonzero(~inU)
            cinf_out = (xp.abs(C[out]).max(axis=0) if out.size else
                        xp.zeros(q.shape[1]))
            budget = max(max_iter - total, 1)
            full_U = U if int(prob.usable[U].sum()) == int(prob.usable.sum()) else None
            inner = _cd if prob.method == "cd" else _fista
            WU, _, it = inner(prob, QU, prob.diag[U], q[U], C[U].copy(), W[U].copy(), lam,
                              yv, thr, cinf_out, budget, full_U=full_U)
            total += it
            W[U] = WU
        C = prob.corr(q, W)
        cinf = xp.abs(C).max(axis=0)
        gap = _gap(yv, lam, W, C, q, cinf)
        conv = gap <= thr
        if bool(conv.all()) or total >= max_iter:
            break
        viol = ((xp.abs(C) > lam[None, :]) & ~conv[None, :]).any(axis=1) & ~inU
        viol &= prob.usable
        if bool(viol.any()):
            inU |= viol
        elif not U.size:
            break
    return W, C, total, conv


def _cd(prob, QU, dU, qU, CU, WU, lam, yv, thr, cinf_out, max_sweeps, full_U=None):
    xp = prob.xp
    u = QU.shape[0]
    m = prob.cd_block
    inv = 1.0 / dU
    sweeps = 0
    for sweeps in range(1, max_sweeps + 1):  # noqa: B007
        for b0 in range(0, u, m):
            b1 = min(b0 + m, u)
            cB = CU[b0:b1].copy()
            QBB = QU[b0:b1, b0:b1]
            Wold = WU[b0:b1].copy()
            for k in range(b1 - b0):
                j = b0 + k
                wj = WU[j]
                wn = _soft(wj + cB[k] * inv[j], lam * inv[j], xp)
                dlt = wn - wj
                if not bool(xp.any(dlt)):
                    continue
                WU[j] = wn
                cB -= QBB[:, k : k + 1] * dlt[None, :]
            D = WU[b0:b1] - Wold
            CU -= QU[:, b0:b1] @ D
        if prob.gauge is not None and full_U is not None:
            WU = prob.gauge_shift(WU, full_U)
        cinf = xp.maximum(xp.abs(CU).max(axis=0), cinf_out)
        if bool((_gap(yv, lam, WU, CU, qU, cinf) <= thr).all()):
            break
    return WU, CU, sweeps


def _fista(prob, QU, dU, qU, CU, WU, lam, yv, thr, cinf_out, max_iter, full_U=None,
           check_every=5):
    xp = prob.xp
    L = prob.L
    x = WU
    y = x.copy()
    t = xp.ones(x.shape[1])
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007
        grad = QU @ y - qU
        xn = _soft(y - grad / L, lam / L, xp)
        tn = (1 + xp.sqrt(1 + 4 * t * t)) / 2
        restart = xp.sum((y - xn) * (xn - x), axis=0) > 0
        mom = xp.where(restart, 0.0, (t - 1) / tn)
        tn = xp.where(restart, 1.0, tn)
        y = xn + mom[None, :] * (xn - x)
        x, t = xn, tn
        if it % check_every == 0:
            if prob.gauge is not None and full_U is not None:
                x = prob.gauge_shift(x, full_U)
                y = x.copy()
                t = xp.ones(x.shape[1])
            CU = qU - QU @ x
            cinf = xp.maximum(xp.abs(CU).max(axis=0), cinf_out)
            if bool((_gap(yv, lam, x, CU, qU, cinf) <= thr).all()):
                return x, CU, it
    CU = qU - QU @ x
    return x, CU, it
