"""Spectral clusters of datamodel embeddings as a Dataset (paper §4.3.1, App. I): the
clustering of :mod:`.spectral` applied to the targets' unit-normalised datamodel weights (or
to the rows of a ``dmdask embed`` projection, normalised the same way), optionally within each
class (the paper's figures cluster one class at a time), with each cluster's label purity and,
given the run store, the same clustering of the job's penultimate-layer features beside it
(purity of both, and their agreement by ARI and NMI).
"""

from __future__ import annotations

import os

import numpy as np
import xarray as xr

from ..errors import InputError
from ..outputs import portable_attrs
from .spectral import spectral_clusters

__all__ = ["cluster", "purity", "representation_features"]


def _open(data) -> xr.Dataset:
    if isinstance(data, xr.Dataset):
        return data
    p = os.fspath(data)
    if not os.path.exists(p):
        raise InputError(f"{p}: no such datamodels or embeddings store")
    return xr.open_zarr(p, consolidated=False)


def _is_embeddings(ds: xr.Dataset) -> bool:
    return "projection" in ds and ("weight" not in ds or bool(ds.attrs.get("dmdask_embeddings")))


def _projection_rows(ds: xr.Dataset):
    """Unit-normalised ``projection(target, component)`` rows: (dask rows, kept mask)."""
    import dask.array as da

    from ..scheduling import compute

    p = ds["projection"].transpose("target", ...).data
    if not isinstance(p, da.Array):
        p = da.from_array(np.asarray(p), chunks=(4096, -1))
    p = p.astype(np.float64)
    sq, nan = (np.asarray(v) for v in compute([(p * p).sum(axis=1), da.isnan(p).any(axis=1)]))
    tg = np.asarray(ds["target"].values)
    if nan.any():
        raise InputError(f"NaN in the embeddings' projection of targets "
                         f"{tg[nan][:5].tolist()}: recompute them (dmdask embed)")
    kept = sq > 0
    if not kept.any():
        raise InputError("every projection row is zero: nothing to cluster")
    idx = np.flatnonzero(kept)
    rows = p if kept.all() else p[idx]
    norm = da.from_array(np.sqrt(sq[kept]), chunks=(rows.chunks[0],))
    return rows / norm[:, None], kept


