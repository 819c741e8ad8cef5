"""The Gram solver's entry points: :func:`solve_from_stats` (standardised Grams, problems,
target blocks run on local lanes or a ``dask.distributed`` client) and :class:`GramSolver`
(the registered solver: statistics pass, then :func:`solve_from_stats`)."""

from __future__ import annotations

from dataclasses import dataclass

import dask
import numpy as np

from .... import config
from ....backend import get_namespace, to_numpy
from ....scheduling import blas_per_lane, compute, lane_blas_threads
from ...stats import SufficientStats, compute_stats, group_bounds_for
from ..base import PathOptions, PathResult, Split, UnsupportedTargets
from .block import _solve_block
from .problem import _Problem
from .standardise import _build_grams
from .validation import _ValGram


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
    shared = prepare_gram(groups, split, options, method=method, client=client)
    return solve_targets(shared, None, split, options, client=client)


def prepare_gram(groups: list[SufficientStats], split: Split,
                 options: PathOptions = PathOptions(), *, method: str | None = None,
                 client=None) -> GramShared:
    """Everything the target blocks share, from the Gram part of the statistics (``G``,
    ``s``, ``n`` of each group; their ``C`` may have no columns): the standardised Grams of
    the training split(s), of all rows and of the validation rows, and their problems."""
    method = method or options.extra.get("method") or config.get("solve.gram-method", "fista")
    if method not in ("cd", "fista"):
        raise UnsupportedTargets(f"unknown Gram method {method!r} (cd | fista)")
    cd_block = int(options.extra.get("cd_block", 64))
    full = SufficientStats.sum(groups)
    tr_stats, val_stats = _split_groups(groups, full, split)
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
    # the raw XᵀX of each group is not needed past this point (the problems hold the
    # standardised Grams, the blocks need σ): dropped, a d × d matrix less per group
    return GramShared(_light((tr_probs, tr_stats, val_stats, full_prob, full, val_grams)),
                      method)


class GramShared:
    """What :func:`prepare_gram` builds once for all target blocks: ``parts`` (training
    problems and statistics, validation statistics, the all-rows problem and statistics,
    the validation Grams) and the inner ``method``. ``future``: where a caller scattered
    ``parts`` to a cluster once (``client.scatter(parts, broadcast=True)``), the tasks take
    it from there instead of sending the Grams again."""

    def __init__(self, parts: tuple, method: str):
        self.parts = parts
        self.method = method
        self.future = None

    def scatter(self, client) -> GramShared:
        """Send the shared matrices to every worker of ``client`` once (the statistics
        without their ``G``: what travels is the Grams the solve uses, once each)."""
        if self.future is None:
            self.future = client.scatter(self.parts, broadcast=True, hash=False)
        return self

    @property
    def n_targets(self) -> int:
        return self.parts[4].n_targets


def _split_groups(groups, full, split):
    """(training statistics, validation statistics) of a split, from its groups."""
    if split.kind == "holdout":
        return [groups[1]], [groups[0]]
    return [full - g for g in groups], list(groups)


