"""Datamodel nearest neighbours (paper §4.2): per target the training examples with the largest
positive and the most negative weights, out of core.

The weight matrix is read as a Dask array, one block of targets at a time with the whole
training axis (rechunked that way), on the configured array backend (NumPy or CuPy chunks);
only the ``k`` indices and weights per target come back. Ties are broken by the lower training
index. A target with fewer than ``k`` positive (negative) weights has its remaining ranks
padded with index −1 and weight NaN: a zero weight is nobody's neighbour.

With a run store and ``representation=True`` the same targets get their nearest training
examples in the penultimate layer of the store's job (the ``representation_similarity``
estimator: smallest L2 distance first), side by side.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from ..errors import InputError
from ..outputs import portable_attrs
from .embeddings import open_datamodels

__all__ = ["neighbors", "representation_nearest", "top_k_rows"]


def top_k_rows(w, k: int, *, sign: int = 1):
    """(indices, values) of the ``k`` largest ``sign·w`` per row of a 2-d array on its own
    backend; entries with ``sign·w ≤ 0`` are padded (−1, NaN)."""
    from ..backend import get_namespace

    xp = get_namespace(w)
    v = sign * w.astype(xp.float64)
    n = v.shape[1]
    kk = min(k, n)
    # stable descending order: sort by (-v, index)
    order = xp.argsort(-v, axis=1, kind="stable")[:, :kk]
    vals = xp.take_along_axis(v, order, axis=1)
    keep = vals > 0
    idx = xp.where(keep, order, -1)
    out = xp.where(keep, sign * vals, xp.nan)
    if kk < k:
        pad = ((0, 0), (0, k - kk))
        idx = xp.pad(idx, pad, constant_values=-1)
        out = xp.pad(out, pad, constant_values=xp.nan)
    return idx.astype(xp.int64), out


def _weights(dm) -> tuple[xr.Dataset, object]:
    import dask.array as da

    dm = open_datamodels(dm)
    w = dm["weight"].transpose("target", "train").data
    if not isinstance(w, da.Array):
        w = da.from_array(np.asarray(w), chunks=(1024, -1))
    return dm, w


def neighbors(datamodels, k: int = 10, *, store=None, representation: bool = False,
              n_models: int = 1, seed: int = 0, client=None) -> xr.Dataset:
    """Per target the ``k`` training examples with the largest positive weights
    (``positive(target, rank)``, ``positive_weight``, ``positive_label``) and the most negative
    ones (``negative…``); with ``store`` and ``representation`` also ``nearest(target, rank)``
    and ``nearest_distance`` in the job's penultimate layer (``n_models`` models averaged).
    ``datamodels``: a Dataset or Zarr path with ``weight(target, train)``."""
    import dask

    from ..backend import dask_to_backend, to_numpy
    from ..scheduling import compute

    k = int(k)
    if k < 1:
        raise InputError(f"k must be >= 1, got {k}")
    dm, w = _weights(datamodels)
    if representation and store is None:
        raise InputError("the representation baseline needs the run store (store=)")
    w = dask_to_backend(w.rechunk({1: -1}))
    def block(b):  # NaN weights compare false: never a neighbour; counts in the same pass
        return (*(to_numpy(x) for s in (1, -1) for x in top_k_rows(b, k, sign=s)),
                to_numpy((b > 0).sum(axis=1)), to_numpy((b < 0).sum(axis=1)))

    results = compute([dask.delayed(block)(b) for b in w.to_delayed().ravel()], client=client)
    pos_i = np.concatenate([r[0] for r in results])
    pos_w = np.concatenate([r[1] for r in results])
    neg_i = np.concatenate([r[2] for r in results])
    neg_w = np.concatenate([r[3] for r in results])
    tl = np.asarray(dm["train_label"].values) if "train_label" in dm.coords else None
    data = {
        "positive": (("target", "rank"), pos_i,
                     {"description": "training indices, largest positive weight first; -1: "
                                     "fewer positive weights than k"}),
        "positive_weight": (("target", "rank"), pos_w),
        "negative": (("target", "rank"), neg_i,
                     {"description": "training indices, most negative weight first; -1: none"}),
        "negative_weight": (("target", "rank"), neg_w),
        "n_positive": ("target", np.concatenate([r[4] for r in results]).astype(np.int64)),
        "n_negative": ("target", np.concatenate([r[5] for r in results]).astype(np.int64)),
    }
    if tl is not None:
        data["positive_label"] = (("target", "rank"), np.where(pos_i >= 0, tl[pos_i], -1))
        data["negative_label"] = (("target", "rank"), np.where(neg_i >= 0, tl[neg_i], -1))
    coords = {"target": dm["target"].values, "rank": np.arange(k)}
    for c in ("target_label", "target_train_index"):
        if c in dm.coords:
            coords[c] = ("target", np.asarray(dm[c].values))
    attrs = {"dmdask_neighbors": 1, "k": k}
    if representation:
        near, dist, path = representation_nearest(store, dm, k, n_models=n_models, seed=seed)
        data["nearest"] = (("target", "rank"), near,
                           {"description": "training indices nearest in the penultimate layer"})
        data["nearest_distance"] = (("target", "rank"), dist)
        if tl is not None:
            data["nearest_label"] = (("target", "rank"), tl[near])
        attrs.update({"representation_models": n_models, "store": path})
    ds = xr.Dataset(data, coords=coords)
    ds.attrs.update(portable_attrs(attrs))
    return ds


def representation_nearest(store, datamodels: xr.Dataset, k: int, *, n_models: int = 1,
                           seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """``(nearest, distance, store path)``: per target of ``datamodels`` the ``k`` training
    examples nearest in the penultimate layer of the store's job (the
    ``representation_similarity`` estimator, ``n_models`` models averaged), smallest L2
    distance first, ties by the lower index; refuses datamodels of another store."""
    from ..analysis.estimators import compute as estimate
    from ..counterfactual.inputs import open_inputs

    inp = open_inputs(store, datamodels)  # the datamodels must belong to the store
    tpos = np.array(datamodels["target"].values, np.int64)  # a writable copy (torch indexes it)
    sc = estimate(inp.ds, "representation_similarity", targets=tpos, n_models=n_models,
                  seed=seed)
    s = np.asarray(sc.transpose("target", "train").values, np.float64)  # -distance
    order = np.lexsort((np.broadcast_to(np.arange(s.shape[1]), s.shape), -s), axis=1)
    near = order[:, :k].astype(np.int64)
    return near, -np.take_along_axis(s, near, axis=1), inp.path
