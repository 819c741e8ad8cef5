"""The Gram solver: the LASSO path of many targets that share one design, from sufficient
statistics only (DESIGN.md "Solving many LASSOs that share one design", REFERENCE.md §1).

Per target block, on the standardised centred problem scaled by 1/n
(Q = X̃_cᵀX̃_c/n, q = X̃_cᵀy_c/n, yv = ‖y_c‖²/n), for each λ on the grid:

    minimise ½ wᵀQw − qᵀw + ½yv + λ‖w‖₁   (= (1/2n)‖y_c − X̃_c w‖² + λ‖w‖₁)

* **Per-target working sets.** The correlation C = q − QW is kept for all d coordinates (it
  is the negative gradient, so the KKT check is one GEMM); at each λ every target t gets its
  own working set A_t = supp(w_t) ∪ {j : |C_jt| ≥ 2λ_t − λ_prev,t} (sequential strong rule);
  KKT violators found by the full-gradient check join A_t. Restricted to A_t the subproblem
  Gram is well conditioned (|A_t| ≪ n) and has no fixed-size null direction.
* **Two routes**, chosen per target by cost (``stack_ratio``: |A_t|² ≤ ratio·d·|∪A|, setting
  ``dmdask.solve.gram-stack-ratio``): small working sets are gathered into a stack
  Q[A_t, A_t] [T, K, K] (padded) and solved together by blocked coordinate descent (work
  Σ|A_t|² per sweep; gathers cost ~5 ns/entry, so this wins only while K is small); large
  ones by accelerated proximal gradient on the full Gram with each target's prox masked to
  A_t (``method="fista"``: one GEMM QX per iteration, per-target step from the curvature
  along the step, violators join on the fly) or by the union-working-set coordinate
  descent (``method="cd"``).
* **Newton steps.** With few models per training example (n ≲ d) the supports approach the
  rank and first-order methods need hundreds of iterations per λ. On the masked route a
  column whose support and signs have not changed for ``newton_every`` iterations (setting
  ``dmdask.solve.gram-newton-every``), from iteration 20 of a λ and once its iterations since
  its last step cost more than a step, gets an active-set Newton step: Q_SS w = q_S − λ·sign on its support,
  coordinates whose sign flips leave and the reduced system is solved again, and the point
  is kept only where the objective drops (:meth:`_Problem._newton`).
* **Precision.** With tol ≥ 1e-7 the GEMMs are float32; every convergence decision is
  certified in float64 (a float32 error in |C_j| near λ moves the gap by up to λ‖w‖₁·err/λ):
  on the stacked route the gap's pieces are float64 and the float32 gradient outside A_t
  enters only through the dual scaling, so a rigorous rounding-error bound on it
  (:meth:`_Problem.f32_error_bound`) certifies without a float64 GEMM; targets whose bound is
  too loose, and the masked route, re-check with a float64 gradient.
* **Stop** per target on the duality gap (§1.5) of the full problem:
  gap ≤ tol·‖y_c‖²/(2n). Converged targets leave the computation; a target that spends
  ``max_iter`` at one λ stops its path there (``converged`` False; the fit warns).
* **Constant targets** (spread within the rounding of their sums, :func:`flat_targets`) get
  w = 0 on the rows where they are constant, without a solve; constant on all fitting rows
  (or, under the holdout, on the training rows): λ = 0 and no path at all.
* **Validation MSE** from the validation statistics in the training standardisation, centred
  at the validation means (:class:`_ValGram`): w̃ᵀQ_v w̃ from a gather of Q_v[S_t, S_t] for
  small supports, one GEMM on the supports' rows for the others.

Selection, refit and raw-space conversion follow :mod:`dmdask.fit.solve.base`. Which inner
solver wins was measured in ``benchmarks/bench_solve.py`` (see ``benchmarks/RESULTS.md``);
the default is the winner (setting ``dmdask.solve.gram-method``).
"""

from __future__ import annotations

import time

import dask
import numpy as np

from ... import config
from ...backend import get_namespace, to_numpy
from ...scheduling import blas_per_lane, compute, lane_blas_threads
from ..stats import SufficientStats, compute_stats, group_bounds_for
from .base import PathOptions, PathResult, Split, UnsupportedTargets, to_raw
from .grid import lambda_grid, select_lambda, should_stop

__all__ = ["GramSolver", "gram_path", "solve_from_stats", "lambda_max"]

_TINY = 1e-300


def _soft(z, t, xp):
    return xp.sign(z) * xp.maximum(xp.abs(z) - t, 0.0)


def lambda_max(q):
    """λ_max [T] of the standardised problem: ‖X̃ᵀy_c‖∞/n = max_j |q_jt|."""
    xp = get_namespace(q)
    return xp.abs(q).max(axis=0)


def _gap(yv, lam, W, C, q, cinf):
    """Duality gap (§1.5) per target from the statistics; W, C, q restricted to any set of
    rows containing W's support, ``cinf`` = max |C| over all d coordinates."""
    xp = get_namespace(W)
    return _gap_pieces(yv, lam, xp.sum(q * W, axis=0), xp.sum(W * C, axis=0),
                       xp.abs(W).sum(axis=0), xp.maximum(lam, cinf))


def _gap_pieces(yv, lam, qw, wc, l1, s):
    """The duality gap from its pieces: qw = qᵀw, wc = wᵀC, l1 = ‖w‖₁, s = max(λ, ‖C‖∞)."""
    xp = get_namespace(qw)
    R = xp.maximum(yv - qw - wc, 0.0)
    ry = yv - qw
    # the dual point is the residual scaled by λ/s ≤ 1; at s = 0 (λ = 0 and a zero gradient:
    # a constant target) the scale is 0, not 0/0
    r = lam / xp.where(s > 0, s, 1.0)
    return R / 2 + lam * l1 + r * r * R / 2 - r * ry


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


