"""Leave-one-out estimators (REFERENCE §5): τ_i(x) = f(x; D) − f(x; D∖i), the margin of the
model trained on the full training set D minus that of the model trained without i (τ > 0:
the presence of i raises the target's margin).

* ``loo_exact``: exact for least-squares jobs (the ``least_squares`` job hook, e.g.
  ``jobs.digits:DigitsRidge``) by Sherman–Morrison from one factorisation, no refits;
* ``loo_newton``: one Newton step on the leave-i-out objective with the leverage term, for
  jobs trained with cross-entropy whose logits are affine in the last layer (the model hooks;
  the whole model for ``DigitsLogistic``, the last layer with the features held fixed for an
  MLP); exact up to O(1/n²) for a converged convex model;
* ``loo_retrain``: the ground truth by brute force — the full set (kind ``control``) and the
  N leave-one-out sets (kind ``counterfactual``) added to the store with
  :func:`dmdask.store.trainsets.ensure_models` (reruns add nothing) and trained by
  :func:`dmdask.train` on a cluster (resumable), ``n_models`` runs of each set.

Costs are in ``attrs``: ``n_trainings`` (models trained for the estimate: 1 for the closed
forms, (N + 1)·runs for retraining) and ``n_trained_now`` for retraining.
"""

from __future__ import annotations

import time

import numpy as np
import xarray as xr

from ...errors import InputError, JobError
from ...values.loo import margins_from_logits, newton_loo_logits, ridge_loo_logits
from ..scores import make_scores
from .model import MODEL_HOOKS, _one, _reject, _targets, load_job, train_models

__all__ = ["LOO_HOOKS", "loo_exact", "loo_newton", "loo_retrain"]

#: the job hooks each estimator needs (checked on the class)
LOO_HOOKS = {"loo_exact": ("least_squares",), "loo_newton": MODEL_HOOKS,
             "loo_retrain": ()}


def _n_models(n_models) -> int:
    n = int(n_models)
    if n < 1:
        raise InputError(f"n_models must be >= 1, got {n_models}")
    return n


def _finish(ds, tpos, score, name, attrs):
    return make_scores(score, estimator=name, source="model", output="margin",
                       ds=ds.isel(target=tpos), attrs=attrs)


def loo_exact(ds, *, n_models: int = 1, targets=None, chunk: int = 256,
              **_unused) -> xr.DataArray:
    """Exact LOO effects on the targets' margins for a least-squares job (its
    ``least_squares`` hook), from one fit on all training examples: β₍₋ᵢ₎ = β −
    H⁻¹x_i e_iᵀ/(1 − h_ii), margins recomputed from the exact leave-one-out logits."""
    _reject(_unused)
    tpos = _targets(ds, targets)
    _n_models(n_models)
    t0 = time.perf_counter()
    job = load_job(ds, "loo_exact", ())
    if getattr(type(job), "least_squares", None) is None:
        raise JobError(f"loo_exact needs a least-squares job (a 'least_squares' hook, e.g. "
                       f"jobs.digits:DigitsRidge); {type(job).__name__} is not one: use "
                       "loo_newton (one Newton step) or loo_retrain (brute force)")
    ls = job.least_squares()
    ylab = np.asarray(ds["target_label"].values)[tpos]
    score = np.empty((tpos.size, ds.sizes["train"]))
    for rows, full, loo in ridge_loo_logits(ls["x_train"], ls["y_train"], ls["penalty"],
                                            np.asarray(ls["x_target"])[tpos], chunk=chunk):
        score[:, rows] = (margins_from_logits(full, ylab)[None]
                          - margins_from_logits(loo, ylab)).T
    return _finish(ds, tpos, score, "loo_exact",
                   {"n_models": 1, "n_trainings": 1, "method": "sherman-morrison",
                    "seconds": time.perf_counter() - t0})


def _jacobians(job, p, names, h, dt):
    """Logits [m, C] and their Jacobians [m, C, P] w.r.t. the last-layer parameters ``names``
    (the head is affine in them, so these are exact everywhere)."""
    import torch
    from torch.func import jacrev, vmap

    rest = {k: v for k, v in p.items() if k not in names}
    flat = torch.cat([p[k].reshape(-1) for k in names])

    def z_of(flat, hi):
        sub, i = {}, 0
        for k in names:
            sub[k] = flat[i:i + p[k].numel()].reshape(p[k].shape)
            i += p[k].numel()
        return job.head({**rest, **sub}, hi.unsqueeze(0))[0]

    with torch.no_grad():
        Z = job.head(p, h)
    J = vmap(jacrev(z_of), in_dims=(None, 0))(flat, h)
    return Z.to(dt).numpy(), J.to(dt).numpy(), flat.numpy()


