"""Faithfulness of principal components (paper App. J.1; REFERENCE.md §4).

For a principal component ``v`` (coordinates = training examples), remove the ``k`` training
examples with the most positive coordinates (direction ``positive``; separately the most
negative, ``negative``), retrain ``runs`` models on each reduced set through the run store and
the cluster (:class:`dmdask.counterfactual.training.Trainer`: the sets are found again by
content, so a rerun trains only what is missing, and the full-data controls are shared with
every other counterfactual of the store), and report the mean margin change
``control − removed`` (a drop is positive, as the counterfactual stage reports effects) with
its standard error on three groups of targets: the ``n_targets`` with the largest projections
on the component (``top``), the ``n_targets`` with the smallest (``bottom``), and all targets
with datamodels (``all``).

The standard error of a group mean treats the group's per-target mean drops as the data:
``se = sqrt(Σ_t (se_removed,t² + se_control,t²)) / n_group`` (the run-to-run noise of each
target, independent across the models of different sets), NaN with fewer than two runs.

Expected (the paper): removing the positive coordinates lowers the top group (positive drop)
and raises the bottom group; the negative coordinates the reverse; the effect grows with k;
the whole target set barely moves.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from ..errors import InputError
from ..outputs import portable_attrs
from .embeddings import open_input

__all__ = ["DIRECTIONS", "GROUPS", "faithfulness", "removal_sets"]

DIRECTIONS = ("positive", "negative")
GROUPS = ("top", "bottom", "all")


def _open_embeddings(emb) -> xr.Dataset:
    emb = open_input(emb, "embeddings (PCA)")
    lack = [v for v in ("components", "projection") if v not in emb]
    if lack:
        raise InputError(f"the embeddings Dataset lacks {', '.join(lack)} (make it with "
                         "`dmdask embed`)")
    return emb


def removal_sets(component: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """The ``k`` training indices with the most positive and the most negative coordinates
    of ``component`` (ties: the lower index first)."""
    v = np.asarray(component, np.float64)
    idx = np.arange(v.size)
    return {"positive": np.lexsort((idx, -v))[:k], "negative": np.lexsort((idx, v))[:k]}


def _check_ints(vals, what: str, lo: int, hi: int) -> list[int]:
    try:
        out = [int(x) for x in (vals if np.iterable(vals) else [vals])]
    except (TypeError, ValueError) as e:
        raise InputError(f"{what}: expected integers, got {vals!r}") from e
    if not out:
        raise InputError(f"{what}: none given")
    bad = [x for x in out if x < lo or x > hi]
    if bad:
        raise InputError(f"{what} {bad[:5]} outside [{lo}, {hi}]")
    if len(set(out)) != len(out):
        raise InputError(f"{what} are repeated")
    return out


def faithfulness(store, datamodels, embeddings, *, components=(0, 1), k=(50, 200),
                 runs: int = 5, control_runs: int | None = None, n_targets: int = 100,
                 client=None, scheduler: str | None = None, workers: int | None = None,
                 progress: bool = True) -> xr.Dataset:
    """Mean margin change (control − removed) of the ``top``/``bottom``/``all`` target groups
    after removing the ``k`` most positive or most negative coordinates of each principal
    component (see the module docstring). ``embeddings``: the Dataset or Zarr path of
    :func:`dmdask.similarity.pca` on these datamodels. Returns a Dataset over
    ``(component, direction, k, group)`` with ``effect``, ``effect_se``, ``n_group``, the
    removal sets ``removed(component, direction, rank)`` and the groups' targets."""
    from ..counterfactual.grid import control_models
    from ..counterfactual.inputs import check_runs, job_class, open_inputs
    from ..counterfactual.summary import run_stats
    from ..counterfactual.training import Trainer, full_mask

    inp = open_inputs(store, datamodels)
    emb = _open_embeddings(embeddings)
    n_train = inp.ds.sizes["train"]
    if emb.sizes.get("train") != n_train:
        raise InputError(f"the embeddings have {emb.sizes.get('train')} training coordinates, "
                         f"the store {n_train}: they come from other datamodels")
    runs, control_runs = check_runs(runs, control_runs)
    comps = _check_ints(components, "components", 0, emb.sizes["component"] - 1)
    ks = sorted(_check_ints(k, "k", 1, n_train - 1))
    job_class(inp)
    have = np.asarray(inp.dm["target"].values, np.int64)
    etg = np.asarray(emb["target"].values, np.int64)
    missing = np.setdiff1d(etg, have)
    if missing.size:
        raise InputError(f"the embeddings' targets {missing[:5].tolist()} have no datamodels "
                         "here: the embeddings come from other datamodels")
    n = int(n_targets)
    if n < 1 or n > etg.size:
        raise InputError(f"n_targets must be in [1, {etg.size}] (the embedded targets), "
                         f"got {n_targets}")
    V = np.asarray(emb["components"].transpose("component", "train").values, np.float64)
    Z = np.asarray(emb["projection"].transpose("target", "component").values, np.float64)
    kmax = ks[-1]
    sets = {c: removal_sets(V[c], kmax) for c in comps}
    # per component: the n targets with the largest / smallest projections (store positions)
    rows = np.arange(etg.size)
    groups = {c: {"top": etg[np.lexsort((rows, -Z[:, c]))[:n]],
                  "bottom": etg[np.lexsort((rows, Z[:, c]))[:n]], "all": have} for c in comps}
    tpos = have  # margins of every target with a datamodel: the groups are subsets
    col = {int(t): i for i, t in enumerate(tpos)}
    masks, where = [], []
    for ci, c in enumerate(comps):
        for di, d in enumerate(DIRECTIONS):
            for ki, kk in enumerate(ks):
                masks.append(full_mask(n_train, sets[c][d][:kk]))
                where.append((ci, di, ki))
    with Trainer(inp.path, client=client, scheduler=scheduler, workers=workers,
                 progress=progress) as tr:
        ctrl = control_models(tr, n_train, control_runs)
        models = tr.models(np.stack(masks), kind="counterfactual", runs=runs)
        tr.train()
        cm, cse, _ = run_stats(tr.margins(ctrl, tpos), axis=0)  # [T]
        mg = tr.margins(models, tpos)  # [sets, runs, T]
        trained = tr.trained
    mean, se, nruns = run_stats(mg, axis=1)  # [sets, T]
    drop = cm[None] - mean
    var = se**2 + cse[None] ** 2
    shape = (len(comps), len(DIRECTIONS), len(ks), len(GROUPS))
    effect, effect_se = np.full(shape, np.nan), np.full(shape, np.nan)
    n_group = np.zeros(shape, np.int64)
    for s, (ci, di, ki) in enumerate(where):
        for gi, g in enumerate(GROUPS):
            cols = np.array([col[int(t)] for t in groups[comps[ci]][g]])
            effect[ci, di, ki, gi] = drop[s, cols].mean()
            effect_se[ci, di, ki, gi] = np.sqrt(var[s, cols].sum()) / cols.size
            n_group[ci, di, ki, gi] = cols.size
    removed = np.stack([np.stack([sets[c][d] for d in DIRECTIONS]) for c in comps])
    removed_coord = np.stack([np.stack([V[c, sets[c][d]] for d in DIRECTIONS]) for c in comps])
    ds = xr.Dataset(
        {
            "effect": (("component", "direction", "k", "group"), effect,
                       {"description": "mean margin change control - removed over the group"}),
            "effect_se": (("component", "direction", "k", "group"), effect_se),
            "n_group": (("component", "direction", "k", "group"), n_group),
            "models": (("component", "direction", "k", "run"),
                       models.reshape(len(comps), len(DIRECTIONS), len(ks), runs)),
            "n_runs": (("component", "direction", "k"),
                       nruns.min(axis=-1).reshape(shape[:3]).astype(np.int64)),
            "removed": (("component", "direction", "rank"), removed,
                        {"description": "training indices removed, in order (first k of them)"}),
            "removed_coordinate": (("component", "direction", "rank"), removed_coord),
            "top_targets": (("component", "member"),
                            np.stack([groups[c]["top"] for c in comps])),
            "bottom_targets": (("component", "member"),
                               np.stack([groups[c]["bottom"] for c in comps])),
            "control_mean": ("target", cm),
            "control_se": ("target", cse),
        },
        coords={"component": np.asarray(comps), "direction": list(DIRECTIONS),
                "k": np.asarray(ks), "group": list(GROUPS), "rank": np.arange(kmax),
                "member": np.arange(n), "target": tpos},
    )
    ds.attrs.update(portable_attrs({
        "dmdask_faithfulness": 1, "store": inp.path, "runs": runs,
        "control_runs": control_runs, "n_targets": n, "models_trained": trained,
        "fit_on": emb.attrs.get("fit_on"),
    }))
    return ds