class _Problem:
    """The standardised problem of one training set, shared by all target blocks."""

    def __init__(self, Q, method, cd_block):
        xp = get_namespace(Q)
        self.Q = Q
        self.xp = xp
        self.diag = xp.diagonal(Q).copy()
        self.usable = self.diag > 0
        self.method = method
        self.cd_block = cd_block
        self._L = None
        self._Q32 = None
        self._offmax = None
        # stacked subproblems for targets with |A_t|² ≤ stack_ratio·d·|U| (measured,
        # benchmarks/bench_solve.py); 0 = always the union working set
        self.stack_ratio = 0.005
        # float32 GEMM for the full KKT gradient (tolerances ≥ 1e-7 only, set by the path)
        self.fast = False
        # masked route: a Newton step on a column whose support and signs held for this many
        # iterations (0: never), with up to `newton_rounds` sign-flip rounds, not before
        # iteration `newton_after` of a λ (well-conditioned problems converge before; the
        # cost rule in _solve_masked spaces the steps after that). Measured:
        # bench_solve.py --newton
        self.newton_every = 3
        self.newton_rounds = 3
        self.newton_after = 20
        self.kkt_margin = 0.0
        # BLAS threads of the lane that runs this problem's GEMMs (set by solve_from_stats)
        self.blas_threads = 1
        # Fixed-size subsets: X̃_c σ = X_c 1 = 0, so Q σ = 0 exactly and w̃ → w̃ + tσ changes
        # only the L1 term (REFERENCE §0, §1 checks). CD and FISTA crawl along such a flat
        # direction; an exact line search along it (a weighted median) removes the crawl.
        self.gauge = None

    def set_gauge(self, sigma):
        """Use σ as the null direction when Qσ vanishes (fixed-size sampling)."""
        xp = self.xp
        v = xp.where(self.usable, sigma, 0.0)
        nv = float(xp.linalg.norm(v))
        if nv > 0 and float(xp.linalg.norm(self.Q @ v)) <= 1e-9 * nv:
            self.gauge = v
        return self

    def gauge_shift(self, W, U):
        """Move W (rows U of the full vector; U must hold every usable coordinate) along the
        null direction to the L1-minimal point: t* = weighted median of −w_j/v_j, weights v_j."""
        v = self.gauge[U]
        keep = v > 0
        if not bool(keep.all()):
            vv = v[keep]
            W[keep] = self._shift(W[keep], vv)
            return W
        return self._shift(W, v)

    def _shift(self, W, v):
        xp = self.xp
        a = -W / v[:, None]
        order = xp.argsort(a, axis=0)
        a_s = xp.take_along_axis(a, order, axis=0)
        cw = xp.cumsum(v[order], axis=0)
        half = cw[-1] / 2
        idx = xp.argmax(cw >= half[None, :], axis=0)
        t = a_s[idx, xp.arange(W.shape[1])]
        return W + v[:, None] * t[None, :]

    @property
    def L(self):
        if self._L is None:
            self._L = _power_L(self.Q, self.xp)
        return self._L

    def corr(self, q, W):
        """C = q − QW using only W's nonzero rows."""
        xp = self.xp
        U = xp.flatnonzero((W != 0).any(axis=1))
        if U.size == 0:
            return q.copy()
        return q - self.Q[:, U] @ W[U]

    # ------------------------------------------------------------------ inner solvers
    def _cd(self, QU, dU, qU, CU, WU, lam, yv, thr, cinf_out, max_sweeps, full_U=None):
        xp = self.xp
        u = QU.shape[0]
        m = self.cd_block
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
            if self.gauge is not None and full_U is not None:
                WU = self.gauge_shift(WU, full_U)
            cinf = xp.maximum(xp.abs(CU).max(axis=0), cinf_out)
            if bool((_gap(yv, lam, WU, CU, qU, cinf) <= thr).all()):
                break
        return WU, CU, sweeps

    def _fista(self, QU, dU, qU, CU, WU, lam, yv, thr, cinf_out, max_iter, full_U=None,
               check_every=5):
        xp = self.xp
        L = self.L
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
                if self.gauge is not None and full_U is not None:
                    x = self.gauge_shift(x, full_U)
                    y = x.copy()
                    t = xp.ones(x.shape[1])
                CU = qU - QU @ x
                cinf = xp.maximum(xp.abs(CU).max(axis=0), cinf_out)
                if bool((_gap(yv, lam, x, CU, qU, cinf) <= thr).all()):
                    return x, CU, it
        CU = qU - QU @ x
        return x, CU, it

    # ------------------------------------------------------------------ one λ
    def solve(self, q, yv, lam, W, C, lam_prev, tol, max_iter):
        """Solve at ``lam`` [T] from warm start W [d, T] with C = q − QW; returns
        (W, C, iterations [T], converged [T]).

        Per-target working sets A_t = support ∪ strong rule (∪ KKT violators, added after each
        check). Targets whose |A_t| is small relative to the union of all working sets are
        solved together on stacked subproblem Grams Q[A_t, A_t] (work Σ_t |A_t|² per sweep);
        the rest on the union working set with GEMMs (work |U|²·T per iteration)."""
        xp = self.xp
        T = q.shape[1]
        W = W.copy()
        C = C.copy()
        A = ((W != 0) | (xp.abs(C) >= (2 * lam - lam_prev)[None, :])) & self.usable[:, None]
        sizes = A.sum(axis=0)
        U = int((A.any(axis=1)).sum())
        small = sizes.astype(xp.float64) ** 2 <= self.stack_ratio * self.Q.shape[0] * max(U, 1)
        small = to_numpy(small)
        its = xp.zeros(T, dtype=xp.int64)
        conv = xp.zeros(T, dtype=bool)
        big = np.flatnonzero(~small)
        if big.size:
            b = xp.asarray(big)
            if self.method == "fista":
                Wb, Cb, it, cb = self._solve_masked(q[:, b], yv[b], lam[b], W[:, b],
                                                    A[:, b], tol, max_iter, C=C[:, b])
            else:
                Wb, Cb, it, cb = self._solve_union(q[:, b], yv[b], lam[b], W[:, b],
                                                   C[:, b], lam_prev[b], tol, max_iter)
            W[:, b] = Wb
            C[:, b] = Cb
            its[b] = it
            conv[b] = cb
        sm = np.flatnonzero(small)
        if sm.size:
            s_ = xp.asarray(sm)
            Ws, Cs, it, cs = self._solve_stacked(q[:, s_], yv[s_], lam[s_], W[:, s_],
                                                 C[:, s_], A[:, s_], tol, max_iter)
            W[:, s_] = Ws
            C[:, s_] = Cs
            its[s_] = it
            conv[s_] = cs
        return W, C, its, conv

    # ------------------------------------------------------------ stacked working sets
    def _stack(self, A):
        """Index [T, K] of each target's working set (ascending, padded with its first
        index), validity mask [T, K], and the stacked Grams Q[A_t, A_t] [T, K, K] with padded
        rows/columns zero and unit diagonal (padded coordinates then stay 0)."""
        xp = self.xp
        idx, valid = _padded_rows(A)  # [T, K], A_t ascending
        K = idx.shape[1]
        d = self.Q.shape[0]
        flat = idx[:, :, None] * d + idx[:, None, :]
        Qs = xp.take(self.Q.reshape(-1), flat)
        del flat
        vv = valid[:, :, None] & valid[:, None, :]
        Qs *= vv
        pad = ~valid
        if bool(pad.any()):
            ii = xp.arange(K)
            Qs[:, ii, ii] += pad
        return idx, valid, Qs

    def _solve_stacked(self, q, yv, lam, W, C, A, tol, max_iter):
        """Blocked coordinate descent on the stacked subproblems, a full KKT check with one
        GEMM per round, violators join their target's working set."""
        xp = self.xp
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
                idx, valid, Qs = self._stack(A[:, Pc])
                tcol = cols[Pc][:, None]
                ws = W[idx, tcol] * valid
                qs = q[idx, tcol] * valid
                ws, _, pcs, it = self._cd_stack(Qs, qs, ws, lam[Pc], yv[Pc], thr[Pc], valid,
                                                idx, budget)
                del Qs, qs
                total[Pc] += it
                rr = xp.broadcast_to(sub[:, None], idx.shape)
                Wp[idx[valid], rr[valid]] = ws[valid]
                for dst, src in zip(pieces, pcs, strict=True):
                    dst[sub] = src
            W[:, P] = Wp
            Cp = q[:, P] - self.matvec(Wp)
            qw, wc, l1, cinf_a = pieces
            out = ~A[:, P]
            cinf_out = xp.where(out, xp.abs(Cp), 0.0).max(axis=0)
            s = xp.maximum(xp.maximum(lam[P], cinf_a), cinf_out)
            gap = _gap_pieces(yv[P], lam[P], qw, wc, l1, s)
            cP = gap <= thr[P]
            if self.fast:
                # Outside A_t the float32 gradient enters the gap only through s (the pieces
                # qw, wc, l1, cinf_a are float64 on the stack). A rigorous bound δ_t on its
                # rounding error (:meth:`f32_error_bound`) gives a dual-feasible
                # s = max(λ, cinf_a, cinf_out + δ): the gap with it bounds the true gap.
                dlt = self.f32_error_bound(Wp, l1)
                s_ub = xp.maximum(s, cinf_out + dlt)
                ok_ub = _gap_pieces(yv[P], lam[P], qw, wc, l1, s_ub) <= thr[P]
                # only targets whose bound is too loose need an exact (float64) gradient: a
                # float32 error in |C_j| near λ moves the gap by up to λ‖w‖₁·err/λ
                cP = ok_ub
                f = xp.flatnonzero(~ok_ub & (gap <= thr[P]))
                if f.size:
                    Pf = P[f]
                    Cp[:, f] = q[:, Pf] - self.matvec(Wp[:, f], exact=True)
                    co = xp.where(out[:, f], xp.abs(Cp[:, f]), 0.0).max(axis=0)
                    sf = xp.maximum(xp.maximum(lam[Pf], cinf_a[f]), co)
                    cP[f] = _gap_pieces(yv[Pf], lam[Pf], qw[f], wc[f], l1[f], sf) <= thr[Pf]
            C[:, P] = Cp
            conv[P] = cP
            viol = (xp.abs(Cp) > lam[P][None, :] * (1 - self.kkt_margin)) & out
            viol &= self.usable[:, None]
            viol &= ~cP[None, :]
            if bool(viol.any()):
                A[:, P] |= viol
            keep = ~cP & viol.any(axis=0)
            if not bool(keep.any()) or int(total[P].max()) >= max_iter:
                break
            pend = P[keep]
        return W, C, total, conv

    def _cd_stack(self, Qs, qs, ws, lam, yv, thr, valid, idx, max_sweeps):
        """Cyclic coordinate descent for all stacked targets at once, in blocks of
        ``cd_block`` coordinates (exact updates inside a block, then one batched product)."""
        xp = self.xp
        T, K = qs.shape
        cs = qs - xp.einsum("tij,tj->ti", Qs, ws)
        dg = xp.diagonal(Qs, axis1=1, axis2=2)
        inv = 1.0 / dg
        lam_inv = lam[:, None] * inv
        m = max(int(self.cd_block), 1)
        full = None
        if self.gauge is not None:
            nu = int(self.usable.sum())
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
                Wf = self._shift(ws[full][:, :nu].T.copy(), self.gauge[gidx]).T
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

    def _solve_masked(self, q, yv, lam, W, A, tol, max_iter, check_every=1, C=None):
        """Accelerated proximal gradient for all targets at once on the full Gram, each target
        restricted to its working set A_t (one GEMM QX per iteration, float32 when
        ``self.fast``). Restricting to A_t removes the fixed-size null direction and the
        small eigenvalues of the full Gram, so few iterations are needed. The step 1/L_t is
        adapted per target from the curvature along the step taken (backtracking condition,
        checked with the product the next iteration needs anyway). The full gradient comes
        with every iteration: KKT violators join A_t at every check."""
        xp = self.xp
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
        Px = self.matvec(x) if C is None else q - C
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
        nu = int(self.usable.sum())
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
            if self.newton_every and it > self.newton_after - self.newton_every:
                same = ~(xp.sign(xn) != xp.sign(x)).any(axis=0)
                stable = xp.where(same, stable + 1, 0)
                # worth it once the iterations a column spent since its last step (or this
                # λ's start) cost more than a step (ski rental: Newton is then at most half
                # the work): per column a step gathers |S|² entries (~10 ns each) and solves
                # (~0.15 ns·|S|³ per round), an iteration costs ≳ 0.05 ns·d² (rough costs
                # measured on 2 cores at d = 1,300)
                k = (xn != 0).sum(axis=0).astype(xp.float64)
                worth = since * 0.05 * d * d >= 10 * k**2 + 0.15 * k**3
                worth &= it >= self.newton_after
                ready = xp.flatnonzero((stable >= self.newton_every) & worth)
                if ready.size:
                    # a column whose support and signs have settled: solve on them directly
                    # (before the product, which then serves the Newton point)
                    stable[ready] = 0
                    since[ready] = 0
                    ch, xc = self._newton(xn[:, ready], qa[:, ready], lam_a[ready])
                    if ch.size:
                        ch = ready[ch]
                        xn[:, ch] = xc
                        newt[ch] = True
            exact = self._predict(ratio, ratio0) if self.fast else None
            Pn = self._matvec_mixed(xn, exact)
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
            if self.gauge is not None:
                full = A[self.usable].sum(axis=0) == nu
                if bool(full.any()):
                    f = xp.flatnonzero(full)
                    # Qσ = 0: the shift leaves QX unchanged. y moves with x, so the momentum
                    # y − x survives (resetting it at every check, as before, turned FISTA
                    # into ISTA: 5× the iterations on tied outputs, whose supports fill the
                    # working set at once)
                    x0 = x[:, f]
                    x[:, f] = self.gauge_shift(x0, xp.arange(d))
                    y[:, f] += x[:, f] - x0
            C = qa - Px
            qw = dot(qa, x)
            l1 = xp.abs(x).sum(axis=0)
            absC = xp.abs(C)
            gap = _gap_pieces(yv_a, lam_a, qw, dot(x, C), l1,
                              xp.maximum(lam_a, absC.max(axis=0)))
            ok = gap <= thr_a
            ratio0, ratio = ratio, gap / xp.maximum(thr_a, _TINY)
            if self.fast and bool((ok & ~exact).any()):
                # certify with an exact (float64) gradient (see _solve_stacked); columns whose
                # product was exact already are
                f = xp.flatnonzero(ok & ~exact)
                Px[:, f] = self.matvec(x[:, f], exact=True)
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
            viol = (absC > lam_a[None, :] * (1 - self.kkt_margin)) & ~A
            viol &= self.usable[:, None] & ~ok[None, :]
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

    def _newton(self, x, q, lam, max_k=1024):
        """An active-set Newton step on each column's current support S and signs: on the
        orthant of sign(x_S) the objective is the quadratic ½wᵀQ_SS w − (q_S − λ·sign)ᵀw,
        minimised at w_N = Q_SS⁻¹(q_S − λ·sign). Coordinates whose sign flips at w_N leave S
        and the reduced system is solved again (up to ``newton_rounds`` times); of the points
        found, the one with the lowest LASSO objective is kept if it is lower than x's (never
        uphill; a singular Q_SS gives no step). First-order methods need ~√κ(Q_SS) iterations
        per λ; with few models per training example (n ≲ d) the supports approach the rows
        and κ reaches the hundreds, where one |S| × |S| solve replaces them.

        Returns (columns changed, their new values [d, k])."""
        xp = self.xp
        nz = x != 0
        k = nz.sum(axis=0)
        cand = xp.flatnonzero((k > 0) & (k <= max_k))
        empty = (xp.zeros(0, dtype=xp.int64), None)
        if cand.size == 0:
            return empty
        cols, outs = [], []
        # columns in chunks of similar support size: a stack is padded to its largest
        for sub in _size_chunks(to_numpy(k[cand]), max_entries=2**22):
            c = cand[xp.asarray(sub)]
            ch, xc = self._newton_stack(x[:, c], q[:, c], lam[c], nz[:, c])
            if ch.size:
                cols.append(c[ch])
                outs.append(xc)
        if not cols:
            return empty
        return xp.concatenate(cols), xp.concatenate(outs, axis=1)

    def _newton_stack(self, x, q, lam, nz):
        """:meth:`_newton` for columns of similar support size (one padded stack)."""
        xp = self.xp
        idx, valid, Qs = self._stack(nz)
        tcol = xp.arange(x.shape[1])[:, None]
        xs = x[idx, tcol] * valid
        qs = q[idx, tcol] * valid
        lc = lam[:, None]

        def obj(w, r):
            return (0.5 * xp.sum(w * xp.einsum("tij,tj->ti", Qs[r], w), axis=1)
                    - xp.sum(qs[r] * w, axis=1) + lc[r, 0] * xp.abs(w).sum(axis=1))

        allr = xp.arange(xs.shape[0])
        f0 = obj(xs, allr)
        best, fbest = xs.copy(), f0.copy()
        sg = xp.sign(xs)
        keep = valid & (xs != 0)
        r = allr
        eye = xp.eye(idx.shape[1], dtype=bool)
        for _round in range(self.newton_rounds):
            # the quadratic on the orthant of `sg` over the coordinates `keep`; where signs
            # flip at its minimum those coordinates leave, and the reduced problem is solved
            kr = keep[r]
            M = xp.where(kr[:, :, None] & kr[:, None, :], Qs[r], 0.0)
            M[:, eye] += ~kr
            wN = _batched_solve(M, (qs[r] - lc[r] * sg[r]) * kr, xp) * kr
            fN = obj(wN, r)
            upd = xp.isfinite(fN) & (fN < fbest[r])
            best[r[upd]] = wN[upd]
            fbest[r[upd]] = fN[upd]
            flip = kr & (xp.sign(wN) != sg[r])
            more = flip.any(axis=1)
            if not bool(more.any()):
                break
            keep[r] = kr & ~flip
            r = r[more]
        gi = xp.flatnonzero(fbest < f0)
        if gi.size == 0:
            return xp.zeros(0, dtype=xp.int64), None
        out = xp.zeros((x.shape[0], gi.size))
        ii, vv = idx[gi], valid[gi]
        rr = xp.broadcast_to(xp.arange(gi.size)[:, None], ii.shape)
        out[ii[vv], rr[vv]] = best[gi][vv]
        return gi, out

    # A column gets its next product in float64 where it will most likely pass the next
    # check: its gap was within `_PREDICT` of the threshold and it is converging fast (the
    # last two checks' contraction c ≤ ½), or, converging slowly, extrapolating c puts it
    # under the threshold. A right guess saves the float32 product before the certifying
    # one; a wrong one costs a float64 product in place of a float32 one. Measured in GEMM
    # work (columns × rows): −10% on the path at 50,000 × 5,000 × 500 (1,045 of 1,196
    # predicted columns passed); −4% on a slowly converging fixed-size problem, where the
    # threshold alone (+27%) guesses wrong most of the time.
    _PREDICT = 10.0

    def _predict(self, ratio, ratio0):
        """Columns [T] whose next product should be float64 (``ratio``, ``ratio0``: gap /
        threshold at the last two checks, inf where not yet checked)."""
        xp = self.xp
        seen = xp.isfinite(ratio0)
        r = xp.where(seen, ratio, 0.0)  # before a second check: c = 0 (ratio may be inf)
        c = r / xp.where(seen, ratio0, 1.0)
        return (ratio <= self._PREDICT) & ((c <= 0.5) | (r * c <= 1.0))

    def _matvec_mixed(self, W, exact):
        """QW with the columns flagged in ``exact`` [T] (bool, or None) in float64."""
        xp = self.xp
        if exact is None or not bool(exact.any()):
            return self.matvec(W)
        if bool(exact.all()):
            return self.matvec(W, exact=True)
        e, f = xp.flatnonzero(exact), xp.flatnonzero(~exact)
        out = xp.empty_like(W)
        out[:, e] = self.matvec(W[:, e], exact=True)
        out[:, f] = self.matvec(W[:, f])
        return out

    # Break-even of that CSR product (SciPy, one thread) against the GEMM, per BLAS thread
    # the GEMM has: nonzeros·k = rows·T with k = 20 (float32) and 17 (float64), measured at
    # d = 5,000, T = 250 on one BLAS thread, one lane alone and two at once (same ratios),
    # and half the density on two threads. The path's lanes have one thread each, so W with
    # 1/64–1/20 nonzeros (the supports of the mid-path λ) take the CSR route.
    _CSR_PER_THREAD = (20, 17)

    def matvec(self, W, exact=False):
        """QW using only W's nonzero rows (float32 GEMM when ``self.fast`` and not
        ``exact``)."""
        xp = self.xp
        nz = W != 0
        U = xp.flatnonzero(nz.any(axis=1))
        if U.size == 0:
            return xp.zeros_like(W)
        dense = 2 * U.size >= W.shape[0]
        rows = W.shape[0] if dense else U.size
        f32 = self.fast and not exact
        # a sparse W (few nonzeros per target) streams one row of Q per nonzero (memory
        # bound, one thread) instead of a GEMM over all rows
        if xp is np:
            k = self._CSR_PER_THREAD[0 if f32 else 1] * self.blas_threads
        else:  # pragma: no cover - GPU only
            k = 64 if f32 else 32
        if int(nz.sum()) * k < rows * W.shape[1]:
            Qm = self.Q32 if f32 else self.Q
            S = _csr(xp, W.T.astype(Qm.dtype))
            return (S @ Qm).T.astype(xp.float64)
        if f32:
            Q32 = self.Q32
            if dense:
                return (Q32 @ W.astype(xp.float32)).astype(xp.float64)
            return (Q32[U].T @ W[U].astype(xp.float32)).astype(xp.float64)
        if dense:
            return self.Q @ W
        return self.Q[U].T @ W[U]

    def f32_error_bound(self, W, l1):
        """Rigorous bound [T] on |fl32((QW)_j) − (QW)_j| for every j outside supp(w_t).

        The float32 product rounds Q and W (relative u each) and sums the nnz_t nonzero
        products of each dot product (zero terms add exactly, whatever the BLAS order), so
        the error is ≤ γ_{nnz_t+3}·Σ_k |Q_jk||w_kt| ≤ γ_{nnz_t+3}·max_{j≠k}|Q_jk|·‖w_t‖₁
        (Higham, Accuracy and Stability §3.1; γ_m = mu/(1 − mu), u = 2⁻²⁴); doubled as a
        margin."""
        xp = self.xp
        m = (W != 0).sum(axis=0).astype(xp.float64) + 3
        u = 2.0**-24
        return 2 * (m * u / (1 - m * u)) * self.offmax * l1

    @property
    def offmax(self):
        """max_{j≠k} |Q_jk| (a bound on the float32 matrix entries as well, with the margin
        of :meth:`f32_error_bound`)."""
        if self._offmax is None:
            xp = self.xp
            a = xp.abs(self.Q32)
            di = xp.arange(a.shape[0])
            a[di, di] = 0
            self._offmax = float(a.max()) * (1 + 2.0**-23)
        return self._offmax

    @property
    def Q32(self):
        if self._Q32 is None:
            self._Q32 = self.Q.astype(self.xp.float32)
        return self._Q32

    def _solve_union(self, q, yv, lam, W, C, lam_prev, tol, max_iter):
        """The union working set for a group of targets (dense GEMMs)."""
        xp = self.xp
        thr = tol * yv / 2
        strong = xp.abs(C) >= (2 * lam - lam_prev)[None, :]
        inU = ((W != 0).any(axis=1) | strong.any(axis=1)) & self.usable
        total = 0
        conv = xp.zeros(q.shape[1], dtype=bool)
        while True:
            U = xp.flatnonzero(inU)
            if U.size:
                QU = self.Q[xp.ix_(U, U)]
                out = xp.flatnonzero(~inU)
                cinf_out = (xp.abs(C[out]).max(axis=0) if out.size else
                            xp.zeros(q.shape[1]))
                budget = max(max_iter - total, 1)
                full_U = U if int(self.usable[U].sum()) == int(self.usable.sum()) else None
                inner = self._cd if self.method == "cd" else self._fista
                WU, _, it = inner(QU, self.diag[U], q[U], C[U].copy(), W[U].copy(), lam, yv,
                                  thr, cinf_out, budget, full_U=full_U)
                total += it
                W[U] = WU
            C = self.corr(q, W)
            cinf = xp.abs(C).max(axis=0)
            gap = _gap(yv, lam, W, C, q, cinf)
            conv = gap <= thr
            if bool(conv.all()) or total >= max_iter:
                break
            viol = ((xp.abs(C) > lam[None, :]) & ~conv[None, :]).any(axis=1) & ~inU
            viol &= self.usable
            if bool(viol.any()):
                inU |= viol
            elif not U.size:
                break
        return W, C, total, conv


