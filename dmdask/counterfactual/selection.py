"""Datamodel-guided data selection (DsDm; seed 001): choose the k training examples that most
raise a target distribution's outputs, train on them, and measure.

The target set (a class, or explicit store target positions) is split at random into two
halves: the *selection* half chooses, the *evaluation* half measures, so the selection is not
scored on the targets it was fitted to. Methods at each k:

``datamodels``            the k largest mean datamodel weights over the selection half
``random``                k examples uniformly at random (a fresh set per run)
``random_balanced``       k examples at random, class-balanced (a fresh set per run)
NAME (an estimator)       the k largest mean calibrated scores of that estimator

``runs`` models are trained on each selected set (kind ``selected``). Reported per (method, k):
the evaluation half's mean margin (``actual``, with its standard error over runs), its accuracy
(share of (target, run) with margin > 0), and the datamodels' prediction of that mean margin,
mean_x (b_x + Σ_{j∈S} w_{x,j}) — an extrapolation far from the α-subsets the datamodels were
fitted on, reported as such.
"""

from __future__ import annotations

import time

import numpy as np
import xarray as xr

from ..errors import InputError
from ..outputs import portable_attrs
from .grid import check_k
from .inputs import (
    baseline_scores,
    check_estimators,
    check_runs,
    job_class,
    open_inputs,
    weights_of,
)
from .removal import top_k
from .summary import run_stats
from .training import Trainer

__all__ = ["select", "split_targets"]

RANDOM_METHODS = ("random", "random_balanced")


def split_targets(inp, target_class=None, indices=None, seed: int = 0):
    """(selection half, evaluation half) of the target set, store positions, sorted."""
    have = np.asarray(inp.dm["target"].values, np.int64)
    if (target_class is None) == (indices is None):
        raise InputError("give a target class or explicit target indices (one of them)")
    if indices is not None:
        idx = np.unique(np.asarray(indices).astype(np.int64))
        missing = np.setdiff1d(idx, have)
        if missing.size:
            raise InputError(f"targets {missing[:5].tolist()} do not exist among the targets "
                             "with datamodels")
    else:
        lab = np.asarray(inp.ds["target_label"].values)[have]
        idx = have[lab == int(target_class)]
        if idx.size == 0:
            raise InputError(f"no target of class {target_class} has a datamodel")
    if idx.size < 2:
        raise InputError(f"the target set has {idx.size} target; it needs two halves")
    perm = np.random.default_rng([int(seed), 0x5E1]).permutation(idx)
    h = idx.size // 2
    return np.sort(perm[:h]), np.sort(perm[h:])


