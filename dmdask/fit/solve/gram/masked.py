"""The masked route: accelerated proximal gradient on the full Gram for all targets of a group,
each target's prox masked to its working set, with per-target steps, Newton steps on settled
columns, and float64 products where a column is expected to certify."""

from __future__ import annotations

from .gap import _gap_pieces
from .newton import newton_step

_TINY = 1e-300


def solve_masked(prob, q, yv, lam, W, A, tol, max_iter, check_every=1, C=None):
    """Accelerated proximal gradient for all targets at once on the full Gram, each target
    restricted to its working set A_t (one GEMM QX per iteration, float32 when
    ``prob.fast``). Restricting to A_t removes the fixed-size null direction and the
    small eigenvalues of the full Gram, so few iterations are needed. The step 1/L_t is
    adapted per target from the curvature along the step taken (backtracking condition,
    checked with the product the next iteration needs anyway). The full gradient comes
    with every iteration: KKT violators join A_t at every check."""
    xp = prob.xp
    d, T = q.shape
    thr = tol * yv / 2
    A = A.copy()
    Wout = W.copy()
    Cout = xp.zeros_like(W)
    conv = xp.zeros(T, dtype=bool)
    its = xp.zeros(T, dtype=xp.int64)
    act = xp.arange(T)
    x = W * A
    # QW from the gradient C = q − QW that comes with the warm start (supp W ⊂ A)
    Px = prob.matvec(x) if C is None else q - C
    qa, lam_a, thr_a, yv_a = q, lam, thr, yv
    y, Py = x, Px
    t = xp.ones(T)
    L = xp.full(T, 1.0)
    stable = xp.zeros(T, dtype=xp.int64)  # iterations with unchanged support and signs
    since = xp.zeros(T, dtype=xp.int64)  # iterations since the last Newton step (or start)
    # gap / threshold at the last two checks: a column expected to pass at the next one
    # gets that product in float64, which then certifies it without a second GEMM
    ratio = xp.full(T, xp.inf)
    ratio0 = xp.full(T, xp.inf)
    nu = int(prob.usable.sum())
    def dot(a, b):
        return xp.einsum("ij,ij->j", a, b)

    for it in range(1, max_iter + 1):
        # few passes over the d × T arrays (they cost as much as the GEMM): the prox
        # soft(z, τ) = z − clip(z, −τ, τ), column dots by einsum, updates in place
        z = Py - qa
        z /= -L
        z += y
        tau = lam_a / L
        xn = z - xp.clip(z, -tau, tau)
        del z
        xn *= A
        newt = xp.zeros(xn.shape[1], dtype=bool)
        since += 1
        if prob.newton_every and it > prob.newton_after - prob.newton_every:
            same = ~(xp.sign(xn) != xp.sign(x)).any(axis=0)
            stable = xp.where(same, stable + 1, 0)
            # worth it once the iterations a column spent since its last step (or this
            # λ's start) cost more than a step (ski rental: Newton is then at most half
            # the work): per column a step gathers |S|² entries (~10 ns each) and solves
            # (~0.15 ns·|S|³ per round), an iteration costs ≳ 0.05 ns·d² (rough costs
            # measured on 2 cores at d = 1,300)
            k = (xn != 0).sum(axis=0).astype(xp.float64)
            worth = since * 0.05 * d * d >= 10 * k**2 + 0.15 * k**3
            worth &= it >= prob.newton_after
            ready = xp.flatnonzero((stable >= prob.newton_every) & worth)
            if ready.size:
                # a column whose support and signs have settled: solve on them directly
                # (before the product, which then serves the Newton point)
                stable[ready] = 0
                since[ready] = 0
                ch, xc = newton_step(prob, xn[:, ready], qa[:, ready], lam_a[ready])
                if ch.size:
                    ch = ready[ch]
                    xn[:, ch] = xc
                    newt[ch] = True
        exact = prob.predict_exact(ratio, ratio0) if prob.fast else None
        Pn = prob.matvec_mixed(xn, exact)
        D = xn - y
        dd = dot(D, D)
        dP = Pn - Py
        dQd = dot(D, dP)
        del dP
        # a Newton step says nothing about the curvature along it: no step-size update
        bad = (dQd > L * dd * (1 + 1e-9)) & ~newt
        L = xp.where(bad, 1.05 * dQd / xp.where(dd > 0, dd, 1.0), L)
        tn = (1 + xp.sqrt(1 + 4 * t * t)) / 2
        dx = xn - x
        restart = (dot(D, dx) < 0) | bad | newt  # (y − xn)·(xn − x) > 0
        del D
        mom = xp.where(restart, 0.0, (t - 1) / tn)[None, :]
        tn = xp.where(restart, 1.0, tn)
        dx *= mom
        dx += xn
        y = dx
        dPx = Pn - Px
        dPx *= mom
        dPx += Pn
        Py = dPx
        x, Px, t = xn, Pn, tn
        if it % check_every and it < max_iter:
            continue
        if prob.gauge is not None:
            full = A[prob.usable].sum(axis=0) == nu
            if bool(full.any()):
                f = xp.flatnonzero(full)
                # Qσ = 0: the shift leaves QX unchanged. y moves with x, so the momentum
                # y − x survives (resetting it at every check, as before, turned FISTA
                # into ISTA: 5× the iterations on tied outputs, whose supports fill the
                # working set at once)
                x0 = x[:, f]
                x[:, f] = prob.gauge_shift(x0, xp.arange(d))
                y[:, f] += x[:, f] - x0
        C = qa - Px
        qw = dot(qa, x)
        l1 = xp.abs(x).sum(axis=0)
        absC = xp.abs(C)
        gap = _gap_pieces(yv_a, lam_a, qw, dot(x, C), l1,
                          xp.maximum(lam_a, absC.max(axis=0)))
        ok = gap <= thr_a
        ratio0, ratio = ratio, gap / xp.maximum(thr_a, _TINY)
        if prob.fast and bool((ok & ~exact).any()):
            # certify with an exact (float64) gradient (see stacked.py); columns whose
            # product was exact already are
            f = xp.flatnonzero(ok & ~exact)
            Px[:, f] = prob.matvec(x[:, f], exact=True)
            C[:, f] = qa[:, f] - Px[:, f]
            Cf = C[:, f]
            gap_f = _gap_pieces(yv_a[f], lam_a[f], qw[f], xp.sum(x[:, f] * Cf, axis=0),
                                l1[f], xp.maximum(lam_a[f], xp.abs(Cf).max(axis=0)))
            ok[f] = gap_f <= thr_a[f]
            ratio[f] = gap_f / xp.maximum(thr_a[f], _TINY)
            Py[:, f] = Px[:, f]
            y[:, f] = x[:, f]
            t[f] = 1.0
            absC[:, f] = xp.abs(Cf)
        viol = (absC > lam_a[None, :] * (1 - prob.kkt_margin)) & ~A
        viol &= prob.usable[:, None] & ~ok[None, :]
        A |= viol
        its[act] = it
        if bool(ok.any()) or it == max_iter:
            done = xp.flatnonzero(ok) if it < max_iter else xp.arange(act.size)
            Wout[:, act[done]] = x[:, done]
            Cout[:, act[done]] = C[:, done]
            conv[act[done]] = ok[done]
            keep = xp.flatnonzero(~ok)
            if keep.size == 0 or it == max_iter:
                break
            act = act[keep]
            A, x, Px, y, Py = A[:, keep], x[:, keep], Px[:, keep], y[:, keep], Py[:, keep]
            t, L, stable, since = t[keep], L[keep], stable[keep], since[keep]
            ratio, ratio0 = ratio[keep], ratio0[keep]
            qa, lam_a, thr_a, yv_a = qa[:, keep], lam_a[keep], thr_a[keep], yv_a[keep]
    return Wout, Cout, its, conv
