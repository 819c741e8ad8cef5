"""``counterfactuals``: predicted against actual effects of removing training data, over a grid
of (target, heuristic, k) — the paper's §4.1.2 and Figure 8 (REFERENCE §3).

For each target, heuristic and k the removal set R is the first k entries of the heuristic's
removal order (:mod:`.removal`); ``runs`` models are trained on the full training set minus R
(kind ``counterfactual``) and ``control_runs`` on the full training set (kind ``control``,
shared by all targets), all through the run store and the cluster, resumable. Effects are
margin drops: actual Δ = mean control margin − mean counterfactual margin, with standard error
√(s²_cf/T + s²_ctrl/T₀); predicted Δ̂ = Σ_{j∈R} w_j, and for each baseline estimator its
calibrated slope times Σ_{j∈R} τ_j.

``alpha_control=True`` adds the random α-control of App. F.8: each run keeps every example of
S∖R with probability α (its own mask), the control is the store's random α-models, and the
prediction is α·Σ_{j∈R} w_j.
"""

from __future__ import annotations

import time

import numpy as np
import xarray as xr

from ..errors import InputError
from ..outputs import portable_attrs
from .inputs import (
    baseline_scores,
    check_estimators,
    check_runs,
    choose_targets,
    job_class,
    open_inputs,
    weights_of,
)
from .removal import BASE_HEURISTICS, parse_heuristics, removal_order, removal_sums
from .summary import correlation, run_stats
from .training import Trainer, full_mask

__all__ = ["DEFAULT_K", "check_k", "counterfactuals", "control_models"]

DEFAULT_K = (10, 20, 40, 80, 160, 320)


def check_k(k, n_train: int) -> list[int]:
    """Sorted distinct removal sizes, each in [1, n_train]."""
    try:
        ks = sorted({int(x) for x in k})
    except (TypeError, ValueError) as e:
        raise InputError(f"k must be integers, got {k!r}") from e
    if not ks:
        raise InputError("give at least one k")
    bad = [x for x in ks if x < 1 or x > n_train]
    if bad:
        raise InputError(f"k = {bad[0]} is outside [1, {n_train}] (the training set has "
                         f"{n_train} examples)")
    return ks


def control_models(trainer: Trainer, n_train: int, runs: int) -> np.ndarray:
    """Model indices of the ``runs`` full-data control models (added if missing; train
    before reading them)."""
    return trainer.models(full_mask(n_train)[None], kind="control", runs=runs)[0]


def _alpha_control_masks(n_train, removed, alpha, runs, seed, t, h, k):
    rng = np.random.default_rng([int(seed), int(t), int(h), int(k), 0xA1FA])
    keep = rng.random((runs, n_train)) < alpha
    keep[:, np.asarray(removed, np.int64)] = False
    return keep