def gram_path(
    prob: _Problem,
    q,
    yv,
    lambdas,
    *,
    tol: float,
    max_iter: int,
    val_fn=None,
    stop_index=None,
    early_stop: bool = False,
    min_lams_to_try: int = 10,
    W0=None,
    flat=None,
):
    """Run the path for a block of targets.

    ``val_fn(W_std, idx) -> mse`` gives the validation MSE of the solutions of targets ``idx``;
    ``stop_index`` [T] stops each target after that grid index (refit mode); a target that
    ends a λ unconverged (``max_iter`` spent) stops there (``converged`` False). ``flat`` [T]
    bool marks targets constant on these rows (:func:`flat_targets`): w = 0 at every λ,
    answered without a solve (their validation MSE is that of w = 0 at every λ). Returns a
    dict: ``val`` [T, L] (NaN where not solved), ``W_best`` (at the best validation MSE so
    far, or at ``stop_index``), ``n_iter`` [T], ``converged`` [T], ``nnz`` [T, L].
    """
    xp = prob.xp
    d, T = q.shape
    L = lambdas.shape[1]
    W = xp.zeros((d, T)) if W0 is None else W0.copy()
    flat = np.zeros(T, dtype=bool) if flat is None else np.asarray(flat, dtype=bool)
    val = np.full((T, L), np.nan)
    nnz = np.zeros((T, L), dtype=np.int64)
    if flat.any():
        fl = xp.asarray(np.flatnonzero(flat))
        W[:, fl] = 0.0
        if val_fn is not None:
            val[flat] = to_numpy(val_fn(xp.zeros((d, int(fl.size))), fl))[:, None]
    C = q - prob.matvec(W)
    W_best = W.copy()
    best = np.full(T, np.inf)
    n_iter = np.zeros(T, dtype=np.int64)
    converged = np.ones(T, dtype=bool)
    alive = ~flat
    last = np.full(T, L - 1) if stop_index is None else np.asarray(stop_index)
    lam_prev = lambdas[:, 0]
    for li in range(L):
        act = np.flatnonzero(alive & (li <= last))
        if act.size == 0:
            break
        a = xp.asarray(act)
        lam = lambdas[a, li]
        if act.size == T:  # no gathers/scatters of d × T arrays (solve copies W, C)
            Wa, Ca, it, conv = prob.solve(q, yv, lam, W, C, lam_prev, tol, max_iter)
            W, C = Wa, Ca
        else:
            Wa, Ca, it, conv = prob.solve(q[:, a], yv[a], lam, W[:, a], C[:, a], lam_prev[a],
                                          tol, max_iter)
            W[:, a] = Wa
            C[:, a] = Ca
        n_iter[act] += to_numpy(it)
        conv = to_numpy(conv)
        converged[act] &= conv
        # a target that used its whole iteration budget at this λ stops its path here (the
        # smaller λ are harder still): the budget bounds its cost, and the fit warns
        spent = act[~conv]
        if spent.size:
            alive[spent] = False
            if val_fn is None:
                W_best[:, xp.asarray(spent)] = W[:, xp.asarray(spent)]
        nnz[act, li] = to_numpy((Wa != 0).sum(axis=0))
        lam_prev = lambdas[:, li]
        if val_fn is not None:
            v = to_numpy(val_fn(Wa, a))
            val[act, li] = v
            better = v <= best[act]
            best[act] = np.where(better, v, best[act])
            upd = act[better]
            if upd.size:
                W_best[:, xp.asarray(upd)] = Wa[:, xp.asarray(np.flatnonzero(better))]
            if early_stop and li > 0:
                stop = should_stop(val[act, li - 1], v, li + 1, nnz[act, li], min_lams_to_try)
                alive[act[stop]] = False
        else:
            hit = act[last[act] == li]
            if hit.size:
                W_best[:, xp.asarray(hit)] = W[:, xp.asarray(hit)]
    return {"val": val, "W_best": W_best, "n_iter": n_iter, "converged": converged, "nnz": nnz}


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


