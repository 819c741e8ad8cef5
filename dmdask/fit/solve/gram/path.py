"""The λ path of a block of targets on one standardised problem: warm starts, constant targets,
the iteration budget, validation and early stop, or a stop index per target (refit)."""

from __future__ import annotations

import numpy as np

from ....backend import to_numpy
from ..grid import should_stop
from .problem import _Problem


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
