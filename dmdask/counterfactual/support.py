"""Data support and mislabel brittleness (paper eq. 12, Algorithm 1, App. F.3–F.4;
REFERENCE §3), found by a guided search and certified by training.

For each target and guide (the datamodels, a baseline estimator's scores, or ``random_class``:
the target's class in random order, then the rest in random order) the guide orders the
training set, most supportive first. The search trains ``runs`` models on
the full training set with the first k removed (``mode="remove"``, kind ``counterfactual``) or
relabelled to the target's most confused class (``mode="relabel"``, kind ``flip``), for k on a
grid in ascending rounds; the control (k = 0) is the full-data models. A (target, guide) stops
once ``confirm`` more grid points were measured after the first mean margin ≤ 0 (the guided
search: nothing past the crossing is trained). The mean margins are fitted by a decreasing
isotonic regression and k̂ is its first zero crossing (:mod:`.crossing`); the estimate is
``support = ⌈inflation·k̂⌉`` (paper: 1.2) and it is *certified* when ``runs`` models trained
without (or with relabelled) those examples misclassify the target on average (mean margin
< 0). A control ≤ 0 gives support 0 (nothing to remove); no crossing up to the largest k gives
``support = inf`` (stored as IEEE infinity, "> k_max"; ``k_max`` is an attribute).

Without training (F.3.2): ``heuristic_support`` = min{k : Σ_{top-k} w ≥ control mean};
``heuristic_support_model`` = min{k : b + Σ_{j∉top-k} w_j ≤ 0} (the datamodel's own
prediction). Both are computed for the whole k range, inf where never reached.

Most confused class (``mode="relabel"``): the wrong class with the highest mean logit over the
full-data control models, from the job's optional hook ``train_logits(masks, seeds,
train_labels=None) -> [B, n_target, n_classes]`` run on the control models' masks and seeds;
``flip_class=`` gives the classes instead (for jobs without the hook).
"""

from __future__ import annotations

import time

import numpy as np
import xarray as xr

from ..errors import InputError
from ..outputs import portable_attrs
from .crossing import decreasing_fit, zero_crossing
from .grid import check_k, control_models
from .inputs import (
    baseline_scores,
    check_estimators,
    check_runs,
    choose_targets,
    job_class,
    open_inputs,
    weights_of,
)
from .removal import removal_order, top_k
from .summary import correlation, run_stats
from .training import Trainer, full_mask

__all__ = ["default_grid", "heuristic_support", "support"]

MODES = ("remove", "relabel")