# ---------------------------------------------------------------------- block tasks
def _solve_block(tr_probs, tr_stats, val_stats, full_prob, full_stats, cols, split_kind,
                 opts: dict, val_grams=None):
    """All work for one target block: paths on the training set(s), selection, refit."""
    t0 = time.perf_counter()
    xp = get_namespace(full_stats.G)
    cols = xp.asarray(cols)
    n_lambdas, ratio = opts["n_lambdas"], opts["lambda_ratio"]
    tol, max_iter = opts["tol"], opts["max_iter"]
    T = int(cols.size)
    _, q_full, yv_full, mu_f, sig_f, ybar_f = _std_targets(full_stats, cols)
    # targets constant on the rows the grid comes from get no path: λ_max = 0, w = 0
    # (holdout: a target constant on the training rows shows no signal to select a λ by)
    flat_tr = [flat_targets(st, cols, full_stats) for st in tr_stats]
    no_path = flat_targets(full_stats, cols)
    if split_kind == "holdout":
        no_path |= flat_tr[0]
        q_grid = _std_targets(tr_stats[0], cols)[1]
    else:
        q_grid = q_full
    lam_max = np.where(no_path, 0.0, to_numpy(lambda_max(q_grid)))
    lambdas = lambda_grid(lam_max, n_lambdas, ratio)
    lam_x = xp.asarray(lambdas)
    n_iter = np.zeros(T, dtype=np.int64)
    conv = np.ones(T, dtype=bool)
    vals = []
    W_warm = None
    if val_grams is None:
        val_grams = [_ValGram(vst, st.sigma, prob.fast)
                     for prob, st, vst in zip(tr_probs, tr_stats, val_stats, strict=True)]
    for prob, st, vg, flat in zip(tr_probs, tr_stats, val_grams, flat_tr, strict=True):
        _, q_tr, yv_tr, mu, sig, ybar = _std_targets(st, cols)
        fn = vg.fn(mu, sig, ybar, cols)
        res = gram_path(prob, q_tr, yv_tr, lam_x, tol=tol, max_iter=max_iter,
                        val_fn=lambda W, idx, fn=fn: fn(W, idx),
                        early_stop=opts["early_stop"], min_lams_to_try=opts["min_lams_to_try"],
                        flat=flat | no_path)
        vals.append(res["val"])
        n_iter += res["n_iter"]
        conv &= res["converged"]
        if split_kind == "holdout":
            W_warm = res["W_best"]
    val_path = np.mean(vals, axis=0) if len(vals) > 1 else vals[0]
    best = select_lambda(val_path)
    rows = np.arange(T)
    lam = lambdas[rows, best]
    if W_warm is not None:
        # holdout: one solve at the chosen λ from the training solution there
        W = xp.zeros_like(W_warm)
        go = np.flatnonzero(~no_path)
        if go.size:
            g = xp.asarray(go)
            Wg = W_warm[:, g]
            C0 = q_full[:, g] - full_prob.matvec(Wg)
            lg = xp.asarray(lam[go])
            Wg, _, it, c = full_prob.solve(q_full[:, g], yv_full[g], lg, Wg, C0, lg, tol,
                                           max_iter)
            W[:, g] = Wg
            n_iter[go] += to_numpy(it)
            conv[go] &= to_numpy(c)
    else:
        # cv: the path on all rows down to each target's chosen λ
        res = gram_path(full_prob, q_full, yv_full, lam_x, tol=tol, max_iter=max_iter,
                        stop_index=best, flat=no_path)
        W = res["W_best"]
        n_iter += res["n_iter"]
        conv &= res["converged"]
    w_raw, b_raw = to_raw(W.T, mu_f, sig_f, ybar_f)
    return PathResult(
        weight=to_numpy(w_raw),
        bias=to_numpy(b_raw),
        lam=lam,
        lambdas=lambdas,
        val_mse_path=val_path,
        val_mse=val_path[rows, best],
        n_iter=n_iter,
        converged=conv,
        n_rows=np.full(T, full_stats.n, dtype=np.int64),
        solver="gram",
        info={"seconds": time.perf_counter() - t0, "method": full_prob.method},
    )


