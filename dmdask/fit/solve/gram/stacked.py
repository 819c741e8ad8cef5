"""The stacked route: targets with small working sets solved together by blocked coordinate
descent on their stacked sub-Grams Q[A_t, A_t], with a full KKT check (one GEMM) per round;
float32 gradients are certified by a rigorous rounding-error bound or a float64 product."""

from __future__ import annotations

from ....backend import to_numpy
from .arrays import _size_chunks, _stack_grams
from .gap import _gap_pieces


def solve_stacked(prob, q, yv, lam, W, C, A, tol, max_iter):
    """Blocked coordinate descent on the stacked subproblems, a full KKT check with one
    GEMM per round, violators join their target's working set."""
    xp = prob.xp
    T = q.shape[1]
    thr = tol * yv / 2
    cols = xp.arange(T)
    conv = xp.zeros(T, dtype=bool)
    total = xp.zeros(T, dtype=xp.int64)
    pend = xp.arange(T)
    for _round in range(1000):
        P = pend
        budget = max(max_iter - int(total[P].max()), 1)
        Wp = xp.zeros((W.shape[0], P.size))
        pieces = [xp.zeros(P.size) for _ in range(4)]
        sizes = A[:, P].sum(axis=0)
        # targets sorted by working-set size, stacked in chunks of similar sizes: a
        # stack is padded to its largest set (work and memory chunk·K²)
        for sub in _size_chunks(to_numpy(sizes)):
            sub = xp.asarray(sub)
            Pc = P[sub]
            idx, valid, Qs = _stack_grams(prob.Q, A[:, Pc])
            tcol = cols[Pc][:, None]
            ws = W[idx, tcol] * valid
            qs = q[idx, tcol] * valid
            ws, _, pcs, it = _cd_stack(prob, Qs, qs, ws, lam[Pc], yv[Pc], thr[Pc], valid,
                                            idx, budget)
            del Qs, qs
            total[Pc] += it
            rr = xp.broadcast_to(sub[:, None], idx.shape)
            Wp[idx[valid], rr[valid]] = ws[valid]
            for dst, src in zip(pieces, pcs, strict=True):
                dst[sub] = src
        W[:, P] = Wp
        Cp = q[:, P] - prob.matvec(Wp)
        qw, wc, l1, cinf_a = pieces
        out = ~A[:, P]
        cinf_out = xp.where(out, xp.abs(Cp), 0.0).max(axis=0)
        s = xp.maximum(xp.maximum(lam[P], cinf_a), cinf_out)
        gap = _gap_pieces(yv[P], lam[P], qw, wc, l1, s)
        cP = gap <= thr[P]
        if prob.fast:
            # Outside A_t the float32 gradient enters the gap only through s (the pieces
            # qw, wc, l1, cinf_a are float64 on the stack). A rigorous bound δ_t on its
            # rounding error (:meth:`_Problem.f32_error_bound`) gives a dual-feasible
            # s = max(λ, cinf_a, cinf_out + δ): the gap with it bounds the true gap.
            dlt = prob.f32_error_bound(Wp, l1)
            s_ub = xp.maximum(s, cinf_out + dlt)
            ok_ub = _gap_pieces(yv[P], lam[P], qw, wc, l1, s_ub) <= thr[P]
            # only targets whose bound is too loose need an exact (float64) gradient: a
            # float32 error in |C_j| near λ moves the gap by up to λ‖w‖₁·err/λ
            cP = ok_ub
            f = xp.flatnonzero(~ok_ub & (gap <= thr[P]))
            if f.size:
                Pf = P[f]
                Cp[:, f] = q[:, Pf] - prob.matvec(Wp[:, f], exact=True)
                co = xp.where(out[:, f], xp.abs(Cp[:, f]), 0.0).max(axis=0)
                sf = xp.maximum(xp.maximum(lam[Pf], cinf_a[f]), co)
                cP[f] = _gap_pieces(yv[Pf], lam[Pf], qw[f], wc[f], l1[f], sf) <= thr[Pf]
        C[:, P] = Cp
        conv[P] = cP
        viol = (xp.abs(Cp) > lam[P][None, :] * (1 - prob.kkt_margin)) & out
        viol &= prob.usable[:, None]
        viol &= ~cP[None, :]
        if bool(viol.any()):
            A[:, P] |= viol
        keep = ~cP & viol.any(axis=0)
        if not bool(keep.any()) or int(total[P].max()) >= max_iter:
            break
        pend = P[keep]
    return W, C, total, conv


def _cd_stack(prob, Qs, qs, ws, lam, yv, thr, valid, idx, max_sweeps):
    """Cyclic coordinate descent for all stacked targets at once, in blocks of
    ``cd_block`` coordinates (exact updates inside a block, then one batched product)."""
    xp = prob.xp
    T, K = qs.shape
    cs = qs - xp.einsum("tij,tj->ti", Qs, ws)
    dg = xp.diagonal(Qs, axis1=1, axis2=2)
    inv = 1.0 / dg
    lam_inv = lam[:, None] * inv
    m = max(int(prob.cd_block), 1)
    full = None
    if prob.gauge is not None:
        nu = int(prob.usable.sum())
        full = xp.flatnonzero(valid.sum(axis=1) == nu)
        if full.size == 0:
            full = None
        else:
            gidx = idx[int(full[0]), :nu]
    sweeps = 0
    act = xp.arange(T)
    pieces = None
    for sweeps in range(1, max_sweeps + 1):  # noqa: B007
        for b0 in range(0, K, m):
            b1 = min(b0 + m, K)
            QB = Qs[act, b0:b1, :] if act.size < T else Qs[:, b0:b1, :]
            cB = cs[act, b0:b1]
            wB = ws[act, b0:b1]
            wold = wB.copy()
            QBB = QB[:, :, b0:b1]
            iv = inv[act, b0:b1]
            li = lam_inv[act, b0:b1]
            for k in range(b1 - b0):
                wj = wB[:, k]
                z = wj + cB[:, k] * iv[:, k]
                wn = xp.sign(z) * xp.maximum(xp.abs(z) - li[:, k], 0.0)
                dl = wn - wj
                if not bool(dl.any()):
                    continue
                wB[:, k] = wn
                cB -= QBB[:, k, :] * dl[:, None]
            D = wB - wold
            ws[act, b0:b1] = wB
            if bool(D.any()):
                cs[act] -= xp.einsum("tmk,tm->tk", QB, D)
        if full is not None:
            Wf = prob.shift_along(ws[full][:, :nu].T.copy(), prob.gauge[gidx]).T
            ws[full, :nu] = Wf
            cs[full] = qs[full] - xp.einsum("tij,tj->ti", Qs[full], ws[full])
        qw = xp.sum(qs * ws, axis=1)
        wc = xp.sum(ws * cs, axis=1)
        l1 = xp.abs(ws).sum(axis=1)
        cinf = xp.abs(cs).max(axis=1)
        pieces = (qw, wc, l1, cinf)
        gap = _gap_pieces(yv, lam, qw, wc, l1, xp.maximum(lam, cinf))
        ok = gap <= thr
        if bool(ok.all()):
            break
        act = xp.flatnonzero(~ok)
    return ws, cs, pieces, sweeps
