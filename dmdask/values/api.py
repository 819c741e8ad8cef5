"""Semivalues from the run store: :func:`values` (``dmdask values``).

Every method is the measure route of REFERENCE §7 on the store's own subset runs: the
difference of means of the utility over random runs at α = q_g — maximum sample reuse — at
the nodes q_g of the quadrature rule of the semivalue's measure, weighted:

* ``banzhaf``: one node, q = ½ (``alpha=`` moves the point mass: the α-semivalue that a
  single-α datamodel estimates);
* ``shapley``: Gauss–Legendre nodes on [0, 1] (``nodes``, default
  ``dmdask.values.quadrature-nodes``; odd, so the store's α = ½ runs serve the middle node);
* ``beta``: Gauss–Jacobi nodes for Beta(a, b) on q.

Runs already in the store at a node's α (kind ``random``: its fitting models) are reused;
another node gets its own runs (kind ``custom``, masks a pure function of the store seed and
the node, added by :func:`dmdask.store.trainsets.ensure_models`, so a rerun finds them and
adds nothing; identical masks share one model) and they are trained (``dmdask.train``); the
result says how many. The store's fitting models keep their single α. With the store's Bernoulli sampling the identities are exact (the per-target
Banzhaf values *are* the ``dom_margin`` estimator, bit for bit); with fixed-size sampling
they are the conditional-size versions (Σ_i = 0 per node, O(1/N) from the Bernoulli ones),
recorded in ``attrs["sampling"]``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import xarray as xr

from .. import config
from ..errors import InputError, JobError
from .semivalues import MSRStats, measure
from .utility import parse_utility

__all__ = ["check_alpha", "values"]


def check_alpha(alpha) -> float:
    """α must lie strictly inside (0, 1)."""
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise InputError(f"alpha must be a number in (0, 1), got {alpha!r}") from None
    if not 0.0 < a < 1.0:
        raise InputError(f"alpha must be in (0, 1) (exclusive), got {alpha}")
    return a


def _node_rows(ds, q: float) -> np.ndarray:
    kind = np.asarray(ds["kind"].values).astype(str)
    al = np.asarray(ds["alpha"].values, np.float64)
    return np.flatnonzero((kind == "random") & np.isclose(al, q, rtol=0, atol=1e-6))


def _default_runs(ds) -> int:
    r = config.get("values.runs-per-node")
    if r is not None:
        return int(r)
    meta = ds.attrs["dmdask"]
    have = _node_rows(ds, float(meta["alpha"])).size if meta.get("alpha") is not None else 0
    return have if have >= 4 else int(config.get("values.min-runs"))


def _node_masks(meta: dict, q: float, R: int) -> np.ndarray:
    """R masks at α = q in the store's sampling scheme, a pure function of (store seed, q):
    the same on every rerun."""
    from ..store.sampling import sample_masks

    seed = (int(meta.get("seed", 0)) * 1_000_003 + int(round(q * 1e7))) % 2 ** 63
    return sample_masks(seed, np.arange(R), int(meta["n_train"]), q,
                        meta.get("sampling", "fixed"))


def values(store, method: str = "banzhaf", utility: str | None = None, *, a: float = 1.0,
           b: float = 1.0, alpha: float = 0.5, nodes: int | None = None,
           runs: int | None = None, client=None, workers: int | None = None,
           progress: bool = False, say: Callable[[str], None] | None = None,
           row_chunk: int = 4096) -> xr.Dataset:
    """Semivalues of the store's training examples: ``value(train, target)`` for the default
    utility (each target's own margin) or ``value(train)`` for a scalar ``utility``
    (:mod:`dmdask.values.utility`), with ``value_se`` and the number of utility evaluations
    (runs used). ``runs``: runs per node (default: as many as the store's fitting models, or
    ``dmdask.values.min-runs`` if it has none); missing runs are added and trained."""
    from ..store.runstore import open_store

    say = say or (lambda _m: None)
    t0 = time.perf_counter()
    ds = open_store(store)
    path = ds.attrs["dmdask"]["path"]
    mu = measure(method, a, b)
    labels = ds["target_label"].values if "target_label" in ds.variables else None
    util = parse_utility(utility, ds.sizes["target"], labels)
    if mu.kind == "banzhaf":
        q, om = np.array([check_alpha(alpha)]), np.array([1.0])
    else:
        q, om = mu.nodes(int(nodes or config.get("values.quadrature-nodes")))
    # a node's α as the store keeps it (float32), so reruns find their runs again
    q = q.astype(np.float32).astype(np.float64)
    R = int(runs) if runs is not None else _default_runs(ds)
    if R < 4:
        raise InputError(f"runs per node must be >= 4 (two in and two out), got {R}")
    meta = ds.attrs["dmdask"]
    # a node the store's own fitting runs cover uses them (kind random); any other node gets
    # its own seeded runs (kind custom, found again by content on reruns), so the store's
    # fitting models keep one α for fit and compare
    node_rows: dict[float, np.ndarray] = {}
    fresh: dict[float, np.ndarray] = {}
    for qg in q:
        own = _node_rows(ds, qg)
        if own.size >= R:
            node_rows[float(qg)] = own[:R]
        else:
            fresh[float(qg)] = _node_masks(meta, float(qg), R)
    n_add = 0
    if fresh:
        from ..store import trainsets

        if not meta.get("job"):
            raise JobError(f"{path}: {method} needs {R} runs at α = "
                           f"{', '.join(f'{k:.4g}' for k in fresh)} but the store has no job "
                           "to train them; import runs at those α")
        before = int(meta["n_models"])
        for qg, masks in fresh.items():
            node_rows[qg] = trainsets.ensure_models(path, masks, kind="custom", runs=1,
                                                    alpha=qg)[:, 0]
        ds = open_store(path)
        n_add = int(ds.attrs["dmdask"]["n_models"]) - before
        if n_add:
            say(f"added {n_add} runs at α = " + ", ".join(f"{k:.4g}" for k in fresh))
    need = np.concatenate([node_rows[float(qg)] for qg in q])
    todo = int((~np.asarray(ds["completed"].values)[np.unique(need)]).sum())
    trained = 0
    if todo:
        from ..train import train

        say(f"training {todo} runs")
        rep = train(path, client=client, workers=workers, progress=progress)
        trained = int(rep.models)
        ds = open_store(path)
    phi = var = 0.0
    used, minority = [], []
    for g, (qg, wg) in enumerate(zip(q, om, strict=True)):
        rows = node_rows[float(qg)]
        if not np.asarray(ds["completed"].values)[rows].all():
            raise JobError(f"{path}: runs at α = {qg:.4g} are still untrained; run dmdask "
                           "train and retry")
        st = MSRStats()
        n_in = np.zeros(ds.sizes["train"], np.int64)
        for s in range(0, rows.size, row_chunk):
            r = rows[s:s + row_chunk]
            mk = np.asarray(ds["mask"].isel(model=r).values, bool)
            n_in += mk.sum(0)
            mg = np.asarray(ds["margin"].isel(model=r, target=util.targets).values, np.float64)
            st.add(mk, util(mg))
        p, se = st.finish()
        if not util.scalar and float(qg) not in fresh:
            # the store's difference-of-means estimator: the same runs, the same number
            from ..analysis.estimators.store import difference_of_means

            dm = difference_of_means(ds, output="margin", alpha=float(qg), n_models=R,
                                     targets=util.targets, eq9=False)
            p = dm.values.T
        elif util.scalar:
            p, se = p[:, 0], se[:, 0]
        phi = phi + wg * p
        var = var + wg ** 2 * se ** 2
        used.append(rows.size)
        minority.append(int(np.minimum(n_in, rows.size - n_in).min()))
        say(f"node {g + 1}/{q.size}: α = {qg:.4g}, {rows.size} runs")
    dims = ("train",) if util.scalar else ("train", "target")
    coords = {"train": ds["train"].values,
              "node_alpha": ("node", q), "node_weight": ("node", om),
              "node_runs": ("node", np.asarray(used, np.int64)),
              "node_min_group": ("node", np.asarray(minority, np.int64))}
    if "train_label" in ds.variables:
        coords["train_label"] = ("train", np.asarray(ds["train_label"].values))
    if not util.scalar:
        coords["target"] = util.targets
        if labels is not None:
            coords["target_label"] = ("target", np.asarray(labels)[util.targets])
    out = xr.Dataset(
        {"value": (dims, np.asarray(phi, np.float64)),
         "value_se": (dims, np.sqrt(np.asarray(var, np.float64)))}, coords=coords)
    out["value"].attrs["description"] = (
        f"{mu.kind} value of each training example for the utility {util.spec!r}")
    out["value_se"].attrs["description"] = "standard error (runs at each node independent)"
    out["node_min_group"].attrs["description"] = (
        "fewest runs on either side (with / without a training example) at the node: below "
        "about 30 the difference of means and its se rest on few runs (nodes near α = 0 or 1)")
    out.attrs = {"method": mu.kind, "a": mu.a, "b": mu.b, "utility": util.spec,
                 "route": "msr" if q.size == 1 else "quadrature",
                 "n_evaluations": int(sum(used)), "n_trained_now": trained,
                 "n_added_now": int(n_add), "sampling": meta.get("sampling", "fixed"),
                 "store": path, "seconds": time.perf_counter() - t0}
    return out