def flat_targets(st: SufficientStats, cols, ref: SufficientStats | None = None) -> np.ndarray:
    """Targets [T] bool among ``cols`` whose outputs are constant on the rows of ``st``, up
    to the rounding of the sums they come from: Σy² − (Σy)²/n ≤ 16γ_N·Σy² summed over the
    ``ref`` rows (N of them; default ``st``'s own), γ_N = Nu/(1 − Nu), u = 2⁻⁵³.

    Why that bound: margins are float32, so their squares are exact in float64, and any order
    of summation of N terms errs by at most γ_N times the sum of their magnitudes (Higham,
    Accuracy and Stability §4.2). Σy² and (Σy)²/n then err by at most γ_N·Σy² and 2γ_N·Σy²
    (Cauchy–Schwarz), and a CV training set's sums (all rows minus a fold, n ≥ N/2) by at most
    about 8γ_N·Σy²; the rule takes twice that. Below it the data cannot tell a spread from
    rounding, and the LASSO answer is w = 0 at every λ (bias = the mean): no path."""
    ref = st if ref is None else ref
    xp = st.xp
    N = float(ref.n)
    u = 2.0**-53
    gam = N * u / (1 - N * u)
    spread = st.syy[cols] - st.sy[cols] ** 2 / st.n
    return to_numpy(spread <= 16 * gam * xp.abs(ref.syy[cols]))