def solve_targets(shared: GramShared, target_groups: list[SufficientStats] | None,
                  split: Split, options: PathOptions = PathOptions(), *,
                  client=None) -> PathResult:
    """Path, selection and refit of a block of targets. ``target_groups``: the block's
    target statistics per group (``C``, ``sy``, ``syy``; ``G`` may be None), joined on the
    workers with the shared Gram part; None: the targets of the statistics ``shared`` was
    built from."""
    tr_probs, _, _, full_prob, full, _ = shared.parts
    tparts = None
    if target_groups is not None:
        tfull = SufficientStats.sum(target_groups)
        ttr, tval = _split_groups(target_groups, tfull, split)
        tparts = (ttr, tval, tfull)
        T = tfull.n_targets
    else:
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

    def task_args(b):
        # a block's own target statistics travel with its task; the Grams do not
        if tparts is None:
            return None, b
        ttr, tval, tfull = tparts
        return ([t.take_targets(b) for t in ttr], [t.take_targets(b) for t in tval],
                tfull.take_targets(b)), np.arange(b.size)

    if len(blocks) == 1 and client is None:
        tp, cols = task_args(blocks[0])
        parts = [_solve_block_shared(shared.parts, tp, cols, split.kind, opts)]
    elif client is not None:
        sh = shared.future
        if sh is None:  # one key, sent once per worker
            sh = client.scatter(shared.parts, broadcast=True, hash=False)
        futs = []
        for b in blocks:
            tp, cols = task_args(b)
            if tp is not None:
                tp = client.scatter(tp, hash=False)
            futs.append(client.submit(_solve_block_shared, sh, tp, cols, split.kind, opts,
                                      pure=False))
        if options.progress:
            from distributed import as_completed
            from tqdm.auto import tqdm

            for _ in tqdm(as_completed(futs), total=len(futs), desc="lasso paths"):
                pass
        parts = client.gather(futs)
    else:
        sh = dask.delayed(shared.parts, traverse=False)
        tasks = [dask.delayed(_solve_block_shared, pure=True)(sh, *task_args(b), split.kind,
                                                              opts)
                 for b in blocks]
        with blas_per_lane(None, min(lanes, len(blocks))):
            parts = list(compute(tasks, progress=options.progress, desc="lasso paths"))
    res = PathResult.concat(parts)
    res.solver = "gram"
    res.info = {"method": shared.method, "blocks": len(blocks),
                "seconds": [p.info.get("seconds") for p in parts]}
    return res.validate()


_MIN_PARALLEL_BLOCK = 64


def _local_threads() -> int:
    """Worker threads of the local dask scheduler (``num_workers``, else the cores)."""
    import os

    n = dask.config.get("num_workers", None)
    return int(n) if n else (os.cpu_count() or 1)


def _solve_block_shared(shared, tparts, cols, split_kind, opts):
    tr_probs, tr_stats, val_stats, full_prob, full, val_grams = shared
    if tparts is not None:
        # the block's target statistics joined to the shared Gram part (no copies of G)
        ttr, tval, tfull = tparts
        tr_stats = [_join(g, t) for g, t in zip(tr_stats, ttr, strict=True)]
        val_stats = [_join(g, t) for g, t in zip(val_stats, tval, strict=True)]
        full = _join(full, tfull)
        val_grams = [_with_stats(vg, v) for vg, v in zip(val_grams, val_stats, strict=True)]
    return _solve_block(tr_probs, tr_stats, val_stats, full_prob, full, cols, split_kind, opts,
                        val_grams)


def _join(g: SufficientStats, t: SufficientStats) -> SufficientStats:
    if g.G is None:
        return _NoGram(g.n, None, g.s, t.C, t.sy, t.syy, t.nonfinite, sigma_=g.sigma)
    return SufficientStats(g.n, g.G, g.s, t.C, t.sy, t.syy, t.nonfinite)


@dataclass
class _NoGram(SufficientStats):
    """Statistics whose ``G`` stayed behind (σ kept): what a target block needs of them."""

    sigma_: object = None

    @property
    def sigma(self):
        return self.sigma_

    @property
    def xp(self):
        return get_namespace(self.sigma_)


def _nogram(st: SufficientStats) -> SufficientStats:
    return _NoGram(st.n, None, st.s, st.C, st.sy, st.syy, st.nonfinite, sigma_=st.sigma)


def _light(parts: tuple) -> tuple:
    """``parts`` with every statistics object's ``G`` left out (one d × d matrix less per
    group to send; the validation Grams keep their standardised Q)."""
    tr_probs, tr_stats, val_stats, full_prob, full, val_grams = parts
    val_l = [_nogram(v) for v in val_stats]
    return (tr_probs, [_nogram(t) for t in tr_stats], val_l, full_prob, _nogram(full),
            [_with_stats(vg, v) for vg, v in zip(val_grams, val_l, strict=True)])


def _with_stats(vg: _ValGram, st: SufficientStats) -> _ValGram:
    import copy

    out = copy.copy(vg)
    out.st = st
    return out
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