def default_grid(n_train: int) -> list[int]:
    """k = 10·2^i (10 … 1280, the paper's grid), kept to at most half the training set."""
    return [10 * 2**i for i in range(8) if 10 * 2**i <= max(10, n_train // 2)]


def heuristic_support(w: np.ndarray, control: float, bias: float | None = None) -> float:
    """F.3.2: the smallest k with Σ_{top-k} w ≥ ``control`` (or, given ``bias``, with the
    datamodel's own prediction b + Σ_{j∉top-k} w_j ≤ 0); 0 if ``control`` ≤ 0, inf if never."""
    w = np.asarray(w, np.float64)
    cum = np.concatenate([[0.0], np.cumsum(w[top_k(w, w.size)])])
    if bias is None:
        if control <= 0:
            return 0.0
        hit = np.flatnonzero(cum >= control)
    else:
        hit = np.flatnonzero(bias + w.sum() - cum <= 0)
    return float(hit[0]) if hit.size else float("inf")


def _most_confused(inp, cls, ctrl_models, tpos) -> np.ndarray:
    from ..store import jobspec

    if getattr(cls, "train_logits", None) is None:
        raise InputError(f"{inp.path}: job {inp.meta['job']['path']} has no train_logits hook "
                         "to find each target's most confused class; pass flip_class=")
    job = jobspec.construct_job(inp.meta["job"]["path"], inp.meta["job"].get("params") or {})
    seeds = np.asarray(inp.ds["seed"].values)[ctrl_models]
    masks = np.ones((ctrl_models.size, inp.ds.sizes["train"]), bool)
    logits = np.asarray(job.train_logits(masks, seeds), np.float64)[:, tpos]  # [B, T, C]
    mean = logits.mean(axis=0)
    lab = np.asarray(inp.ds["target_label"].values)[tpos]
    mean[np.arange(tpos.size), lab] = -np.inf
    return mean.argmax(axis=1).astype(np.int64)


def support(store, datamodels, *, targets: int | None = 10, indices=None, k=None,
            estimators=(), guides=None, runs: int = 5, control_runs: int | None = None,
            inflation: float = 1.2, confirm: int = 1, mode: str = "remove", flip_class=None,
            seed: int = 0, client=None, scheduler: str | None = None,
            workers: int | None = None, progress: bool = True) -> xr.Dataset:
    """Data support (``mode="remove"``) or mislabel brittleness (``mode="relabel"``) of
    ``targets`` (class-balanced draw, or ``indices``), guided by the datamodels and by each
    of ``estimators`` (and ``"random_class"`` if named in ``guides``). See the module
    docstring. Returns a Dataset with ``support``, ``k_hat``, ``certified``,
    ``certified_margin`` over ``(target, estimator)``, the curves ``mean_margin``,
    ``fitted``, ``n_runs`` over ``(target, estimator, k)``, ``heuristic_support``,
    ``heuristic_support_model``, ``control_mean`` over ``target``, and per estimator
    ``share_certified``, ``median_support``."""
    t0 = time.perf_counter()
    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES}, got {mode!r}")
    inp = open_inputs(store, datamodels)
    n_train = inp.ds.sizes["train"]
    ks = check_k(default_grid(n_train) if k is None else k, n_train)
    if not inflation >= 1.0:
        raise InputError(f"inflation must be >= 1, got {inflation}")
    runs, control_runs = check_runs(runs, control_runs)
    estimators = check_estimators(estimators)
    guides = ["datamodels"] + estimators + [g for g in (guides or ()) if g == "random_class"]
    bad = [g for g in (guides[1:]) if g != "random_class" and g not in estimators]
    if bad:
        raise InputError(f"unknown guide {bad[0]!r}")
    tpos = choose_targets(inp, targets, indices, seed)
    cls = job_class(inp, relabel=(mode == "relabel"))
    W, B = weights_of(inp, tpos)
    base = baseline_scores(inp, estimators, tpos)
    trl = np.asarray(inp.ds["train_label"].values, np.int64)
    tl = np.asarray(inp.ds["target_label"].values)[tpos]
    T, G, K = tpos.size, len(guides), len(ks)
    order = np.zeros((T, G, n_train), np.int64)
    olen = np.zeros((T, G), np.int64)
    for i, t in enumerate(tpos):
        for g, name in enumerate(guides):
            if name == "datamodels":
                o = top_k(W[i], n_train)
            elif name == "random_class":
                # the class in random order, then (the class exhausted) the rest at random, so
                # the search can go past the class size
                o = removal_order("random_class", W[i], target=int(t), target_label=int(tl[i]),
                                  train_label=trl, seed=seed)
                rest = np.setdiff1d(np.arange(n_train), o)
                o = np.concatenate([o, rest[np.random.default_rng([seed, int(t)]).permutation(
                    rest.size)]])
            else:
                o = top_k(base[name][0][i], n_train)
            order[i, g, :o.size], olen[i, g] = o, o.size
    kind = "counterfactual" if mode == "remove" else "flip"

    def sets(i, g, kk):
        r = order[i, g, :kk]
        if mode == "remove":
            return full_mask(n_train, r), None
        lab = trl.copy()
        lab[r] = flip[i]
        return np.ones(n_train, bool), lab

    mean = np.full((T, G, K), np.nan)
    nrun = np.zeros((T, G, K), np.int64)
    models = np.full((T, G, K, runs), -1, np.int64)
    with Trainer(inp.path, client=client, scheduler=scheduler, workers=workers,
                 progress=progress) as tr:
        ctrl_idx = control_models(tr, n_train, control_runs)
        tr.train()
        cm, cse, _ = run_stats(tr.margins(ctrl_idx, tpos), axis=0)
        flip = None
        if mode == "relabel":
            if flip_class is not None:
                flip = np.broadcast_to(np.asarray(flip_class, np.int64), (T,)).copy()
                if (flip == tl).any():
                    raise InputError("flip_class: a target's flip class is its own label")
            else:
                flip = _most_confused(inp, cls, ctrl_idx, tpos)
        active = np.broadcast_to((cm > 0)[:, None], (T, G)).copy()
        below = np.zeros((T, G), np.int64)  # grid points measured since the first mean <= 0
        for j, kk in enumerate(ks):
            todo = [(i, g) for i in range(T) for g in range(G) if active[i, g] and olen[i, g] >= kk]
            if not todo:
                break
            built = [sets(i, g, kk) for i, g in todo]
            masks = np.stack([b[0] for b in built])
            labels = None if mode == "remove" else np.stack([b[1] for b in built])
            idx = tr.models(masks, kind=kind, runs=runs, labels=labels)
            tr.train()
            mg = tr.margins(idx, tpos)  # [m, runs, T]
            for n, (i, g) in enumerate(todo):
                models[i, g, j] = idx[n]
                m, _, c = run_stats(mg[n, :, i])
                mean[i, g, j], nrun[i, g, j] = m, c
                if below[i, g] or m <= 0:
                    below[i, g] += 1
                    if below[i, g] > confirm:
                        active[i, g] = False
        khat = np.full((T, G), np.nan)
        fitted = np.full((T, G, K), np.nan)
        kk_all = np.concatenate([[0], ks]).astype(np.float64)
        for i in range(T):
            for g in range(G):
                m = np.concatenate([[cm[i]], mean[i, g]])
                khat[i, g] = zero_crossing(kk_all, m)
                ok = np.isfinite(m)
                fitted[i, g, ok[1:]] = decreasing_fit(kk_all[ok], m[ok])[1:]
        sup = np.where(np.isfinite(khat) & (khat > 0), np.ceil(inflation * khat - 1e-9), khat)
        # certification: train the inflated removal, once per (target, guide)
        cert = np.full((T, G), np.nan)
        cert_margin = np.full((T, G), np.nan)
        todo = [(i, g) for i in range(T) for g in range(G)
                if np.isfinite(sup[i, g]) and 0 < sup[i, g] <= olen[i, g]]
        if todo:
            built = [sets(i, g, int(sup[i, g])) for i, g in todo]
            idx = tr.models(np.stack([b[0] for b in built]), kind=kind, runs=runs,
                            labels=None if mode == "remove" else np.stack([b[1] for b in built]))
            tr.train()
            mg = tr.margins(idx, tpos)
            for n, (i, g) in enumerate(todo):
                m, _, _ = run_stats(mg[n, :, i])
                cert_margin[i, g], cert[i, g] = m, float(m < 0)
        trained, tsec = tr.trained, tr.seconds

    heur = np.array([heuristic_support(W[i], cm[i]) for i in range(T)])
    heur_model = np.array([heuristic_support(W[i], cm[i], B[i]) for i in range(T)])
    coords = {"target": tpos, "estimator": np.asarray(guides, dtype=object),
              "k": np.asarray(ks, np.int64)}
    for c in ("target_label", "target_train_index"):
        if c in inp.ds.coords:
            coords[c] = ("target", np.asarray(inp.ds[c].values)[tpos])
    data = {
        "support": (("target", "estimator"), sup,
                    {"description": f"⌈{inflation}·k̂⌉; 0: control ≤ 0; inf: > k_max"}),
        "k_hat": (("target", "estimator"), khat),
        "certified": (("target", "estimator"), cert,
                      {"description": "1: mean margin < 0 with the support removed; NaN: "
                                      "support 0 or inf"}),
        "certified_margin": (("target", "estimator"), cert_margin),
        "mean_margin": (("target", "estimator", "k"), mean),
        "fitted": (("target", "estimator", "k"), fitted),
        "n_runs": (("target", "estimator", "k"), nrun),
        "models": (("target", "estimator", "k", "run"), models),
        "control_mean": ("target", cm),
        "control_se": ("target", cse),
        "heuristic_support": ("target", heur),
        "heuristic_support_model": ("target", heur_model),
        "share_certified": ("estimator", np.array(
            [np.nanmean(cert[:, g]) if np.isfinite(cert[:, g]).any() else np.nan
             for g in range(G)])),
        # inf (> k_max) sorts last, so the median is finite while most targets cross
        "median_support": ("estimator", np.median(sup, axis=0)),
    }
    if mode == "relabel":
        data["flip_class"] = ("target", flip)
    ds = xr.Dataset(data, coords=coords)
    rs = correlation(heur, sup[:, 0], method="spearman")
    ds.attrs.update(portable_attrs({
        "dmdask_support": 1, "mode": mode, "store": inp.path, "runs": runs,
        "control_runs": control_runs, "inflation": inflation, "confirm": confirm,
        "k_max": ks[-1], "seed": seed, "models_trained": trained, "training_seconds": tsec,
        "seconds": time.perf_counter() - t0,
        "heuristic_spearman": rs["r"], "heuristic_spearman_low": rs["low"],
        "heuristic_spearman_high": rs["high"], "heuristic_n": rs["n"],
    }))
    return ds