def _std_targets(st: SufficientStats, cols):
    """Standardised (Q-free) target statistics of targets ``cols``: (None, q, yv, mu, σ, ȳ)."""
    xp = st.xp
    mu = st.mu
    sigma = st.sigma
    inv = xp.where(sigma > 0, 1.0 / xp.where(sigma > 0, sigma, 1.0), 0.0)
    sy = st.sy[cols]
    Cc = st.C[:, cols] - xp.outer(st.s, sy) / st.n
    q = Cc * (inv[:, None] / st.n)
    yv = xp.maximum(st.syy[cols] - sy**2 / st.n, 0.0) / st.n
    return None, q, yv, mu, sigma, sy / st.n


def _std_gram(st: SufficientStats, fast: bool = False):
    """Q = D⁻¹(G − s sᵀ/n)D⁻¹/n (float64); with ``fast`` also (Q32, offmax): its float32 copy
    and max_{j≠k}|Q_jk|. One pass over G in row tiles (no d × d temporaries)."""
    Q, Q32, offmax = _std_tiles(st.G, st.s, st.n, st.sigma, keep64=True, want32=fast)
    return (Q, Q32, offmax) if fast else Q


def _std_tiles(G, s, n, sigma, *, keep64=True, want32=False, tile=32):
    Q, Q32 = _std_empty(get_namespace(G), G.shape[0], keep64, want32)
    offmax = _std_rows(G, s, n, sigma, Q, Q32, 0, G.shape[0], tile=tile)
    return Q, Q32, offmax