def counterfactuals(store, datamodels, *, targets: int | None = 10, indices=None,
                    k=DEFAULT_K, heuristics=BASE_HEURISTICS, estimators=(), runs: int = 5,
                    control_runs: int | None = None, alpha_control: bool = False,
                    seed: int = 0, client=None, scheduler: str | None = None,
                    workers: int | None = None, progress: bool = True,
                    estimator_client=None) -> xr.Dataset:
    """Predicted vs actual effects of removing training data (see the module docstring).

    ``targets``: how many targets to draw class-balanced (``indices``: explicit store target
    positions instead); ``k``: removal sizes; ``heuristics``: names of :mod:`.removal`
    (``top:NAME`` removes estimator NAME's top scores); ``estimators``: baseline estimators
    whose predictions of the same counterfactuals are reported (``predicted_by``);
    ``runs``/``control_runs`` (default ``max(runs, 10)``): models per counterfactual and
    control. Returns a Dataset with dims ``(target, heuristic, k)``: ``predicted``,
    ``actual``, ``actual_se``, ``n_runs``, ``cf_mean``, per target ``control_mean``,
    ``control_se``, the removal orders ``removal_order(target, heuristic, rank)`` (the set for
    k is the first k), ``models(target, heuristic, k, run)``, and Pearson/Spearman of
    predicted vs actual with 95% intervals (attributes overall, variables per heuristic and
    per estimator). The training runs on ``client``, or ``scheduler``, or a ``LocalCluster``
    of ``workers`` processes.
    """
    t0 = time.perf_counter()
    inp = open_inputs(store, datamodels)
    estimators = check_estimators(estimators)
    heur = parse_heuristics(heuristics, estimators)
    n_train = inp.ds.sizes["train"]
    ks = check_k(k, n_train)
    runs, control_runs = check_runs(runs, control_runs)
    tpos = choose_targets(inp, targets, indices, seed)
    job_class(inp)  # a store that can train
    alpha = float(inp.meta.get("alpha") or 0.5)
    W, _ = weights_of(inp, tpos)
    base = baseline_scores(inp, estimators, tpos, client=estimator_client)
    tl = np.asarray(inp.ds["target_label"].values)[tpos]
    trl = np.asarray(inp.ds["train_label"].values)

    T, H, K = tpos.size, len(heur), len(ks)
    kmax = ks[-1]
    order = np.full((T, H, kmax), -1, np.int64)
    pred_by = np.full((len(estimators), T, H, K), np.nan)
    masks, where = [], []
    for i, t in enumerate(tpos):
        for h, name in enumerate(heur):
            est = name.partition(":")[2]
            o = removal_order(name, W[i], target=int(t), target_label=int(tl[i]),
                              train_label=trl, seed=seed,
                              scores=base[est][0][i] if est else None)
            order[i, h, :min(kmax, o.size)] = o[:kmax]
            for j, kk in enumerate(ks):
                if o.size >= kk:  # else the heuristic has fewer than k examples here
                    masks.append(full_mask(n_train, o[:kk]))
                    where.append((i, h, j))
    pred = removal_sums(W, order, ks)
    for e, en in enumerate(estimators):
        tau, slope = base[en]
        pred_by[e] = slope[:, None, None] * removal_sums(tau, order, ks)

    models = np.full((T, H, K, runs), -1, np.int64)
    a_models = np.full((T, H, K, runs), -1, np.int64) if alpha_control else None
    with Trainer(inp.path, client=client, scheduler=scheduler, workers=workers,
                 progress=progress) as tr:
        ctrl_idx = control_models(tr, n_train, control_runs)
        if masks:
            idx = tr.models(np.stack(masks), kind="counterfactual", runs=runs)
            for (i, h, j), row in zip(where, idx, strict=True):
                models[i, h, j] = row
        if alpha_control:
            for i, h, j in where:
                r = order[i, h, :ks[j]]
                am = _alpha_control_masks(n_train, r, alpha, runs, seed, tpos[i], h, ks[j])
                a_models[i, h, j] = tr.models(am, kind="counterfactual", runs=1,
                                              alpha=alpha)[:, 0]
        tr.train()
        ctrl = tr.margins(ctrl_idx, tpos)  # [T0, T]
        cm, cse, cn = run_stats(ctrl, axis=0)
        mg = _own_margins(tr, models, tpos)
        cf_mean, cf_se, n_runs = run_stats(mg, axis=-1)
        actual = cm[:, None, None] - cf_mean
        with np.errstate(invalid="ignore"):
            se = np.sqrt(cf_se**2 + (cse**2)[:, None, None])
        data = {
            "predicted": (("target", "heuristic", "k"), pred,
                          {"description": "datamodel-predicted margin drop Σ_{j∈R} w_j"}),
            "actual": (("target", "heuristic", "k"), actual,
                       {"description": "control mean margin − counterfactual mean margin"}),
            "actual_se": (("target", "heuristic", "k"), se),
            "n_runs": (("target", "heuristic", "k"), n_runs.astype(np.int64)),
            "cf_mean": (("target", "heuristic", "k"), cf_mean),
            "control_mean": ("target", cm),
            "control_se": ("target", cse),
            "n_control": ("target", cn.astype(np.int64)),
            "removal_order": (("target", "heuristic", "rank"), order,
                              {"description": "training indices; the removal set for k is "
                                              "the first k (-1: none)"}),
            "models": (("target", "heuristic", "k", "run"), models),
            "control_models": ("control_run", ctrl_idx),
        }
        if estimators:
            data["predicted_by"] = (("estimator", "target", "heuristic", "k"), pred_by)
        if alpha_control:
            am = _own_margins(tr, a_models, tpos)
            a_mean, a_se, a_n = run_stats(am, axis=-1)
            rnd = _random_control(inp, tr, tpos, alpha)
            data["predicted_alpha"] = (("target", "heuristic", "k"), alpha * pred)
            data["actual_alpha"] = (("target", "heuristic", "k"), rnd[0][:, None, None] - a_mean)
            with np.errstate(invalid="ignore"):
                data["actual_alpha_se"] = (("target", "heuristic", "k"),
                                           np.sqrt(a_se**2 + (rnd[1]**2)[:, None, None]))
            data["alpha_models"] = (("target", "heuristic", "k", "run"), a_models)
        trained, tsec = tr.trained, tr.seconds

    ds = xr.Dataset(data, coords=_coords(inp, tpos, heur, ks, estimators))
    _add_correlations(ds, heur, estimators)
    ds.attrs.update(portable_attrs({
        "dmdask_counterfactuals": 1, "store": inp.path, "runs": runs,
        "control_runs": control_runs, "seed": seed, "alpha": alpha,
        "alpha_control": alpha_control, "models_trained": trained,
        "training_seconds": tsec, "seconds": time.perf_counter() - t0,
        **_overall(ds),
    }))
    return ds