def _balanced(rng, train_label, k):
    classes = np.unique(train_label)
    per = np.full(classes.size, k // classes.size)
    per[rng.permutation(classes.size)[: k % classes.size]] += 1
    out = []
    for c, n in zip(classes, per, strict=True):
        pool = np.flatnonzero(train_label == c)
        out.append(rng.choice(pool, size=min(n, pool.size), replace=False))
    got = np.concatenate(out)
    if got.size < k:  # a class too small: fill from the rest
        rest = np.setdiff1d(np.arange(train_label.size), got)
        got = np.concatenate([got, rng.choice(rest, size=k - got.size, replace=False)])
    return np.sort(got)


def select(store, datamodels, *, target_class: int | None = None, indices=None,
           k=(100, 200, 400, 800), estimators=(), runs: int = 5, seed: int = 0,
           client=None, scheduler: str | None = None, workers: int | None = None,
           progress: bool = True) -> xr.Dataset:
    """Data selection for a target set (see the module docstring). Returns a Dataset over
    ``(method, k)`` with ``predicted``, ``actual``, ``actual_se``, ``accuracy``,
    ``accuracy_se``, ``n_runs`` and the selected sets ``selected(method, k, run, rank)``.
    Select a method with ``ds.sel({"method": "random"})`` (``sel(method=...)`` is xarray's
    own keyword)."""
    t0 = time.perf_counter()
    inp = open_inputs(store, datamodels)
    n_train = inp.ds.sizes["train"]
    ks = check_k(k, n_train)
    runs, _ = check_runs(runs)
    estimators = check_estimators(estimators)
    job_class(inp)
    sel, ev = split_targets(inp, target_class, indices, seed)
    both = np.concatenate([sel, ev])
    W, B = weights_of(inp, both)
    ws, (we, be) = W[: sel.size], (W[sel.size:], B[sel.size:])
    base = baseline_scores(inp, estimators, sel)
    trl = np.asarray(inp.ds["train_label"].values, np.int64)
    methods = ["datamodels", *RANDOM_METHODS, *estimators]
    M, K = len(methods), len(ks)
    chosen = np.full((M, K, runs, ks[-1]), -1, np.int64)
    rank_of = {"datamodels": top_k(ws.mean(axis=0), n_train)}
    for e in estimators:
        tau, slope = base[e]
        rank_of[e] = top_k((slope[:, None] * tau).mean(axis=0), n_train)
    masks, where = [], []
    for m, name in enumerate(methods):
        for j, kk in enumerate(ks):
            rng = np.random.default_rng([int(seed), m, kk, 0x5E1])
            for r in range(runs):
                if name == "random":
                    s = np.sort(rng.choice(n_train, size=kk, replace=False))
                elif name == "random_balanced":
                    s = _balanced(rng, trl, kk)
                else:
                    s = np.sort(rank_of[name][:kk])
                chosen[m, j, r, :kk] = s
                if name in RANDOM_METHODS or r == 0:
                    mk = np.zeros(n_train, bool)
                    mk[s] = True
                    masks.append(mk)
                    where.append((m, j, r))
    models = np.full((M, K, runs), -1, np.int64)
    with Trainer(inp.path, client=client, scheduler=scheduler, workers=workers,
                 progress=progress) as tr:
        fixed = [n for n, (m, _, _) in enumerate(where) if methods[m] not in RANDOM_METHODS]
        rand = [n for n, (m, _, _) in enumerate(where) if methods[m] in RANDOM_METHODS]
        mk = np.stack(masks)
        if fixed:
            idx = tr.models(mk[fixed], kind="selected", runs=runs)
            for n, row in zip(fixed, idx, strict=True):
                m, j, _ = where[n]
                models[m, j] = row
        if rand:
            idx = tr.models(mk[rand], kind="selected", runs=1)
            for n, row in zip(rand, idx, strict=True):
                m, j, r = where[n]
                models[m, j, r] = row[0]
        tr.train()
        mg = tr.margins(models, ev)  # [M, K, runs, |ev|]
        trained, tsec = tr.trained, tr.seconds
    per_run = mg.mean(axis=-1)
    actual, actual_se, n_runs = run_stats(per_run, axis=-1)
    acc_run = (mg > 0).mean(axis=-1)
    acc, acc_se, _ = run_stats(np.where(np.isfinite(per_run), acc_run, np.nan), axis=-1)
    pred = np.full((M, K), np.nan)
    for m in range(M):
        for j, kk in enumerate(ks):
            sets = chosen[m, j, :, :kk]
            pred[m, j] = np.mean([be.mean() + we[:, s].sum(axis=1).mean() for s in sets])
    ds = xr.Dataset(
        {
            "predicted": (("method", "k"), pred,
                          {"description": "datamodel prediction of the evaluation half's "
                                          "mean margin"}),
            "actual": (("method", "k"), actual),
            "actual_se": (("method", "k"), actual_se),
            "accuracy": (("method", "k"), acc),
            "accuracy_se": (("method", "k"), acc_se),
            "n_runs": (("method", "k"), n_runs.astype(np.int64)),
            "selected": (("method", "k", "run", "rank"), chosen,
                         {"description": "training indices of each run's selected set "
                                         "(-1 past k)"}),
            "models": (("method", "k", "run"), models),
            "selection_targets": ("selection_target", sel),
            "evaluation_targets": ("evaluation_target", ev),
        },
        coords={"method": np.asarray(methods, dtype=object), "k": np.asarray(ks, np.int64)},
    )
    ds.attrs.update(portable_attrs({
        "dmdask_selection": 1, "store": inp.path, "runs": runs, "seed": seed,
        "target_class": target_class, "models_trained": trained, "training_seconds": tsec,
        "seconds": time.perf_counter() - t0,
    }))
    return ds