def _std_empty(xp, d: int, keep64: bool, want32: bool):
    """Uninitialised (Q float64, Q32) of d × d, None where not wanted."""
    return (xp.empty((d, d)) if keep64 else None,
            xp.empty((d, d), dtype=xp.float32) if want32 else None)


def _std_rows(G, s, n, sigma, Q, Q32, r0, r1, tile=32) -> float:
    """Rows [r0, r1) of Q = D⁻¹(G − s sᵀ/n)D⁻¹/n into ``Q`` (float64) and/or ``Q32``, in row
    tiles (no d × d temporaries); returns max_{j≠k}|Q_jk| over those rows (with ``Q32``:
    its float32 entries, rounded up)."""
    xp = get_namespace(G)
    if G.flags.f_contiguous and not G.flags.c_contiguous:
        G = G.T  # symmetric: the C-ordered view, so row tiles are contiguous (3× faster)
    inv = xp.where(sigma > 0, 1.0 / xp.where(sigma > 0, sigma, 1.0), 0.0)
    sn = s / n
    col = inv / n
    offs = []
    for a in range(r0, r1, tile):
        b = min(a + tile, r1)
        R = G[a:b] - s[a:b, None] * sn[None, :]
        R *= inv[a:b, None]
        R *= col[None, :]
        if Q is not None:
            Q[a:b] = R
        if Q32 is not None:
            Q32[a:b] = R
            ii = xp.arange(b - a)
            R[ii, ii + a] = 0.0
            offs.append(xp.abs(R).max())
    if Q32 is None or not offs:
        return 0.0
    return float(xp.max(xp.stack(offs))) * (1 + 2.0**-23)


