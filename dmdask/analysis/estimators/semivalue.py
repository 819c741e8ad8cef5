"""Data Shapley as an attribution estimator (REFERENCE §7): τ_i(x) = the Shapley value of
training example i for the game "margin of target x", from runs at the Gauss–Legendre nodes
over α (:func:`dmdask.values.api.values`; ``n_models`` runs per node, trained through the
store where it lacks them). Data Banzhaf needs no row of its own: on Bernoulli(½) runs it is
``dom_margin`` bit for bit."""

from __future__ import annotations

import numpy as np
import xarray as xr

from ...errors import InputError
from ..scores import make_scores
from .model import _reject, _targets, load_job

__all__ = ["shapley"]


def shapley(ds, *, n_models: int = 1000, nodes: int | None = None, targets=None,
            workers: int | None = None, progress: bool = False, **_unused) -> xr.DataArray:
    """Per-target Data Shapley values of every training example, ``n_models`` runs per node
    (the store's fitting runs serve the node at their α); attrs: ``n_trainings`` (runs used),
    ``n_trained_now``, ``mean_se``."""
    from ...values.api import values

    _reject(_unused)
    tpos = _targets(ds, targets)
    if int(n_models) < 4:
        raise InputError(f"n_models (runs per node) must be >= 4, got {n_models}")
    meta = ds.attrs["dmdask"]
    own = int(meta.get("alpha") is not None and (np.asarray(ds["kind"].values) == "random").sum())
    if not meta.get("job") and own < int(n_models):
        load_job(ds, "shapley", ())  # a jobless store cannot train the nodes: say so
    uniq = np.unique(tpos)
    spec = "output@" + ",".join(map(str, uniq))
    v = values(meta["path"], "shapley", spec, nodes=nodes, runs=int(n_models), workers=workers,
               progress=progress)
    val = v["value"].values.T[np.searchsorted(uniq, tpos)]
    se = v["value_se"].values
    attrs = {"n_models": int(n_models), "n_trainings": int(v.attrs["n_evaluations"]),
             "n_trained_now": int(v.attrs["n_trained_now"]), "nodes": int(v.sizes["node"]),
             "mean_se": float(np.nanmean(se)), "sampling": v.attrs["sampling"]}
    return make_scores(val, estimator="shapley", source="model", output="margin",
                       ds=ds.isel(target=tpos), attrs=attrs)
