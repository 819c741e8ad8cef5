"""The standardised problem of one training set, shared by all target blocks: its Gram (and
float32 copy), the products with sparse iterates and their rounding-error bound, the
fixed-size gauge, and the per-λ dispatch of each target to an inner route (:mod:`.union`,
:mod:`.stacked`, :mod:`.masked`)."""

from __future__ import annotations

import numpy as np

from ....backend import get_namespace, to_numpy
from .arrays import _csr, _power_L
from .masked import solve_masked
from .stacked import solve_stacked
from .union import solve_union


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
        # cost rule in masked.py spaces the steps after that). Measured:
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
            W[keep] = self.shift_along(W[keep], vv)
            return W
        return self.shift_along(W, v)

    def shift_along(self, W, v):
        """:meth:`gauge_shift` with the null direction ``v`` given on W's rows."""
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
                Wb, Cb, it, cb = solve_masked(self, q[:, b], yv[b], lam[b], W[:, b],
                                                    A[:, b], tol, max_iter, C=C[:, b])
            else:
                Wb, Cb, it, cb = solve_union(self, q[:, b], yv[b], lam[b], W[:, b],
                                                   C[:, b], lam_prev[b], tol, max_iter)
            W[:, b] = Wb
            C[:, b] = Cb
            its[b] = it
            conv[b] = cb
        sm = np.flatnonzero(small)
        if sm.size:
            s_ = xp.asarray(sm)
            Ws, Cs, it, cs = solve_stacked(self, q[:, s_], yv[s_], lam[s_], W[:, s_],
                                                 C[:, s_], A[:, s_], tol, max_iter)
            W[:, s_] = Ws
            C[:, s_] = Cs
            its[s_] = it
            conv[s_] = cs
        return W, C, its, conv

    # A column gets its next product in float64 where it will most likely pass the next
    # check: its gap was within `_PREDICT` of the threshold and it is converging fast (the
    # last two checks' contraction c ≤ ½), or, converging slowly, extrapolating c puts it
    # under the threshold. A right guess saves the float32 product before the certifying
    # one; a wrong one costs a float64 product in place of a float32 one. Measured in GEMM
    # work (columns × rows): −10% on the path at 50,000 × 5,000 × 500 (1,045 of 1,196
    # predicted columns passed); −4% on a slowly converging fixed-size problem, where the
    # threshold alone (+27%) guesses wrong most of the time.
    _PREDICT = 10.0

    def predict_exact(self, ratio, ratio0):
        """Columns [T] whose next product should be float64 (``ratio``, ``ratio0``: gap /
        threshold at the last two checks, inf where not yet checked)."""
        xp = self.xp
        seen = xp.isfinite(ratio0)
        r = xp.where(seen, ratio, 0.0)  # before a second check: c = 0 (ratio may be inf)
        c = r / xp.where(seen, ratio0, 1.0)
        return (ratio <= self._PREDICT) & ((c <= 0.5) | (r * c <= 1.0))

    def matvec_mixed(self, W, exact):
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