def _build_grams(specs, threads: int):
    """The standardised Grams of ``specs`` [(stats, σ, keep64, want32)]: a list of (Q, Q32,
    offmax). Memory-bound passes (on a fresh machine dominated by first touches of new
    pages), run as equal row ranges on local threads so that no thread gets two matrices
    while another idles."""
    out, jobs = [], []
    for st, sigma, keep64, want32 in specs:
        d = st.G.shape[0]
        Q, Q32 = _std_empty(st.xp, d, keep64, want32)
        out.append((Q, Q32))
        parts = max(1, min(threads, d // 256))
        cuts = [(k * d) // parts for k in range(parts + 1)]
        jobs += [(_std_rows, st.G, st.s, st.n, sigma, Q, Q32, a, b)
                 for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
        out[-1] += (len(jobs) - parts, len(jobs))
    offs = _parallel_map(jobs, threads)
    return [(Q, Q32, max(offs[i:j], default=0.0)) for Q, Q32, i, j in out]


def solve_from_stats(
    groups: list[SufficientStats],
    split: Split,
    options: PathOptions = PathOptions(),
    *,
    method: str | None = None,
    client=None,
) -> PathResult:
    """Path, selection and refit for all targets from the per-group statistics of
    :func:`dmdask.fit.stats.compute_stats` (groups as :func:`group_bounds_for` makes them)."""
    method = method or options.extra.get("method") or config.get("solve.gram-method", "fista")
    if method not in ("cd", "fista"):
        raise UnsupportedTargets(f"unknown Gram method {method!r} (cd | fista)")
    cd_block = int(options.extra.get("cd_block", 64))
    full = SufficientStats.sum(groups)
    if split.kind == "holdout":
        tr_stats = [groups[1]]
        val_stats = [groups[0]]
    else:
        tr_stats = [full - g for g in groups]
        val_stats = list(groups)
    fast = options.tol >= 1e-7

    # the standardised Grams: training set(s) and all rows (float64, and float32 for the
    # GEMMs when ``fast``), validation (float32 when ``fast``)
    specs = [*((st, st.sigma, True, fast) for st in (*tr_stats, full)),
             *((vst, st.sigma, not fast, fast) for st, vst in zip(tr_stats, val_stats,
                                                                  strict=True))]
    grams = _build_grams(specs, _local_threads() if client is None else 1)
    probs = []
    for st, (Q, Q32, offmax) in zip((*tr_stats, full), grams, strict=False):
        p = _Problem(Q, method, cd_block)
        if fast:
            p._Q32, p._offmax = Q32, offmax
        probs.append(p.set_gauge(st.sigma))
    tr_probs, full_prob = probs[:-1], probs[-1]
    val_grams = [_ValGram(vst, st.sigma, fast, Q=Q32 if fast else Q)
                 for st, vst, (Q, Q32, _) in zip(tr_stats, val_stats, grams[len(probs):],
                                                 strict=True)]
    ratio = float(options.extra.get("stack_ratio", config.get("solve.gram-stack-ratio", 0.005)))
    newton_every = int(options.extra.get("newton_every",
                                         config.get("solve.gram-newton-every", 3)))
    for p in (*tr_probs, full_prob):
        p.stack_ratio = ratio
        # float32 GEMM for the full gradient (KKT check, strong rule) where the tolerance
        # allows it; coordinates within 1e-4·λ of the KKT boundary then join the working set
        p.fast = fast
        p.newton_every = newton_every
        p.kkt_margin = 1e-4 if p.fast else 0.0
    T = full.n_targets
    tb = int(options.target_block_size or config.get("solve.target-block-size", 512))
    lanes = 1
    if client is None:
        # local threads: one target block per thread (the d × T elementwise work of the path
        # is single-threaded NumPy; blocks of targets run in parallel, BLAS one thread each)
        lanes = _local_threads()
        if lanes > 1 and T >= 2 * _MIN_PARALLEL_BLOCK:
            tb = min(tb, max(-(-T // lanes), _MIN_PARALLEL_BLOCK))
    blocks = [np.arange(i, min(i + tb, T)) for i in range(0, T, tb)]
    # the BLAS threads each block's GEMMs get set the CSR/GEMM break-even in matvec
    blas = lane_blas_threads(client, min(lanes, len(blocks)))
    for p in (*tr_probs, full_prob):
        p.blas_threads = blas
    opts = {
        "n_lambdas": options.n_lambdas, "lambda_ratio": options.lambda_ratio, "tol": options.tol,
        "max_iter": options.max_iter, "early_stop": options.early_stop,
        "min_lams_to_try": options.min_lams_to_try,
    }
    if len(blocks) == 1 and client is None:
        parts = [_solve_block(tr_probs, tr_stats, val_stats, full_prob, full, blocks[0],
                              split.kind, opts, val_grams)]
    else:
        shared = (tr_probs, tr_stats, val_stats, full_prob, full, val_grams)
        if client is not None:
            shared = client.scatter(shared, broadcast=True)
            # one key, sent once per worker
            futs = [client.submit(_solve_block_shared, shared, b, split.kind, opts, pure=False)
                    for b in blocks]
            if options.progress:
                from distributed import as_completed
                from tqdm.auto import tqdm

                for _ in tqdm(as_completed(futs), total=len(futs), desc="lasso paths"):
                    pass
            parts = client.gather(futs)
        else:
            sh = dask.delayed(shared, traverse=False)
            tasks = [dask.delayed(_solve_block_shared, pure=True)(sh, b, split.kind, opts)
                     for b in blocks]
            with blas_per_lane(None, min(lanes, len(blocks))):
                parts = list(compute(tasks, progress=options.progress, desc="lasso paths"))
    res = PathResult.concat(parts)
    res.solver = "gram"
    res.info = {"method": method, "blocks": len(blocks),
                "seconds": [p.info.get("seconds") for p in parts]}
    return res.validate()


_MIN_PARALLEL_BLOCK = 64


def _parallel_map(jobs, threads: int):
    """``[f(*args) for f, *args in jobs]`` on up to ``threads`` threads (NumPy releases the
    GIL in the d × d passes these jobs make)."""
    if threads <= 1 or len(jobs) <= 1:
        return [f(*a) for f, *a in jobs]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(threads, len(jobs))) as ex:
        return list(ex.map(lambda j: j[0](*j[1:]), jobs))


def _local_threads() -> int:
    """Worker threads of the local dask scheduler (``num_workers``, else the cores)."""
    import os

    n = dask.config.get("num_workers", None)
    return int(n) if n else (os.cpu_count() or 1)


def _solve_block_shared(shared, cols, split_kind, opts):
    return _solve_block(*shared[:5], cols, split_kind, opts, *shared[5:])


class GramSolver:
    """LASSO paths of all targets at once from one pass of sufficient statistics.

    Requires that every target use the same rows: no NaN outputs, no training-example targets
    (those go to the streaming solver; ``fit_datamodels(solver="auto")`` routes them)."""

    name = "gram"
    per_target_rows = False
    selections = ("holdout", "cv")

    def __init__(self, method: str | None = None):
        self.method = method

    def fit(self, X, Y, *, split: Split = Split(), options: PathOptions = PathOptions(),
            target_train_index=None, client=None) -> PathResult:
        if target_train_index is not None and np.any(np.asarray(target_train_index) >= 0):
            bad = np.flatnonzero(np.asarray(target_train_index) >= 0)
            raise UnsupportedTargets(
                f"the Gram solver cannot fit training-example targets (eq. 9: rows differ per "
                f"target); targets {bad[:10].tolist()}{'…' if bad.size > 10 else ''} — use "
                "solver='saga' or 'auto'")
        groups = self._stats(X, Y, split, options, client, "raise")
        return solve_from_stats(groups, split, options, method=self.method, client=client)

    def fit_finite(self, X, Y, *, split: Split = Split(), options: PathOptions = PathOptions(),
                   client=None) -> tuple[np.ndarray, PathResult | None]:
        """:meth:`fit` for the targets whose outputs are all finite, found in the same pass:
        returns (their positions in Y's columns, their result; None where there are none).
        The others (NaN/inf outputs: rows differ per target) need a per-target-rows solver."""
        groups = self._stats(X, Y, split, options, client, "mark")
        bad = to_numpy(groups[0].nonfinite)
        for g in groups[1:]:
            bad = bad | to_numpy(g.nonfinite)
        good = np.flatnonzero(~bad)
        if good.size == 0:
            return good, None
        if good.size < bad.size:
            xg = groups[0].xp.asarray(good)
            groups = [g.take_targets(xg) for g in groups]
        return good, solve_from_stats(groups, split, options, method=self.method, client=client)

    @staticmethod
    def _stats(X, Y, split, options, client, nonfinite):
        bounds = group_bounds_for(X.shape[0], split)
        # XᵀY as a float32 GEMM (block-mean shifted, float64 accumulation) where the
        # tolerance allows it: ~1e-7 relative error on the centred statistics
        c_dtype = "float32" if options.tol >= 1e-7 else None
        return compute_stats(X, Y, bounds, row_block_size=options.row_block_size,
                             client=client, progress=options.progress, c_dtype=c_dtype,
                             nonfinite=nonfinite)
