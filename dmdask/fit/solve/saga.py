"""Streaming variance-reduced minibatch steps (SAGA's SVRG form): the LASSO path for many
targets over row blocks of the masks, out of core and on the cluster.

This is the solver for targets whose rows differ (REFERENCE.md §1.1 eq. 9 and NaN margins) and
the faithful fast_l1-style baseline (REFERENCE.md §1.6) the Gram solver is measured against.

What it solves, per target t (columns of one GEMM), on standardised features
X̃ = (X − μ_t)/σ_t, with μ_t, σ_t of the target's *own* rows of the split the solve uses (so a
target with NaN margins or eq. 9 rows gets exactly the fit on its rows alone)::

    min_{w̃, b̃}  (1/(2 n_t)) Σ_i m_it (x̃_iᵀw̃ + b̃ − y_it)² + λ_t ‖w̃‖₁

with the row weight m_it ∈ {0, 1}: 0 where ``Y[i, t]`` is NaN, and, for a target that is
training example j (``target_train_index[t] = j ≥ 0``), 0 where ``X[i, j] = 1`` (paper eq. 9;
column j is then constant on the target's rows, σ_jt = 0, and ``w_j = 0``). ``n_t = Σ_i m_it``.

How (one *pass* = one sweep over the row blocks; neither masks nor margins are ever whole in
memory, and nothing held grows with models × targets):

* **Statistics pass.** The shared pass (:func:`dmdask.fit.stats.compute_stats`) on the outputs
  [m | m∘y] (2T columns built per row block): its column sums, XᵀY and Σy, Σy² are per target
  n_t, Σmy, Σmy², Xᵀm and Xᵀ(m∘y); its exact XᵀX tells fixed-size sampling apart.
* **Epochs** (§1.6 with SAGA's table replaced by a snapshot, as SVRG does, so the state is
  O(d × targets) instead of a models × targets table), per step for all active targets::

      δ = m_B∘(X̃_B(w̃ − w̃_s) + b̃ − b̃_s),  g = c_t X̃_Bᵀδ + ḡ_s,  w̃ = soft(w̃ − lr_t g, lr_t λ_t)

  where (w̃_s, b̃_s) is the last snapshot and ḡ_s the exact gradient of the smooth part there,
  and c_t = n/(|B| n_t) (each row's loss is scaled by n/n_t so that the mean over all n rows
  is the target's objective). X̃ is never formed: X̃v = X(v/σ) − μᵀ(v/σ) and
  X̃ᵀz = (Xᵀz − μ Σz)/σ, so the GEMMs run on the 0/1 block cast to float. A pass is a chain
  of tasks, one per row block, that carries the state from block to block; each task reads
  its block (masks, margins) where it runs — on the workers of a ``distributed`` client when
  one is given — so the coordinator holds only the state, and a task one row block
  (setting ``dmdask.solve.row-block-size``) of masks and margins of one target block
  (``dmdask.solve.target-block-size``). Target blocks are independent: on a cluster their
  chains run side by side. Row blocks are
  visited in a random order each epoch and rows are shuffled within a block (block-level
  shuffling, as out-of-core loaders do); the order depends on the seed and the row-block
  size, never on the storage chunking or the workers. Default batch size
  B = max(16, min(d, 2048, n/32)): B ≈ d balances L_B against steps per epoch, and at least
  ~32 batches per epoch.
* **Step size.** ``lr_t = 1/(3 L_B · n/n_t)`` where L_B is the largest eigenvalue of
  ``[X̃_B 1]ᵀ[X̃_B 1]/|B|`` measured by power iteration on a few minibatches (×1.1 safety;
  ≈ (1 + sqrt(d/B))², §1.6). Dividing by n/n_t is the safe bound for a per-target weighted
  batch (X̃_Bᵀ diag(m) X̃_B ≼ X̃_BᵀX̃_B). Minibatches have between B and 2B rows (the
  remainder is merged, never a tiny unstable batch).
* **Stopping (not fast_l1's).** A target in the "step" phase is periodically frozen for one
  "refresh" pass: the pass computes its exact residuals, hence the exact gradient at the
  current point (the new snapshot, so the pass is not wasted) and the exact duality gap of
  §1.5. The λ is done when gap ≤ tol·‖y_c‖²/(2 n_t), the contract's relative
  tolerance (``PathOptions.tol``); the intercept is then set to its exact optimum for w̃.
  When to refresh: the first solve uses a relative trigger, ‖Δw̃‖² + Δb̃² over an epoch
  ≤ tol·Var_t(y) (fast_l1 uses an absolute eps on σ²-scaled standardised weights); later
  refreshes are planned from the observed per-epoch contraction of the gap (and a new λ
  starts with as many step epochs as the previous one needed), at most ``refresh_every``
  epochs apart (default 1: a snapshot every other pass, SVRG's usual loop, took fewer passes
  in all than longer loops and than the former SAGA table on the problems tried). A solve
  ends uncertified (``converged = False``) at ``max_epochs``
  (default 200, and at most ``options.max_iter``) or when three refreshes in a row shrank the
  gap by < 5 % (the arithmetic's floor, e.g. float32 with a tiny tol).
* **Fixed-size masks** (every row has the same number of ones, detected in the statistics
  pass): X̃σ = 0, so w̃ + τσ changes only the L1 term; at each refresh w̃ jumps to the
  L1-minimal point of that line (a weighted median, as the Gram solver does). Known limit:
  at small λ with dense solutions, the problem restricted to the active manifold is
  ill-conditioned along the near-gauge direction (curvature ~1/d), and the gap shrinks
  slowly there (a tight tol can reach ``max_epochs`` per λ: reported as not converged).
* **Path.** Per target, the shared grid (``grid.lambda_grid``) from λ_max in the standardised
  space of the training split with the target's own rows; w = 0 is exact at λ_max (certified
  from the statistics, no epoch; the first snapshot is there too). Warm starts along the
  path; the snapshot and its gradient persist between λ values. Each certified solve gets its validation MSE (raw-space model on the first
  ``holdout_size`` rows, training μ/σ) in a pass over the validation rows; optional fast_l1
  early stop (``grid.should_stop``); best λ by ``grid.select_lambda`` (ties → smaller λ).
  Targets that finished their path drop out of the GEMMs (columns compacted).
* **Refit** on all fitting rows at the chosen λ, standardised with their μ, σ, warm-started
  from the best path solution (converted to the new standardisation); its first pass is a
  refresh pass (the snapshot of the new rows).

Array module: the same code runs with NumPy or CuPy arrays (:mod:`dmdask.backend`); the
setting ``dmdask.array.backend`` chooses (``cupy`` moves each block to the device; CuPy
missing is an error, never a silent NumPy fallback), CuPy chunks force CuPy.

:func:`saga_reference` is a small literal NumPy transcription of §1.6 (one λ, in memory),
kept as a test oracle.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import dask
import dask.array as da
import numpy as np

from ... import config
from ...backend import backend_name, dask_to_backend, get_namespace, namespace, to_numpy
from ...errors import InputError
from ...scheduling import Deferred, compute, lanes
from ..stats import SufficientStats, compute_stats
from .base import PathOptions, PathResult, Split
from .grid import holdout_size, lambda_grid, select_lambda, should_stop

__all__ = [
    "SagaSolver",
    "saga_fit_lambda",
    "saga_path",
    "saga_reference",
]

# --------------------------------------------------------------------------- oracle


def saga_reference(Xs, y, lam, *, lr, batch_size, epochs, seed=0, update_bias=True):
    """Literal NumPy transcription of fast_l1's minibatch SAGA (REFERENCE.md §1.6), one λ.

    ``Xs`` (n, d) standardised features in memory, ``y`` (n,). Table and averages start at
    zero; each epoch visits a random permutation in batches of ``batch_size`` (drop_last).
    Returns (w, b). A test oracle, not a solver: fixed epochs, no stopping rule.
    """
    Xs = np.asarray(Xs, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, d = Xs.shape
    rng = np.random.default_rng(seed)
    w = np.zeros(d)
    b = 0.0
    gw = np.zeros(d)
    gb = 0.0
    A = np.zeros(n)
    B = batch_size
    for _ in range(epochs):
        perm = rng.permutation(n)
        for k in range(n // B):
            idx = perm[k * B : (k + 1) * B]
            Xb = Xs[idx]
            r = Xb @ w + b - y[idx]
            delta = r - A[idx]
            g_w = Xb.T @ delta / B + gw
            g_b = delta.sum() / B + gb
            w = w - lr * g_w
            if update_bias:
                b = b - lr * g_b
            A[idx] = r
            gw = (1 - B / n) * gw + (B / n) * g_w
            gb = (1 - B / n) * gb + (B / n) * g_b
            w = np.sign(w) * np.maximum(np.abs(w) - lr * lam, 0.0)
    return w, b


# --------------------------------------------------------------------------- row blocks


def _split_ranges(start: int, stop: int, size: int) -> list[tuple[int, int]]:
    """Contiguous ranges covering [start, stop), each of ``size`` to ``2·size − 1`` rows (the
    remainder is merged into the last one; a range shorter than ``size`` only if the whole
    span is)."""
    n = stop - start
    if n <= 0:
        return []
    k = max(1, n // size)
    edges = start + (np.arange(k + 1) * n) // k
    # sizes as even as possible: every piece within one row of n/k >= size
    return [(int(edges[i]), int(edges[i + 1])) for i in range(k)]


def _row_weights(Xb, Yb, tti, xp):
    """m (rows, T) bool for a block: finite margin, and eq. 9 exclusion."""
    M = xp.isfinite(Yb)
    cols = np.nonzero(tti >= 0)[0]
    if cols.size:
        M[:, cols] &= ~(Xb[:, tti[cols]].astype(bool))
    return M


def _load_rows(xb: Deferred, yb: Deferred, cols, tti, dtype):
    """A row block of the masks and of the targets ``cols``: (X, m, y with 0 where m = 0)."""
    Xb = xb.load()
    Yb = yb.load()
    xp = get_namespace(Xb, Yb)
    Yb = Yb[:, xp.asarray(cols)] if cols is not None else Yb
    M = _row_weights(Xb, Yb, tti, xp)
    Y0 = xp.where(M, Yb, 0).astype(dtype)
    return Xb, M, Y0, xp, int(Xb.nbytes) + int(Yb.nbytes)


class _Data:
    """The row blocks of one target block: masks ``X`` (n × d) and margins ``Y`` (n × T) as
    dask arrays, ``tti`` [T], and where the tasks over them run (``client`` or local)."""

    def __init__(self, X, Y, tti, client, xp):
        self.X, self.Y, self.tti, self.client, self.xp = X, Y, tti, client, xp
        # in-memory rows on the local scheduler: the chain runs in this thread (a thread pool
        # would add only overhead to a sequential chain whose BLAS uses every core)
        self.sync = client is None and not isinstance(X, da.Array)
        self.n, self.d = (int(v) for v in X.shape)
        self.bytes_read = 0

    def blocks(self, a, b):
        return Deferred(self.X[a:b]), Deferred(self.Y[a:b])

    def chain(self, fn, state, links: list[tuple]):
        """``state = fn(state, *link)`` for each link in order: one task per link (on the
        client's workers if any), the state travelling from task to task."""
        if self.sync:
            for link in links:
                state = fn(state, *link)
            return state
        task = dask.delayed(fn, pure=False)
        for link in links:
            state = task(state, *link)
        return compute([state], client=self.client)[0]

    def map(self, fn, items: list[tuple]) -> list:
        """``[fn(*item) for item in items]``, one task per item."""
        if self.sync:
            return [fn(*item) for item in items]
        task = dask.delayed(fn, pure=False)
        return list(compute([task(*item) for item in items], client=self.client))


# --------------------------------------------------------------------------- statistics


def _inv(sig):
    return np.where(sig > 0, 1.0 / np.where(sig > 0, sig, 1.0), 0.0)


@dataclass
class _Stats:
    """Per-target-row statistics of one row range (float64, host), read off the shared
    statistics pass run on the outputs [m | m∘y] (see :func:`_statistics`)."""

    n: int
    colsum: np.ndarray  # [d]
    n_t: np.ndarray  # [T]
    sy: np.ndarray  # [T]  Σ m y
    syy: np.ndarray  # [T]  Σ m y²
    XtM: np.ndarray  # [d, T]  Xᵀm
    XtMy: np.ndarray  # [d, T]  Xᵀ(m∘y)

    @classmethod
    def of(cls, ss: SufficientStats) -> _Stats:
        """From the statistics of the outputs [m | m∘y] (2T columns): Σm = n_t, Σm² = n_t,
        Σm∘y, Σ(m∘y)² = Σ m y² (m is 0/1), Xᵀm, Xᵀ(m∘y)."""
        ss = ss.to_numpy()
        T = ss.C.shape[1] // 2
        return cls(int(ss.n), np.asarray(ss.s, np.float64), ss.sy[:T].copy(), ss.sy[T:].copy(),
                   ss.syy[T:].copy(), ss.C[:, :T].copy(), ss.C[:, T:].copy())

    def __add__(self, o):
        return _Stats(self.n + o.n, self.colsum + o.colsum, self.n_t + o.n_t, self.sy + o.sy,
                      self.syy + o.syy, self.XtM + o.XtM, self.XtMy + o.XtMy)

    def take(self, s: int, e: int) -> _Stats:
        """The statistics of targets ``s:e``."""
        return _Stats(self.n, self.colsum, self.n_t[s:e], self.sy[s:e], self.syy[s:e],
                      self.XtM[:, s:e], self.XtMy[:, s:e])

    def mu_sigma(self):
        """Per-target μ, σ [d, T] over each target's own rows (0/1 columns: mean(X²) = μ)."""
        mu = self.XtM / np.maximum(self.n_t, 1)[None, :]
        sig = np.sqrt(np.maximum(mu - mu * mu, 0.0))
        sig[sig < 1e-12] = 0.0
        return mu, sig

    def global_mu_sigma(self):
        mu = self.colsum / max(self.n, 1)
        return mu, np.sqrt(np.maximum(mu - mu * mu, 0.0))

    @property
    def ybar(self):
        return np.where(self.n_t > 0, self.sy / np.maximum(self.n_t, 1), 0.0)

    @property
    def ssy(self):
        """‖y_c‖² per target over its rows."""
        return np.maximum(self.syy - self.n_t * self.ybar**2, 0.0)

    def xty_c(self):
        """Xᵀ m (y − ȳ) [d, T]."""
        return self.XtMy - self.XtM * self.ybar[None, :]

    def lam_max(self):
        """λ_max per target in its standardised space: max_j |X_jᵀm(y − ȳ)|/(n_t σ_j)."""
        _, sig = self.mu_sigma()
        c = np.abs(self.xty_c()) * _inv(sig)
        lm = c.max(axis=0) / np.maximum(self.n_t, 1)
        return np.where(self.n_t > 0, lm, 0.0)

    def sse_at(self, ybar):
        """Σ m (c − y)² per target for the constant model c = ``ybar`` (the path's λ_max)."""
        return np.maximum(self.syy - 2 * ybar * self.sy + ybar**2 * self.n_t, 0.0)


def _outputs_block(xb, yb, tti):
    """[m | m∘y] (rows, 2T) float64 of a row block: the outputs the statistics pass sees."""
    xp = get_namespace(xb, yb)
    M = _row_weights(xb, yb, tti, xp)
    return xp.concatenate([M.astype(xp.float64), xp.where(M, yb.astype(xp.float64), 0.0)],
                          axis=1)


def _statistics(X, Y, tti, bounds, row_block: int, client, backend: str, progress: bool):
    """The shared statistics pass (:func:`dmdask.fit.stats.compute_stats`) on the outputs
    [m | m∘y]: per group of rows the per-target-row statistics, and whether every mask has
    the same number of ones (fixed-size sampling, hence the gauge direction), read exactly
    from its XᵀX and column sums: Σ_i r_i² = Σ XᵀX and Σ_i r_i = Σ s for row sums r_i, and
    the r_i are all equal iff n Σ r_i² = (Σ r_i)²."""
    T = Y.shape[1]
    xp = namespace(backend)
    out = da.map_blocks(_outputs_block, X, Y, tti=tti, dtype=np.float64,
                        chunks=(X.chunks[0], (2 * T,)), meta=xp.empty((0, 0), np.float64))
    parts = compute_stats(X, out, bounds, row_block_size=row_block, client=client,
                          c_dtype="float64", backend=backend, progress=progress)
    n = sum(int(p.n) for p in parts)
    r2 = sum(int(round(float(to_numpy(p.G).sum(dtype=np.float64)))) for p in parts)
    r1 = sum(int(round(float(to_numpy(p.s).sum()))) for p in parts)
    return [_Stats.of(p) for p in parts], n * r2 == r1 * r1


# --------------------------------------------------------------------------- engine


@dataclass
class _Conf:
    batch_size: int
    row_block: int
    tol: float
    max_epochs: int
    refresh_every: int
    lr: float | None
    lr_scale: float
    seed: int
    dtype: Any
    keep_path: bool
    progress: bool


def _lipschitz_task(xb: Deferred, mu, sig, batch_size: int, seed: int) -> float:
    """L_B: largest eigenvalue of [X̃_B 1]ᵀ[X̃_B 1]/|B| over a few minibatches of one row
    block (power iteration), ×1.1 for safety."""
    Xb = xb.load()
    xp = get_namespace(Xb)
    rng = np.random.default_rng(seed)
    nb = Xb.shape[0]
    mu_d = xp.asarray(mu)
    inv_d = xp.asarray(_inv(sig))
    L = 0.0
    for _ in range(3):
        idx = rng.permutation(nb)[: min(batch_size, nb)]
        Xs = (Xb[xp.asarray(idx)].astype(xp.float64) - mu_d) * inv_d
        Xs = xp.concatenate([Xs, xp.ones((Xs.shape[0], 1))], axis=1)
        v = xp.asarray(rng.standard_normal(Xs.shape[1]))
        v /= xp.linalg.norm(v)
        ev = 0.0
        for _ in range(100):
            u = Xs.T @ (Xs @ v) / Xs.shape[0]
            ev_new = float(xp.linalg.norm(u))
            v = u / max(ev_new, 1e-300)
            done = abs(ev_new - ev) <= 1e-4 * ev_new
            ev = ev_new
            if done:
                break
        L = max(L, ev)
    return 1.1 * L


def _lipschitz(data: _Data, lo, hi, mu, sig, conf: _Conf, rng):
    span = _split_ranges(lo, hi, conf.row_block)
    a, b = span[int(rng.integers(len(span)))]
    (L,) = data.map(_lipschitz_task, [(data.blocks(a, b)[0], mu, sig, conf.batch_size,
                                       int(rng.integers(2**63)))])
    return float(L)


@dataclass
class _PassConst:
    """What every row block of one pass shares (arrays of the pass's array module)."""

    cols: np.ndarray  # block columns of the compacted targets
    tti: np.ndarray
    lo: int
    n: int
    batch_size: int
    dtype: Any
    stepd: Any  # [T] bool: columns taking steps (the others are frozen for a refresh)
    refrf: Any  # [T] 1.0 for refresh columns
    lr_eff: Any
    thr: Any
    inv_nt: Any
    mu: Any
    inv: Any
    gw: Any  # gradient of the smooth part at the snapshot (SVRG's full gradient)
    gb: Any
    Wsr: Any  # snapshot weights in raw-mask space (w̃_s/σ)
    cs: Any  # snapshot offset b̃_s − μᵀ(w̃_s/σ)
    any_refr: bool


def _pass_task(state: dict, xb: Deferred, yb: Deferred, k: _PassConst, seed: int) -> dict:
    """One row block of a pass: SVRG steps for step columns, the frozen exact residuals of
    refresh columns accumulated. A link of the pass's sequential chain."""
    Xb, Mb, Yb, xp, nbytes = _load_rows(xb, yb, k.cols, k.tti, k.dtype)
    st = {key: (v.copy() if hasattr(v, "copy") else v) for key, v in state.items()}
    W, b = st["W"], st["b"]
    dt = k.dtype
    nb = Xb.shape[0]
    perm = np.random.default_rng(seed).permutation(nb)
    mu, inv = k.mu, k.inv
    for p0, p1 in _split_ranges(0, nb, min(k.batch_size, nb)):
        idx = xp.asarray(perm[p0:p1])
        Xm = Xb[idx].astype(dt)
        Mg, Yg = Mb[idx], Yb[idx]
        # z = m∘(r − r_s) for step columns (y cancels), z = m∘r for refresh columns, with
        # r = X̃w̃ + b̃ − y = X(w̃/σ) − μᵀ(w̃/σ) + b̃ − y: X̃ is never formed
        Wr = W * inv
        c = b - (mu * Wr).sum(axis=0)
        V = xp.where(k.stepd, Wr - k.Wsr, Wr)
        Z = Xm @ V
        Z += xp.where(k.stepd, c - k.cs, c)
        Z -= Yg * k.refrf
        Z *= Mg
        zs = Z.sum(axis=0)
        G = (Xm.T @ Z - mu * zs) * inv  # X̃ᵀz
        cc = (k.n / (p1 - p0)) * k.inv_nt
        W -= k.lr_eff * (G * cc + k.gw)
        b -= k.lr_eff * (zs * cc + k.gb)
        W = _soft(W, k.thr, xp)
        if k.any_refr:
            Z64 = Z.astype(xp.float64)
            st["accG"] += G
            st["S1"] += Z64.sum(axis=0)
            st["S2"] += (Z64 * Z64).sum(axis=0)
            st["Sy"] += (Z64 * Yg).sum(axis=0)
    st["W"], st["b"] = W, b
    st["bytes"] += nbytes
    return st


def _val_task(xb: Deferred, yb: Deferred, cols, tti, Wr, br, dtype):
    """Σ m (Xw + b − y)² per column over one validation block, and the bytes read."""
    Xb, Mb, Yb, xp, nbytes = _load_rows(xb, yb, cols, tti, dtype)
    R = Xb.astype(dtype) @ Wr + br - Yb
    R *= Mb
    return (R.astype(xp.float64) ** 2).sum(axis=0), nbytes  # device: moved here by the caller


def _soft(W, tau, xp):
    return xp.sign(W) * xp.maximum(xp.abs(W) - tau, 0.0)


class _Engine:
    """Variance-reduced minibatch steps on rows [lo, hi) for a block of targets, each with its
    own λ. The state is O(d × targets): weights, the snapshot and its full gradient; the rows
    are visited by a chain of tasks, one per row block (:func:`_pass_task`).

    Per-target arrays are *compacted*: column j is target ``cols[j]`` of the block; finished
    targets are dropped from the GEMMs by :meth:`compact`. ``on_certified(which, engine)`` is
    called after a pass with the compacted columns whose λ solve finished and returns, per
    column, the next λ or NaN (path done).
    """

    _COMPACT_HOST = ("cols", "lam", "active", "refresh", "epochs_lam", "since_refresh", "passes",
                     "lr", "need", "gap_lam", "steps_gap", "rate", "steps_lam", "stall", "ybar", "ssy",
                     "var", "nt_h")
    _COMPACT_DEV = ("W", "b", "Ws", "bs", "gw", "gb", "mu", "inv", "n_t")

    def __init__(self, data: _Data, lo, hi, st: _Stats, W0, b0, lam0, conf, xp, rng,
                 gauge=False):
        self.data, self.xp, self.conf, self.rng = data, xp, conf, rng
        self.gauge = gauge
        self.lo, self.hi, self.n = lo, hi, hi - lo
        dt = conf.dtype
        T = W0.shape[1]
        mu, sig = st.mu_sigma()
        self.mu = xp.asarray(mu, dtype=dt)
        self.inv = xp.asarray(_inv(sig), dtype=dt)
        self.ybar = st.ybar.copy()
        self.ssy = st.ssy.copy()
        self.nt_h = np.maximum(st.n_t, 1).astype(np.float64)
        self.var = self.ssy / self.nt_h
        self.n_t = xp.asarray(self.nt_h, dtype=dt)
        self.cols = np.arange(T)
        self.W = xp.asarray(W0, dtype=dt)
        self.b = xp.asarray(b0, dtype=dt)
        self.lam = np.asarray(lam0, dtype=np.float64).copy()
        self.active = st.n_t > 0
        self.refresh = np.ones(T, bool)  # phase: True = frozen refresh pass
        # the snapshot (w̃_s, b̃_s) and the gradient of the smooth part there: set by a refresh
        self.Ws = xp.zeros(W0.shape, dtype=dt)
        self.bs = xp.zeros(T, dtype=dt)
        self.gw = xp.zeros(W0.shape, dtype=dt)
        self.gb = xp.zeros(T, dtype=dt)
        self.epochs_lam = np.zeros(T, np.int64)
        self.since_refresh = np.zeros(T, np.int64)
        self.passes = np.zeros(T, np.int64)
        self.need = np.zeros(T, np.int64)  # step epochs before the next refresh (0: Δ rule)
        self.gap_lam = np.full(T, np.nan)  # last relative gap at the current λ
        self.steps_gap = np.zeros(T, np.int64)  # step epochs between the last two refreshes
        self.rate = np.full(T, 0.3)  # estimated per-epoch contraction of the gap
        self.steps_lam = np.zeros(T, np.int64)
        self.stall = np.zeros(T, np.int64)  # refreshes in a row without real progress
        # results per original column (never compacted)
        self.ok = np.ones(T, bool)
        self.gap_last = np.full(T, np.nan)
        self.W_final = np.zeros((W0.shape[0], T))
        self.b_final = np.asarray(b0, dtype=np.float64).copy()
        self.passes_final = np.zeros(T, np.int64)
        self.total_passes = 0
        # step size (REFERENCE §1.6): lr = 1/(3 L_B), per target × n_t/n
        if conf.lr is not None:
            self.L_B, base = float("nan"), float(conf.lr)
        else:
            gmu, gsig = st.global_mu_sigma()
            self.L_B = _lipschitz(data, lo, hi, gmu, gsig, conf, rng)
            base = conf.lr_scale / (3.0 * self.L_B)
        self.lr_base = base
        self.lr = base * np.where(st.n_t > 0, st.n_t / self.n, 1.0)

    def init_snapshot_at_null(self, st: _Stats):
        """Snapshot at w = 0, b = ȳ and its gradient, from the statistics (no pass needed)."""
        xp, dt = self.xp, self.conf.dtype
        self.Ws[...] = 0.0
        self.bs[...] = xp.asarray(self.ybar, dtype=dt)
        _, sig = st.mu_sigma()
        gw0 = -st.xty_c() * _inv(sig) / self.nt_h[None, :]  # X̃ᵀm(ȳ − y)/n_t
        self.gw[...] = xp.asarray(gw0, dtype=dt)
        self.gb[...] = 0.0
        self.refresh[:] = False

    def compact(self):
        keep = np.nonzero(self.active)[0]
        if keep.size == self.active.size:
            return
        kd = self.xp.asarray(keep)
        for name in self._COMPACT_DEV:
            a = getattr(self, name)
            setattr(self, name, a[..., kd] if a.ndim == 1 else a[:, kd])
        for name in self._COMPACT_HOST:
            setattr(self, name, getattr(self, name)[keep])

    def std_cols(self, which):
        """Standardised (w̃ [d, k], b̃ [k]) of compacted columns ``which`` (host float64)."""
        wd = self.xp.asarray(which)
        return (to_numpy(self.W[:, wd].astype(self.xp.float64)),
                to_numpy(self.b[wd].astype(self.xp.float64)))

    def raw_cols(self, which):
        """Raw-space (w [d, k], b [k]) of compacted columns ``which`` (device, float64)."""
        xp = self.xp
        wd = xp.asarray(which)
        Wr = self.W[:, wd].astype(xp.float64) * self.inv[:, wd]
        br = self.b[wd].astype(xp.float64) - (self.mu[:, wd] * Wr).sum(axis=0)
        return Wr, br

    def harvest(self, which):
        oc = self.cols[which]
        w, b = self.std_cols(which)
        self.W_final[:, oc] = w
        self.b_final[oc] = b
        self.passes_final[oc] = self.passes[which]

    def run_pass(self, on_certified):
        """One epoch over rows [lo, hi): steps for "step" columns, a frozen exact pass for
        "refresh" columns; then the stopping rules and certification. The row blocks are
        visited in a random order by a chain of tasks (on ``client``'s workers if given) that
        carries the d × T state from block to block; only the state is held here."""
        xp, conf = self.xp, self.conf
        dt = conf.dtype
        d, T = self.W.shape
        act = self.active
        step = act & ~self.refresh
        refr = act & self.refresh
        mu, inv = self.mu, self.inv
        Wsr = self.Ws * inv
        any_refr = bool(refr.any())
        k = _PassConst(
            cols=self.cols.copy(), tti=self.data.tti[self.cols], lo=self.lo, n=self.n,
            batch_size=conf.batch_size, dtype=dt, stepd=xp.asarray(step),
            refrf=xp.asarray(refr, dtype=dt),
            lr_eff=xp.asarray(np.where(step, self.lr, 0.0), dtype=dt),
            thr=xp.asarray(np.where(step, self.lr * self.lam, 0.0), dtype=dt),
            inv_nt=1.0 / self.n_t, mu=mu, inv=inv, gw=self.gw, gb=self.gb, Wsr=Wsr,
            cs=self.bs - (mu * Wsr).sum(axis=0), any_refr=any_refr)
        W_prev, b_prev = self.W, self.b
        state = dict(W=self.W, b=self.b, bytes=0)
        if any_refr:
            state.update(accG=xp.zeros((d, T), dtype=xp.float64),
                         S1=xp.zeros(T, dtype=xp.float64), S2=xp.zeros(T, dtype=xp.float64),
                         Sy=xp.zeros(T, dtype=xp.float64))
        blocks = _split_ranges(self.lo, self.hi, conf.row_block)
        order = self.rng.permutation(len(blocks))
        seeds = self.rng.integers(2**63, size=len(blocks))
        kd = k if self.data.sync else dask.delayed(k, traverse=False)  # shipped once
        state = self.data.chain(_pass_task, state, [
            (*self.data.blocks(*blocks[j]), kd, int(s)) for j, s in zip(order, seeds,
                                                                         strict=True)])
        self.data.bytes_read += state["bytes"]
        self.W, self.b = state["W"], state["b"]
        self.total_passes += 1
        self.passes[act] += 1
        self.epochs_lam[act] += 1
        # step columns: the relative-change rule or the planned count triggers a refresh
        dW = to_numpy(((self.W - W_prev).astype(xp.float64) ** 2).sum(axis=0))
        db = to_numpy((self.b - b_prev).astype(xp.float64) ** 2)
        self.since_refresh[step] += 1
        self.steps_lam[step] += 1
        by_delta = (self.need == 0) & ((dW + db) <= conf.tol * np.maximum(self.var, 1e-300))
        by_plan = (self.need > 0) & (self.since_refresh >= self.need)
        trig = step & (by_delta | by_plan | (self.since_refresh >= conf.refresh_every))
        self.steps_gap[step] = self.since_refresh[step]
        certified = np.zeros(T, bool)
        if any_refr:
            certified = self._certify(refr, state["accG"], state["S1"], state["S2"],
                                      state["Sy"])
        # a λ solve ends uncertified at the epoch cap, or when the gap stopped shrinking
        # (the floor of the arithmetic, e.g. float32 with a tiny tol)
        capped = act & ~certified & ((self.epochs_lam >= conf.max_epochs) | (self.stall >= 3))
        if capped.any():
            self.ok[self.cols[capped]] = False
            certified |= capped
        self.refresh[trig] = True
        self.refresh[certified] = False
        if certified.any():
            which = np.nonzero(certified)[0]
            nxt = on_certified(which, self)
            for j, lam_next in zip(which, nxt, strict=True):
                self.epochs_lam[j] = 0
                self.since_refresh[j] = 0
                self.need[j] = min(max(self.steps_lam[j], 1), conf.refresh_every)
                self.steps_lam[j] = 0
                self.stall[j] = 0
                self.gap_lam[j] = np.nan
                if np.isnan(lam_next):
                    self.active[j] = False
                else:
                    self.lam[j] = lam_next
            done = which[~self.active[which]]
            if done.size:
                self.harvest(done)

    def _certify(self, refr, accG, S1, S2, Sy):
        """After a refresh pass: the exact gradient (the new snapshot's) and the duality gap
        (REFERENCE §1.5)."""
        xp, conf, dt = self.xp, self.conf, self.conf.dtype
        rj = np.nonzero(refr)[0]
        rd = xp.asarray(rj)
        nt = self.nt_h
        self.gw[:, rd] = (accG[:, rd] / nt[rj]).astype(dt)
        self.gb[rd] = (S1[rd] / nt[rj]).astype(dt)
        if self.gauge:
            self._gauge_shift(rj)
        S1h, S2h, Syh = to_numpy(S1), to_numpy(S2), to_numpy(Sy)
        rbar = S1h / nt
        rc2 = np.maximum(S2h - S1h * rbar, 0.0)  # ‖ρ_c‖², ρ = −r centred on the target's rows
        rcyc = S1h * self.ybar - Syh  # ρ_cᵀy_c
        # X̃ᵀm = 0 (per-target standardisation), so X̃_cᵀρ_c = −X̃ᵀ(m∘r)
        Xr_inf = to_numpy(xp.abs(accG).max(axis=0))
        l1 = to_numpy(xp.abs(self.W.astype(xp.float64)).sum(axis=0))
        lam = self.lam
        P = rc2 / (2 * nt) + lam * l1
        with np.errstate(invalid="ignore", divide="ignore"):
            s = np.maximum(nt * lam, Xr_inf)
            D = np.where(s > 0, -(nt * lam**2 / 2) * rc2 / s**2 + lam * rcyc / s, 0.0)
        scale = np.maximum(self.ssy / (2 * nt), 1e-300)
        grel = (P - D) / scale
        cert = refr & (grel <= conf.tol)
        self.gap_last[self.cols[rj]] = grel[rj]
        # the intercept goes to its exact optimum for w̃ (the gradient in b is then 0)
        jc = np.nonzero(cert)[0]
        if jc.size:
            cd = xp.asarray(jc)
            sd = xp.asarray(rbar[jc], dtype=dt)
            self.b[cd] -= sd
            self.gb[cd] = 0.0
        # the refreshed columns' current point is the new snapshot (gw, gb were computed at it;
        # the gauge and intercept moves above leave the residuals' gradient unchanged)
        self.Ws[:, rd] = self.W[:, rd]
        self.bs[rd] = self.b[rd]
        # plan the next refresh from the observed contraction of the gap at this λ
        for j in np.nonzero(refr & ~cert)[0]:
            g_prev, k = self.gap_lam[j], self.steps_gap[j]
            if np.isfinite(g_prev) and k > 0 and 0 < grel[j] < g_prev:
                self.rate[j] = min(max((grel[j] / g_prev) ** (1.0 / k), 0.01), 0.95)
            self.stall[j] = self.stall[j] + 1 if np.isfinite(g_prev) and grel[j] > 0.95 * g_prev \
                else 0
            est = np.log(conf.tol / max(grel[j], 1e-300)) / np.log(self.rate[j])
            self.need[j] = int(min(max(np.ceil(est), 1), conf.refresh_every))
            self.gap_lam[j] = grel[j]
        self.refresh[rj] = False
        self.since_refresh[rj] = 0
        return cert

    def _gauge_shift(self, which):
        """Fixed-size masks: X̃σ = 0 on every target's rows, so w̃ → w̃ + τσ changes only the
        L1 term. The steps crawl along that flat direction (by λ·lr per step); jump to the
        L1-minimal point instead: τ = −(weighted median of w̃_j/σ_j, weights σ_j). The
        residuals and the snapshot's gradient are unchanged."""
        xp = self.xp
        wd = xp.asarray(which)
        W = to_numpy(self.W[:, wd].astype(xp.float64))
        inv = to_numpy(self.inv[:, wd].astype(xp.float64))
        sig = np.where(inv > 0, 1.0 / np.where(inv > 0, inv, 1.0), 0.0)
        a = np.where(sig > 0, -W / np.where(sig > 0, sig, 1.0), np.inf)
        order = np.argsort(a, axis=0)
        a_s = np.take_along_axis(a, order, axis=0)
        cw = np.cumsum(np.take_along_axis(sig, order, axis=0), axis=0)
        idx = np.argmax(cw >= cw[-1][None, :] / 2, axis=0)
        tau = a_s[idx, np.arange(W.shape[1])]
        tau = np.where(np.isfinite(tau), tau, 0.0)
        if np.any(tau != 0):
            self.W[:, wd] = xp.asarray(W + sig * tau[None, :], dtype=self.conf.dtype)

    def run(self, on_certified):
        """Passes until every column is done; finished columns are compacted away."""
        inactive = np.nonzero(~self.active)[0]
        if inactive.size:
            self.harvest(inactive)
        self.compact()
        t_last = time.perf_counter()
        while self.active.size and self.active.any():
            self.run_pass(on_certified)
            if (~self.active).sum() >= max(1, self.active.size // 4):
                self.compact()
            if self.conf.progress and time.perf_counter() - t_last > 5:
                t_last = time.perf_counter()
                print(f"saga: pass {self.total_passes}, {int(self.active.sum())} targets "
                      "active", flush=True)


# --------------------------------------------------------------------------- drivers


_EXTRA_KEYS = {"batch_size", "max_epochs", "refresh_every", "lr", "lr_scale", "seed", "dtype",
               "keep_path"}


def _conf(options: PathOptions, d: int, n_fit: int) -> _Conf:
    ex = dict(options.extra or {})
    unknown = set(ex) - _EXTRA_KEYS
    if unknown:
        raise InputError(f"unknown SAGA options {sorted(unknown)}; known: {sorted(_EXTRA_KEYS)}")
    # B ≈ d balances L_B ≈ (1 + sqrt(d/B))² against steps per epoch; at least ~32 batches per
    # epoch, since SAGA's rate per epoch is capped by the number of batches (≈ e^{-1/4}·… )
    B = int(ex.get("batch_size") or max(16, min(d, 2048, n_fit // 32)))
    rb = options.row_block_size or int(config.get("solve.row-block-size", 8192))
    rb = max(int(rb), B)
    dtype = np.dtype(ex.get("dtype", "float64"))
    if dtype not in (np.float32, np.float64):
        raise InputError(f"SAGA dtype must be float32 or float64, not {dtype}")
    return _Conf(
        batch_size=max(B, 1), row_block=rb, tol=float(options.tol),
        max_epochs=int(min(ex.get("max_epochs", 200), options.max_iter)),
        refresh_every=int(ex.get("refresh_every", 1)), lr=ex.get("lr"),
        lr_scale=float(ex.get("lr_scale", 1.0)), seed=int(ex.get("seed", 0)), dtype=dtype,
        keep_path=bool(ex.get("keep_path", False)), progress=bool(options.progress),
    )


def _prepare(X, Y, target_train_index, row_block: int):
    """Masks and margins as dask arrays of the backend in force (CuPy chunks force CuPy), in
    row chunks of at most ``row_block`` rows and aligned (so a row block of one is a row block
    of the other), and ``target_train_index`` checked. Nothing is computed."""
    if hasattr(X, "data") and hasattr(X, "dims"):  # xarray.DataArray
        X = X.data
    if hasattr(Y, "data") and hasattr(Y, "dims"):
        Y = Y.data
    if Y.ndim == 1:
        Y = Y[:, None]
    if X.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise InputError(f"X has shape {X.shape} but Y has {Y.shape[0]} rows")
    n, d = (int(v) for v in X.shape)
    T = int(Y.shape[1])
    tti = (np.full(T, -1, np.int64) if target_train_index is None
           else np.asarray(target_train_index, dtype=np.int64).reshape(-1))
    if tti.shape != (T,):
        raise InputError(f"target_train_index has shape {tti.shape}, expected ({T},)")
    if (tti >= d).any():
        raise InputError("target_train_index points past the training examples")
    chunk_module = [get_namespace(getattr(A, "_meta", A)) for A in (X, Y)]
    backend = "cupy" if any(m is not np for m in chunk_module) else backend_name()
    # in-memory inputs are sliced directly by the passes (no task per load); dask inputs are
    # read block by block where the task runs
    mem = None
    if not isinstance(X, da.Array) and not isinstance(Y, da.Array):
        xp = namespace(backend)
        mem = (xp.asarray(X), xp.asarray(Y))
    X = dask_to_backend(da.asarray(X), backend)
    Y = dask_to_backend(da.asarray(Y), backend)
    # canonical row chunks: the statistics pass cuts its blocks at chunk boundaries, so its
    # sums (and every result) do not depend on how the input happens to be stored
    X = X.rechunk({0: row_block, 1: -1})
    Y = Y.rechunk({0: X.chunks[0], 1: -1})
    return X, Y, mem, tti, n, d, T, backend


def _to_std(w_raw, b_raw, st: _Stats):
    """Raw (w [d, T], b [T]) -> standardised in ``st``'s per-target space."""
    mu, sig = st.mu_sigma()
    return w_raw * sig, b_raw + (mu * w_raw).sum(axis=0)


def _to_rawspace(w_std, b_std, st: _Stats):
    mu, sig = st.mu_sigma()
    w = w_std * _inv(sig)
    return w, b_std - (mu * w).sum(axis=0)


def _solve_block(data: _Data, stats, gauge, conf, options, split, lam_fixed=None):
    """Path + holdout selection + refit (or one fixed λ on all rows) for a block of targets;
    ``stats``: the block's statistics per group of rows (all rows, or validation and
    training)."""
    t0 = time.perf_counter()
    n, d = data.n, data.d
    tti = data.tti
    T = tti.size
    xp = data.xp
    rng = np.random.default_rng(conf.seed)
    info: dict[str, Any] = {"passes": {}, "lr": {}, "L_B": {}}
    if lam_fixed is not None:
        n_val = 0
        (st_all,) = stats
        lam = np.asarray(lam_fixed, dtype=np.float64)
        lambdas = lam[:, None].copy()
        val_path = np.full((T, 1), np.nan)
        best_idx = np.zeros(T, np.int64)
        w_init, b_init = np.zeros((d, T)), st_all.ybar.copy()
        n_iter = np.zeros(T, np.int64)
        converged = np.ones(T, bool)
    else:
        n_val = holdout_size(n, split.val_fraction)
        st_val, st_tr = stats
        st_all = st_val + st_tr
        lambdas = lambda_grid(st_tr.lam_max(), options.n_lambdas, options.lambda_ratio)
        val_path, best_idx, w_best, b_best, n_iter, converged, path = _path(
            data, st_tr, st_val, n_val, lambdas, xp, conf, options, rng, info, gauge)
        lam = lambdas[np.arange(T), best_idx]
        if conf.keep_path:
            info["path_weight"], info["path_bias"] = path
        # the best path solution, moved to the refit's standardisation
        w_init, b_init = _to_std(*_to_rawspace(w_best, b_best, st_tr), st_all)

    eng = _Engine(data, 0, n, st_all, w_init, b_init, lam, conf, xp, rng, gauge=gauge)
    eng.run(lambda which, e: np.full(len(which), np.nan))
    n_iter += eng.passes_final
    converged &= eng.ok
    info["passes"]["refit"] = eng.total_passes
    info["lr"]["refit"], info["L_B"]["refit"] = eng.lr_base, eng.L_B
    w, bias = _to_rawspace(eng.W_final, eng.b_final, st_all)
    w = w.T.copy()
    empty = st_all.n_t == 0
    bias[empty] = np.nan
    converged &= ~empty
    cols = np.nonzero(tti >= 0)[0]
    w[cols, tti[cols]] = 0.0  # eq. 9 (already 0: σ = 0 on the target's rows)
    mu, sig = st_all.mu_sigma()
    info.update(
        n_val=n_val, batch_size=conf.batch_size, row_block=conf.row_block,
        dtype=str(np.dtype(conf.dtype)), seconds=time.perf_counter() - t0,
        gap_rel=eng.gap_last.copy(), w_std=eng.W_final.T.copy(), b_std=eng.b_final.copy(),
    )
    return PathResult(
        weight=w, bias=bias, lam=lam, lambdas=lambdas, val_mse_path=val_path,
        val_mse=val_path[np.arange(T), best_idx], n_iter=n_iter, converged=converged,
        n_rows=st_all.n_t.astype(np.int64), solver="saga", info=info,
    )


def _path(data, st_tr, st_val, n_val, lambdas, xp, conf, options, rng, info, gauge):
    """The λ path on the training rows with validation after every certified solve."""
    d = data.d
    T, L = lambdas.shape
    val_path = np.full((T, L), np.nan)
    k_of = np.zeros(T, np.int64)
    nv_t = st_val.n_t
    W_best = np.zeros((d, T))
    b_best = st_tr.ybar.copy()
    n_iter = np.zeros(T, np.int64)
    converged = np.ones(T, bool)
    path_w = np.zeros((T, L, d)) if conf.keep_path else None
    path_b = np.zeros((T, L)) if conf.keep_path else None
    val_ranges = _split_ranges(0, n_val, conf.row_block)

    # λ_max: w = 0, b = ȳ is exact (certified from the statistics, no pass)
    r0 = st_val.sse_at(st_tr.ybar)
    with np.errstate(invalid="ignore", divide="ignore"):
        val_path[:, 0] = np.where(nv_t > 0, r0 / nv_t, np.nan)
    best_val = np.where(np.isnan(val_path[:, 0]), np.inf, val_path[:, 0])
    if conf.keep_path:
        path_b[:, 0] = st_tr.ybar

    def val_mse(eng: _Engine, which):
        Wr, br = eng.raw_cols(which)
        Wr, br = Wr.astype(conf.dtype), br.astype(conf.dtype)
        oc = eng.cols[which]
        parts = data.map(_val_task, [(*data.blocks(a, b), oc, data.tti[oc], Wr, br, conf.dtype)
                                     for a, b in val_ranges])
        sse = np.zeros(len(which))
        for part, nbytes in parts:  # in row order: the sum does not depend on the workers
            sse += to_numpy(part)
            data.bytes_read += nbytes
        nv = nv_t[oc]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(nv > 0, sse / nv, np.nan), Wr, br

    def on_certified(which, eng: _Engine):
        oc = eng.cols[which]
        v, Wr, br = val_mse(eng, which)
        Wstd, bstd = eng.std_cols(which)
        Wr_h, br_h = to_numpy(Wr), to_numpy(br)
        out = np.full(len(which), np.nan)
        for i, t in enumerate(oc):
            k = k_of[t]
            val_path[t, k] = v[i]
            if conf.keep_path:
                path_w[t, k], path_b[t, k] = Wr_h[:, i], br_h[i]
            if v[i] <= best_val[t]:  # ties → the smaller λ (later on the path)
                best_val[t] = v[i]
                W_best[:, t], b_best[t] = Wstd[:, i], bstd[i]
            stop = options.early_stop and bool(should_stop(
                val_path[t, k - 1], v[i], k + 1, np.count_nonzero(Wstd[:, i]),
                options.min_lams_to_try))
            if k + 1 < L and not stop:
                k_of[t] = k + 1
                out[i] = lambdas[t, k + 1]
        return out

    if L > 1:
        eng = _Engine(data, n_val, data.n, st_tr, np.zeros((d, T)), st_tr.ybar,
                      lambdas[:, 1], conf, xp, rng, gauge=gauge)
        eng.init_snapshot_at_null(st_tr)
        eng.active &= lambdas[:, 0] > 0  # constant outputs: w = 0 on the whole path
        k_of[:] = 1
        eng.run(on_certified)
        n_iter += eng.passes_final
        converged &= eng.ok
        info["passes"]["path"] = eng.total_passes
        info["lr"]["path"], info["L_B"]["path"] = eng.lr_base, eng.L_B
    best_idx = select_lambda(val_path)
    return val_path, best_idx, W_best, b_best, n_iter, converged, (path_w, path_b)


def _solve(X, Y, *, split: Split, options: PathOptions, target_train_index=None,
           lam_fixed=None, client=None) -> PathResult:
    rb = int(options.row_block_size or config.get("solve.row-block-size", 8192))
    X, Y, mem, tti, n, d, T, backend = _prepare(X, Y, target_train_index, rb)
    xp = namespace(backend)
    n_val = 0 if lam_fixed is not None else holdout_size(n, split.val_fraction)
    conf = _conf(options, d, n - n_val)
    if lam_fixed is not None:
        lam_fixed = np.broadcast_to(np.asarray(lam_fixed, np.float64), (T,))
    bounds = [0, n] if n_val == 0 else [0, n_val, n]
    stats, gauge = _statistics(X, Y, tti, bounds, conf.row_block, client, backend,
                               options.progress)
    tb = int(options.target_block_size or config.get("solve.target-block-size", 512))
    spans = [(s, min(T, s + tb)) for s in range(0, T, tb)]
    # on a cluster the tasks read the dask arrays where they run (no in-memory copy shipped)
    Xp, Yp = (X, Y) if mem is None or client is not None else mem
    datas = [_Data(Xp, Yp[:, s:e], tti[s:e], client, xp) for s, e in spans]

    def block(i):
        s, e = spans[i]
        return _solve_block(datas[i], [st.take(s, e) for st in stats], gauge, conf, options,
                            split, lam_fixed=None if lam_fixed is None else lam_fixed[s:e])

    # target blocks are independent problems: on a cluster their chains run side by side
    # (each driven from a thread here); locally one at a time, BLAS using every core
    par = min(len(spans), lanes(client)) if client is not None else 1
    if par > 1:
        with ThreadPoolExecutor(max_workers=par) as pool:
            parts = list(pool.map(block, range(len(spans))))
    else:
        parts = [block(i) for i in range(len(spans))]
    res = PathResult.concat(parts)
    if len(parts) > 1:
        for key in ("w_std", "b_std", "gap_rel", "path_weight", "path_bias"):
            if key in parts[0].info:
                res.info[key] = np.concatenate([p.info[key] for p in parts])
    res.info["bytes_read"] = sum(dt.bytes_read for dt in datas)
    res.info["options"] = dict(batch_size=conf.batch_size, row_block=conf.row_block,
                               tol=conf.tol, max_epochs=conf.max_epochs, seed=conf.seed,
                               dtype=str(np.dtype(conf.dtype)), lr_scale=conf.lr_scale)
    return res.validate()


def saga_path(X, Y, *, split: Split | None = None, options: PathOptions | None = None,
              target_train_index=None, client=None) -> PathResult:
    """LASSO path + holdout selection + refit by streaming SAGA (see the module docstring).

    ``X`` (n, d) 0/1 and ``Y`` (n, T) with NaN = missing: NumPy, CuPy, dask or xarray.
    ``options.extra`` takes the SAGA knobs ``batch_size``, ``max_epochs`` (per λ, default
    200), ``refresh_every`` (1), ``lr`` (fixed step instead of 1/(3 L_B)), ``lr_scale``,
    ``seed``, ``dtype`` (``float64``; ``float32`` is faster but cannot certify tol below
    ~1e-6) and ``keep_path`` (raw path weights in ``info["path_weight"]`` [T, L, d]).
    With a ``distributed`` ``client`` every row-block task runs on its workers.
    """
    split = split or Split()
    if split.kind != "holdout":
        raise InputError("the SAGA solver selects λ on a holdout split only (use the Gram "
                         "solver for cross-validation)")
    return _solve(X, Y, split=split, options=options or PathOptions(),
                  target_train_index=target_train_index, client=client)


def saga_fit_lambda(X, Y, lam, *, options: PathOptions | None = None,
                    target_train_index=None, client=None) -> PathResult:
    """The LASSO at one λ per target on all rows (standardised with each target's rows).

    ``res.info["w_std"]``/``["b_std"]`` hold the standardised solution, ``weight``/``bias``
    the raw-mask one; ``info["gap_rel"]`` the certified relative duality gap."""
    return _solve(X, Y, split=Split(), options=options or PathOptions(),
                  target_train_index=target_train_index, lam_fixed=lam, client=client)


class SagaSolver:
    """Registered as ``"saga"``: the streaming solver with per-target rows (row blocks on
    ``client``'s workers when one is given)."""

    name: ClassVar[str] = "saga"
    per_target_rows: ClassVar[bool] = True
    selections: ClassVar[tuple[str, ...]] = ("holdout",)

    def __init__(self, **extra):
        self.extra = extra

    def fit(self, X, Y, *, split: Split, options: PathOptions, target_train_index=None,
            client=None) -> PathResult:
        if self.extra:
            options = replace(options, extra={**self.extra, **(options.extra or {})})
        return saga_path(X, Y, split=split, options=options,
                         target_train_index=target_train_index, client=client)