def purity(clusters: np.ndarray, labels: np.ndarray, n_clusters: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cluster 0..n_clusters-1: (size, majority label, share of the majority label);
    an empty cluster has majority −1 and purity NaN."""
    size = np.bincount(clusters, minlength=n_clusters)
    maj = np.full(n_clusters, -1, np.int64)
    pur = np.full(n_clusters, np.nan)
    for c in range(n_clusters):
        lab = labels[clusters == c]
        if lab.size:
            vals, cnt = np.unique(lab, return_counts=True)
            maj[c], pur[c] = vals[np.argmax(cnt)], cnt.max() / lab.size
    return size, maj, pur


def representation_features(store_ds: xr.Dataset, targets: np.ndarray, *, n_models: int = 1,
                            seed: int = 0) -> np.ndarray:
    """Penultimate-layer features (targets × features) of the store's job, as the
    ``representation_similarity`` estimator extracts them (``n_models`` models trained on the
    full training set): each model's rows unit-normalised, concatenated and divided by √M, so
    squared distances are the mean over models of the per-model ones."""
    from ..analysis.estimators.model import _inputs, _one, load_job, train_models
    from ..optional import torch as _torch

    torch = _torch()
    job = load_job(store_ds, "the representation clustering",
                   ("model_inputs", "train_params", "features"))
    tr = train_models(store_ds, job, models="full", n_models=n_models, seed=seed)
    _, _, xtg, _ = _inputs(job, np.asarray(targets, np.int64), torch.float64)
    out = []
    with torch.no_grad():
        for b in range(tr["masks"].shape[0]):
            h = job.features(_one(tr["params"], b, torch.float64), xtg).numpy()
            nrm = np.linalg.norm(h, axis=1, keepdims=True)
            out.append(h / np.where(nrm > 0, nrm, 1.0))
    return np.concatenate(out, axis=1) / np.sqrt(len(out))


def _run(x, groups, n_clusters, kw):
    """Cluster the rows of each group (all rows: one group) with global cluster ids:
    (labels, embedding, eigenvalues per group, method, cluster → group)."""
    n = x.shape[0]
    lab = np.full(n, -1, np.int64)
    emb = np.full((n, n_clusters), np.nan)
    eig, method = [], None
    for g, (name, rows) in enumerate(groups):
        if n_clusters > rows.size:
            where = "" if name is None else f" of class {name}"
            raise InputError(f"{n_clusters} clusters for the {rows.size} points{where}: the "
                             "cluster count must not exceed the number of points")
        xs = x if rows.size == n else x[rows]
        r = spectral_clusters(xs, n_clusters, **kw)
        lab[rows] = r.labels + g * n_clusters
        emb[rows] = r.embedding
        eig.append(r.eigenvalues)
        method = r.method
    return lab, emb, np.array(eig), method


def cluster(data, n_clusters: int, *, method: str = "auto", gamma: float | None = None,
            n_landmarks: int | None = None, n_neighbors: int | None = None,
            knn_weights: str | None = None, per_class: bool = False, store=None,
            representation: bool = False, n_models: int = 1, seed: int = 0,
            chunks: tuple[int, int] | None = None, client=None) -> xr.Dataset:
    """Spectral clusters of the targets of a datamodels Dataset (unit-normalised weights,
    all-zero targets excluded and counted) or of an embeddings Dataset (``projection`` rows,
    unit-normalised). Variables ``cluster(target)``, ``spectral_embedding(target, dim)``,
    ``size``/``majority``/``purity(cluster_id)``; with ``store`` and ``representation`` the same
    for the job's penultimate features (``representation_*``) and their agreement (attrs
    ``ari``, ``nmi``; per class ``agreement_ari``/``agreement_nmi(clustering)``, one clustering per class)."""
    from .embeddings import embeddings

    ds = _open(data)
    if _is_embeddings(ds):
        rows, kept = _projection_rows(ds)
        source = "embeddings"
        if chunks is not None:
            rows = rows.rechunk(chunks)
    elif "weight" in ds:
        emb = embeddings(ds, chunks=chunks)
        rows, kept, source = emb.data, emb.kept, "datamodels"
    else:
        raise InputError("neither datamodels (a weight variable) nor embeddings (a projection "
                         "variable from `dmdask embed`) given")
    targets = np.asarray(ds["target"].values)[kept]
    n_zero = int((~kept).sum())
    labels = (np.asarray(ds["target_label"].values)[kept] if "target_label" in ds.coords
              else None)
    store_ds = None
    if store is not None:
        store_ds = _store_for(store, ds)
        if labels is None and "target_label" in store_ds.coords:
            labels = np.asarray(store_ds["target_label"].values)[targets.astype(np.int64)]
    if representation and store_ds is None:
        raise InputError("the representation clustering needs the run store (store=)")
    if per_class and labels is None:
        raise InputError("per-class clustering needs the targets' labels (a target_label "
                         "coordinate, or the run store)")
    n = targets.size
    if per_class:
        classes = np.unique(labels)
        groups = [(c, np.flatnonzero(labels == c)) for c in classes]
    else:
        classes, groups = None, [(None, np.arange(n))]
    kw = dict(method=method, gamma=gamma, n_landmarks=n_landmarks, n_neighbors=n_neighbors,
              knn_weights=knn_weights, seed=seed, client=client)
    if int(n_clusters) > n:
        raise InputError(f"{int(n_clusters)} clusters for {n} points"
                         + (f" ({n_zero} all-zero targets excluded)" if n_zero else "")
                         + ": the cluster count must not exceed the number of points")
    lab, sp, eig, resolved = _run(rows, groups, int(n_clusters), kw)
    K = int(n_clusters) * len(groups)
    data_vars = {
        "cluster": ("target", lab, {"description": "spectral cluster of the target's "
                                    "normalised datamodel embedding"}),
        "spectral_embedding": (("target", "dim"), sp),
        "eigenvalue": (("clustering", "dim"), eig,
                       {"description": "top eigenvalues of D^-1/2 A D^-1/2 per clustering"}),
        "size": ("cluster_id", np.bincount(lab, minlength=K)),
    }
    coords = {"target": targets, "dim": np.arange(int(n_clusters)), "cluster_id": np.arange(K),
              "clustering": np.arange(len(groups))}
    attrs = {"dmdask_clusters": 1, "n_clusters": int(n_clusters), "method": resolved,
             "gamma": float(gamma if gamma is not None else _cfg("gamma", 1.0)),
             "per_class": bool(per_class), "n_zero": n_zero, "source": source, "seed": int(seed)}
    if resolved == "nystrom":
        attrs["landmarks"] = int(n_landmarks if n_landmarks is not None
                                 else _cfg("landmarks", 1000))
    if resolved == "knn":
        attrs["neighbors"] = int(n_neighbors if n_neighbors is not None
                                 else _cfg("neighbors", 10))
        attrs["knn_weights"] = knn_weights or _cfg("knn-weights", "connectivity")
    if per_class:
        coords["cluster_class"] = ("cluster_id", np.repeat(classes, int(n_clusters)))
        coords["clustering_class"] = ("clustering", classes)
    if labels is not None:
        coords["target_label"] = ("target", labels)
        _, maj, pur = purity(lab, labels, K)
        data_vars["majority"] = ("cluster_id", maj)
        data_vars["purity"] = ("cluster_id", pur, {"description": "share of the cluster's "
                                                 "majority label"})
        attrs["purity_overall"] = _overall(lab, labels, K)
    if representation:
        feats = representation_features(store_ds, targets.astype(np.int64), n_models=n_models,
                                         seed=seed)
        rlab, rsp, _, _ = _run(feats, groups, int(n_clusters), kw)
        data_vars["representation_cluster"] = ("target", rlab, {
            "description": "the same clustering of the job's penultimate-layer features"})
        data_vars["representation_embedding"] = (("target", "dim"), rsp)
        data_vars["representation_size"] = ("cluster_id", np.bincount(rlab, minlength=K))
        # how far each datamodel cluster stays inside one representation cluster
        _, _, over = purity(lab, rlab, K)
        data_vars["representation_overlap"] = ("cluster_id", over, {
            "description": "share of the cluster in its most common representation cluster"})
        if labels is not None:
            _, rmaj, rpur = purity(rlab, labels, K)
            data_vars["representation_majority"] = ("cluster_id", rmaj)
            data_vars["representation_purity"] = ("cluster_id", rpur)
            attrs["representation_purity_overall"] = _overall(rlab, labels, K)
        ari, nmi = _agreement(lab, rlab, groups)
        attrs.update(ari=float(np.mean(ari)), nmi=float(np.mean(nmi)),
                     representation_models=int(n_models))
        if per_class:
            data_vars["agreement_ari"] = ("clustering", ari)
            data_vars["agreement_nmi"] = ("clustering", nmi)
    if labels is not None and not per_class:
        from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

        attrs["ari_labels"] = float(adjusted_rand_score(labels, lab))
        attrs["nmi_labels"] = float(normalized_mutual_info_score(labels, lab))
    out = xr.Dataset(data_vars, coords=coords)
    out.attrs.update(portable_attrs(attrs))
    return out


def _cfg(key, default):
    from .. import config

    return config.get(f"cluster.{key}", default)


def _overall(lab, labels, K) -> float:
    size, _, pur = purity(lab, labels, K)
    ok = size > 0
    return float((size[ok] * pur[ok]).sum() / size.sum())


def _agreement(a, b, groups) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    ari = [adjusted_rand_score(a[r], b[r]) for _, r in groups]
    nmi = [normalized_mutual_info_score(a[r], b[r]) for _, r in groups]
    return np.array(ari), np.array(nmi)


def _store_for(store, ds: xr.Dataset) -> xr.Dataset:
    """The run store, checked against the datamodels where they are datamodels."""
    if "weight" in ds:
        from ..counterfactual.inputs import open_inputs

        return open_inputs(store, ds).ds
    from ..store.runstore import open_store

    p = os.fspath(store)
    if not os.path.exists(p):
        raise InputError(f"{p}: no such run store")
    sds = open_store(p)
    t = np.asarray(ds["target"].values, np.int64)
    if t.min() < 0 or t.max() >= sds.sizes["target"]:
        raise InputError(f"the embeddings' targets lie outside the store's "
                         f"[0, {sds.sizes['target']})")
    return sds