def _own_margins(tr: Trainer, models: np.ndarray, tpos: np.ndarray) -> np.ndarray:
    """``models[i, ...]``'s margins on target ``tpos[i]`` (NaN where undefined)."""
    out = np.full(models.shape, np.nan)
    ok = models >= 0
    if not ok.any():
        return out
    uniq, inv = np.unique(models[ok], return_inverse=True)
    mg = tr.margins(uniq, tpos)  # [u, T]
    tix = np.broadcast_to(np.arange(models.shape[0]).reshape((-1,) + (1,) * (models.ndim - 1)),
                          models.shape)[ok]
    out[ok] = mg[inv, tix]
    return out


def _random_control(inp, tr: Trainer, tpos, alpha):
    """Mean and se of the store's completed random α-models on ``tpos``."""
    ds = inp.ds
    kind = np.asarray(ds["kind"].values).astype(str)
    a = np.asarray(ds["alpha"].values, np.float64)
    rows = np.flatnonzero((kind == "random") & np.isclose(a, alpha))
    if rows.size < 2:
        raise InputError(f"{inp.path}: the α-control needs the store's random α = {alpha} "
                         "models, and it has fewer than 2")
    m, se, _ = run_stats(tr.margins(rows, tpos), axis=0)
    return m, se


def _coords(inp, tpos, heur, ks, estimators) -> dict:
    ds = inp.ds
    c = {"target": tpos, "heuristic": np.asarray(heur, dtype=object),
         "k": np.asarray(ks, np.int64)}
    for name in ("target_label", "target_train_index"):
        if name in ds.coords:
            c[name] = ("target", np.asarray(ds[name].values)[tpos])
    if estimators:
        c["estimator"] = np.asarray(estimators, dtype=object)
    return c


def _add_correlations(ds: xr.Dataset, heur, estimators) -> None:
    for m in ("pearson", "spearman"):
        rows = [correlation(ds.predicted.sel(heuristic=h), ds.actual.sel(heuristic=h),
                            method=m) for h in heur]
        for key in ("r", "low", "high"):
            name = m if key == "r" else f"{m}_{key}"
            ds[name] = ("heuristic", np.array([r[key] for r in rows]))
        if estimators:
            rows = [correlation(ds.predicted_by.sel(estimator=e), ds.actual, method=m)
                    for e in estimators]
            for key in ("r", "low", "high"):
                ds[f"estimator_{m}" + ("" if key == "r" else f"_{key}")] = (
                    "estimator", np.array([r[key] for r in rows]))


def _overall(ds: xr.Dataset) -> dict:
    out = {}
    for m in ("pearson", "spearman"):
        r = correlation(ds.predicted, ds.actual, method=m)
        out[f"{m}_overall"], out[f"{m}_overall_low"], out[f"{m}_overall_high"], out["n_points"] = (
            r["r"], r["low"], r["high"], r["n"])
    return out