def loo_newton(ds, *, n_models: int = 1, seed: int = 0, targets=None, rcond: float = 1e-12,
               chunk: int = 64, **_unused) -> xr.DataArray:
    """One-Newton-step LOO (REFERENCE §5.2, multi-class) of ``n_models`` models trained on all
    training examples with the job's hooks (mean cross-entropy + the ``l2_penalty`` hook's
    (c/2)θ²), in the last layer's parameters; effects averaged over the models."""
    from ... import optional

    _reject(_unused)
    tpos = _targets(ds, targets)
    M = _n_models(n_models)
    torch = optional.torch()
    t0 = time.perf_counter()
    job = load_job(ds, "loo_newton")
    tr = train_models(ds, job, models="full", n_models=M, seed=seed)
    dt = torch.float64
    inp = job.model_inputs()
    names = tuple(job.last_layer)
    ytr = inp["y_train"].numpy()
    ylab = inp["y_target"].numpy()[tpos]
    score = np.zeros((tpos.size, ds.sizes["train"]))
    for b in range(M):
        p = _one(tr["params"], b, dt)
        with torch.no_grad():
            htr = job.features(p, inp["x_train"].to(dt))
            htg = job.features(p, inp["x_target"][tpos].to(dt))
        Z, J, theta = _jacobians(job, p, names, htr, dt)
        Zt, Jt, _ = _jacobians(job, p, names, htg, dt)
        if hasattr(job, "l2_penalty"):
            pen = job.l2_penalty({k: v[b:b + 1] for k, v in tr["params"].items()})
            pen = torch.cat([pen[k][0].reshape(-1).to(dt) for k in names]).numpy()
        else:
            pen = 0.0
        full = margins_from_logits(Zt, ylab)
        for rows, loo in newton_loo_logits(J, ytr, Z, theta, pen, Jt, Zt, rcond=rcond,
                                           chunk=chunk):
            score[:, rows] += (full[None] - margins_from_logits(loo, ylab)).T / M
    return _finish(ds, tpos, score, "loo_newton",
                   {"n_models": M, "n_trainings": M, "seed": int(seed), "method": "newton-step",
                    "train_seconds": float(tr["train_seconds"]),
                    "seconds": time.perf_counter() - t0})


def loo_sets(n_train: int) -> tuple[np.ndarray, np.ndarray]:
    """The full training set (one row) and the N leave-one-out sets (row i lacks i)."""
    full = np.ones((1, n_train), bool)
    loo = ~np.eye(n_train, dtype=bool)
    return full, loo


def loo_retrain(ds, *, n_models: int = 1, targets=None, client=None, workers: int | None = None,
                progress: bool = False, **_unused) -> xr.DataArray:
    """Brute-force LOO: ``n_models`` runs of the full set and of every leave-one-out set
    trained through the store (added once, found again on reruns), effects = mean margin of
    the full-set runs − mean margin of the set's runs. Adds (N + 1)·runs models to the store
    the first time."""
    from ...store import trainsets
    from ...train import train

    _reject(_unused)
    tpos = _targets(ds, targets)
    R = _n_models(n_models)
    t0 = time.perf_counter()
    load_job(ds, "loo_retrain", ())
    path = ds.attrs["dmdask"]["path"]
    full, loo = loo_sets(ds.sizes["train"])
    mf = trainsets.ensure_models(path, full, kind="control", runs=R)
    ml = trainsets.ensure_models(path, loo, kind="counterfactual", runs=R)
    ids = np.concatenate([mf.ravel(), ml.ravel()])
    done = trainsets.model_margins(path, ids, targets=tpos)
    todo = int(np.isnan(done).any(axis=1).sum())
    if todo:
        train(path, client=client, workers=workers, progress=progress)
    yf = trainsets.model_margins(path, mf, targets=tpos)  # [1, R, m]
    yl = trainsets.model_margins(path, ml, targets=tpos)  # [N, R, m]
    if np.isnan(yf).any() or np.isnan(yl).any():
        raise JobError(f"loo_retrain: {path} still has untrained leave-one-out models after "
                       "training (NaN margins); run dmdask train and retry")
    score = (yf.mean(1) - yl.mean(1)).T
    attrs = {"n_models": R, "n_trainings": int(ids.size), "n_trained_now": todo,
             "method": "retrain", "seconds": time.perf_counter() - t0}
    if R > 1:  # standard error of the difference of two means of R runs
        attrs["mean_se"] = float(np.sqrt(yf.var(1, ddof=1).mean() / R
                                         + yl.var(1, ddof=1).mean() / R))
    return _finish(ds, tpos, score, "loo_retrain", attrs)
