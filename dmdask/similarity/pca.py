"""PCA of datamodel embeddings (paper §4.3.2, App. J; REFERENCE.md §4), out of core.

The embeddings (:func:`dmdask.similarity.embeddings`: unit-normalised weight rows, all-zero
targets excluded and counted) of a *fit set* of targets — by default the training-example
datamodels (``target_train_index ≥ 0``) when there are any, else all targets — are centred by
their mean (as scikit-learn's ``PCA``) and decomposed by a randomized SVD (Halko et al. 2011):
``l = K + oversamples`` random columns, ``q`` iterations of subspace iteration on the right
singular vectors, each re-orthonormalised by QR. Every target is then projected with that
mean and those components: the fit rows by ``U·Σ`` (scikit-learn's ``fit_transform``), the
other rows by ``(ê − mean)·Vᵀ`` (its ``transform``).

Why not ``dask.array.linalg.svd_compressed``: it accepts chunks along both axes, but built as
one graph (``compute=False``) every chunk of the matrix is an input of the first and of the
last product, so the scheduler holds the whole matrix in memory between them (measured, and
asserted by ``tests/test_pca.py``); with ``compute=True`` it needs a distributed client; and
it reads the matrix twice per power iteration. Here each pass is its own computation: one
task per row block of chunks (both axes chunked, NumPy or CuPy chunks) computes
``X_iᵀ·(X_i·P)`` and returns only that n × l product, so one read of the matrix applies
``XᵀX``; the centring is implicit (``CᵀC = XᵀX − m·μμᵀ``, ``C·P = X·P − 1·μᵀP``), so neither
the centred nor the raw matrix is ever materialised. The mean and the total variance come
from the first pass. Passes over the fit rows: ``q + 2`` (Halko et al.'s QR scheme reaches
the same Krylov power in ``2q + 2``); one more over the other rows for their projections.

Effective dimensionality (participation ratio of the computed spectrum, components for 50% and
90% of the total variance) and, with a run store and ``representation=True``, the same
spectrum of the penultimate-layer features of the store's job (the features
``representation_similarity`` uses) on the same examples, side by side.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import xarray as xr

from .. import config
from ..errors import InputError
from ..outputs import portable_attrs
from .embeddings import Embeddings, embeddings

__all__ = ["FIT_ON", "effective_dimensionality", "pca", "randomized_pca"]

FIT_ON = ("train", "targets", "all")


def _matmul_pass(X, Q, *, transpose: bool = False, extra=(), client=None):
    """``X·Q`` (``Xᵀ·Q`` with ``transpose``) of a lazy 2-d ``X`` and an in-memory ``Q``, as one
    computation that returns only the product (and ``extra`` lazy results of the same pass)."""
    import dask.array as da

    from ..scheduling import compute

    chunks = (X.chunks[0] if transpose else X.chunks[1], (Q.shape[1],))
    Qd = da.from_array(Q, chunks=chunks, asarray=False, inline_array=True)
    prod = X.T.dot(Qd) if transpose else X.dot(Qd)
    return compute([prod, *extra], client=client)


def _orth(Y, xp):
    """An orthonormal basis of the columns of ``Y`` (float64 QR, back in ``Y``'s dtype)."""
    q, _ = xp.linalg.qr(Y.astype(xp.float64))
    return q.astype(Y.dtype)


def _gram_block(P, first, *chunks):
    """``X_iᵀ·(X_i·P)`` of one row block ``X_i`` (given as its column chunks) as float64,
    and in the first pass also the block's column sums and sum of squares."""
    from ..backend import get_namespace

    xp = get_namespace(chunks[0], P)
    edges = np.cumsum([0] + [c.shape[1] for c in chunks])
    Y = sum(c @ P[a:b] for c, a, b in zip(chunks, edges[:-1], edges[1:], strict=True))
    out = xp.concatenate([(c.T @ Y).astype(xp.float64) for c in chunks], axis=0)
    if not first:
        return out, None, None
    colsum = xp.concatenate([c.sum(axis=0, dtype=xp.float64) for c in chunks])
    sumsq = sum(float((c.astype(xp.float64) ** 2).sum()) for c in chunks)
    return out, colsum, sumsq


def _add(a, b):
    return tuple(None if x is None else x + y for x, y in zip(a, b, strict=True))


def _gram_pass(X, P, *, first: bool, client=None):
    """``XᵀX·P`` in ONE read of ``X``: one task per row block of chunks (the row block's
    chunks are its inputs; it returns only an n × l product), summed by a binary tree."""
    import dask

    from ..scheduling import compute

    Pd = dask.delayed(P, traverse=False)
    parts = [dask.delayed(_gram_block, pure=True)(Pd, first, *row)
             for row in X.to_delayed()]
    while len(parts) > 1:  # a tree: partial sums are freed as they are added
        odd = [parts.pop()] if len(parts) % 2 else []
        parts = [dask.delayed(_add)(a, b)
                 for a, b in zip(parts[::2], parts[1::2], strict=True)] + odd
    (res,) = compute(parts, client=client)
    return res


def randomized_pca(X, n_components: int, *, n_power_iter: int, n_oversamples: int = 10,
                   seed: int = 0, client=None, progress: bool = False) -> dict:
    """Mean-centred randomized SVD of a lazy 2-d dask array ``X`` (m × n), out of core.

    Subspace iteration on the right singular vectors with ``CᵀC = XᵀX − m·μμᵀ`` applied in
    one pass per iteration (each row block multiplies by ``P`` and back), re-orthonormalised
    by QR after each; the first pass also yields the mean and the total variance; the last
    pass forms ``B = C·P`` (m × l), whose small SVD gives the components. ``q`` iterations
    reach ``span((CᵀC)^(q+1)·Ω)``, the subspace of Halko et al.'s scheme with ``q`` QR power
    iterations, in ``q + 2`` passes instead of ``2q + 2``.

    Returns a dict of backend arrays: ``mean`` (n,), ``components`` (K × n, orthonormal rows,
    signs as scikit-learn's ``svd_flip(u_based_decision=False)``: each row's largest |entry|
    positive), ``singular_values`` (K,), ``u`` (m × K), ``total_variance`` (float: the sum of
    the column variances, ddof 1) and ``passes`` (reads of ``X``)."""
    from ..backend import get_namespace

    m, n = X.shape
    K = int(n_components)
    q = int(n_power_iter)
    l = min(K + int(n_oversamples), m, n)  # noqa: E741 - Halko et al.'s name
    meta = getattr(X, "_meta", None)
    xp = get_namespace(meta)
    dt = X.dtype
    rng = np.random.default_rng(seed)
    P = xp.asarray(rng.standard_normal((n, l)).astype(dt))
    say = (lambda s: print(s, file=sys.stderr, flush=True)) if progress else (lambda s: None)
    t0 = time.perf_counter()
    mu64 = total = None
    for it in range(q + 1):
        G, colsum, sumsq = _gram_pass(X, P, first=it == 0, client=client)
        if it == 0:
            mu64 = colsum / m
            total = float((sumsq - m * float((mu64 * mu64).sum())) / max(m - 1, 1))
        G = G - m * mu64[:, None] * (mu64 @ P.astype(xp.float64))[None, :]  # CᵀC·P
        P = _orth(G, xp).astype(dt)
        say(f"pca: pass {it + 1}/{q + 2} {time.perf_counter() - t0:.1f} s")
    (B,) = _matmul_pass(X, P, client=client)  # C·P = X·P − 1·(μᵀP)
    B = B.astype(xp.float64) - (mu64 @ P.astype(xp.float64))[None, :]
    passes = q + 2
    Ub, s, Vbt = xp.linalg.svd(B, full_matrices=False)  # C ≈ Ub·S·(P·Vb)ᵀ
    V = (P.astype(xp.float64) @ Vbt.T[:, :K]).T  # K × n
    U = Ub[:, :K]
    s = s[:K]
    # deterministic signs, as scikit-learn (≥ 1.5) flips PCA components
    big = xp.argmax(xp.abs(V), axis=1)
    sign = xp.sign(V[xp.arange(K), big])
    sign = xp.where(sign == 0, 1.0, sign)
    say(f"pca: done, {passes} passes, {time.perf_counter() - t0:.1f} s")
    return {"mean": mu64, "components": V * sign[:, None], "singular_values": s,
            "u": U * sign[None, :], "total_variance": total, "passes": passes}


def effective_dimensionality(explained_variance, total_variance: float) -> dict:
    """Participation ratio ``(Σλ)²/Σλ²`` of the given spectrum and the number of components
    that explain 50% and 90% of ``total_variance`` (−1 where the spectrum given falls short)."""
    lam = np.asarray(explained_variance, np.float64)
    pr = float(lam.sum() ** 2 / (lam**2).sum()) if lam.size and (lam**2).sum() > 0 else 0.0
    cum = np.cumsum(lam) / total_variance if total_variance > 0 else np.zeros_like(lam)
    out = {"participation_ratio": pr}
    for f in (50, 90):
        hit = np.flatnonzero(cum >= f / 100 - 1e-12)
        out[f"n_components_{f}"] = int(hit[0] + 1) if hit.size else -1
    return out


def _fit_rows(fit_on: str | None, emb: Embeddings) -> tuple[np.ndarray, str]:
    dm = emb.datamodels
    tti = (np.asarray(dm["target_train_index"].values, np.int64)[emb.kept]
           if "target_train_index" in dm.coords else np.full(emb.targets.size, -1))
    if fit_on is None:
        fit_on = "train" if (tti >= 0).any() else "all"
    if fit_on not in FIT_ON:
        raise InputError(f"fit_on must be one of {', '.join(FIT_ON)}, not {fit_on!r}")
    if fit_on == "all":
        return np.arange(emb.targets.size), fit_on
    rows = np.flatnonzero(tti >= 0) if fit_on == "train" else np.flatnonzero(tti < 0)
    if rows.size == 0:
        what = ("training-example datamodels (target_train_index >= 0)" if fit_on == "train"
                else "non-training targets (target_train_index < 0)")
        raise InputError(f"fit_on={fit_on!r}: the datamodels have no {what} among the "
                         f"{emb.targets.size} non-zero targets")
    return rows, fit_on


def _representation_spectrum(store, dm: xr.Dataset, tpos: np.ndarray, *, n_models: int,
                             seed: int) -> tuple[np.ndarray, float, int]:
    """Exact PCA spectrum (explained variance, total variance, feature dim) of the
    penultimate-layer features of the store's job on store targets ``tpos`` — the features
    ``representation_similarity`` compares — averaged over ``n_models`` full-data models."""
    from ..analysis.estimators.model import load_job, train_models
    from ..counterfactual.inputs import open_inputs
    from ..optional import torch as _torch

    torch = _torch()
    inp = open_inputs(store, dm)
    job = load_job(inp.ds, "the representation spectrum",
                   ("model_inputs", "train_params", "features"))
    tr = train_models(inp.ds, job, models="full", n_models=n_models, seed=seed)
    x = job.model_inputs()["x_target"][torch.as_tensor(np.asarray(tpos, np.int64))]
    x = x.to(torch.float64)
    ev = None
    with torch.no_grad():
        for b in range(tr["masks"].shape[0]):
            p = {k: v[b].detach().to(torch.float64) for k, v in tr["params"].items()}
            h = job.features(p, x).numpy()
            h = h - h.mean(axis=0)
            s = np.linalg.svd(h, compute_uv=False)
            e = s**2 / max(h.shape[0] - 1, 1)
            ev = e if ev is None else ev + e
    ev = ev / tr["masks"].shape[0]
    return ev, float(ev.sum()), int(h.shape[1])


def _extremes(proj: np.ndarray, targets: np.ndarray, top: int):
    """Per component the ``top`` targets with the largest and smallest projections (ties:
    the lower row first)."""
    n = min(int(top), proj.shape[0])
    rows = np.arange(proj.shape[0])
    hi = np.stack([np.lexsort((rows, -proj[:, c]))[:n] for c in range(proj.shape[1])])
    lo = np.stack([np.lexsort((rows, proj[:, c]))[:n] for c in range(proj.shape[1])])
    pick = np.take_along_axis
    return (targets[hi], pick(proj.T, hi, axis=1), targets[lo], pick(proj.T, lo, axis=1))


def pca(datamodels, n_components: int, *, fit_on: str | None = None,
        n_power_iter: int | None = None, n_oversamples: int | None = None,
        normalise: bool = True, chunks: tuple[int, int] | None = None, seed: int = 0,
        top: int = 10, store=None, representation: bool = False, n_models: int = 1,
        client=None, progress: bool = False) -> xr.Dataset:
    """PCA of datamodel embeddings (see the module docstring).

    ``datamodels``: a datamodels Dataset or Zarr path (``weight(target, train)``), or an
    :class:`Embeddings`. ``fit_on``: ``"train"`` (training-example datamodels), ``"targets"``
    (the others), ``"all"``; None: ``"train"`` when there are any, else ``"all"``.
    ``n_power_iter``/``n_oversamples``: default the settings ``embed.n-power-iter`` /
    ``embed.n-oversamples``. Returns ``components(component, train)``,
    ``explained_variance``, ``explained_variance_ratio``, ``singular_values``, ``mean(train)``,
    ``projection(target, component)``, ``fitted(target)``, per component the ``top`` targets
    with the most positive/negative projections (``top_targets``/``bottom_targets``), and
    with ``store``/``representation`` ``representation_explained_variance_ratio``."""
    K = int(n_components)
    if K < 1:
        raise InputError(f"n_components must be >= 1, got {n_components}")
    q = int(config.get("embed.n-power-iter", 5) if n_power_iter is None else n_power_iter)
    p = int(config.get("embed.n-oversamples", 10) if n_oversamples is None else n_oversamples)
    if q < 0 or p < 0:
        raise InputError(f"n_power_iter and n_oversamples must be >= 0, got {q} and {p}")
    if representation and store is None:
        raise InputError("the representation spectrum needs the run store (store=)")
    emb = datamodels if isinstance(datamodels, Embeddings) else embeddings(
        datamodels, normalise=normalise, chunks=chunks)
    rows, fit_on = _fit_rows(fit_on, emb)
    m, n = rows.size, emb.shape[1]
    if m < K:
        raise InputError(f"fewer targets than components: {m} non-zero datamodels to fit on "
                         f"(fit_on={fit_on!r}, {emb.n_zero} all-zero excluded), "
                         f"{K} components asked for")
    if n < K:
        raise InputError(f"{K} components asked for, but the embeddings have {n} dimensions "
                         "(training examples)")
    from ..backend import to_numpy

    all_rows = rows.size == emb.targets.size
    X = emb.data if all_rows else emb.data[rows]
    t0 = time.perf_counter()
    r = randomized_pca(X, K, n_power_iter=q, n_oversamples=p, seed=seed, client=client,
                       progress=progress)
    V, s = r["components"], r["singular_values"]
    proj = np.empty((emb.targets.size, K))
    proj[rows] = to_numpy(r["u"] * s[None, :])  # fit rows: U·Σ, as fit_transform
    rest = np.setdiff1d(np.arange(emb.targets.size), rows)
    if rest.size:  # the others: (ê − mean)·Vᵀ, as transform
        (Z,) = _matmul_pass(emb.data[rest], V.T.astype(emb.data.dtype), client=client)
        Z = Z.astype(np.float64) - (r["mean"] @ V.T)[None, :]
        proj[rest] = to_numpy(Z)
    seconds = time.perf_counter() - t0
    s = to_numpy(s)
    ev = s**2 / max(m - 1, 1)
    total = r["total_variance"]
    evr = ev / total if total > 0 else np.full(K, np.nan)
    dims = effective_dimensionality(ev, total)
    dm = emb.datamodels
    fitted = np.zeros(emb.targets.size, bool)
    fitted[rows] = True
    hi, hi_v, lo, lo_v = _extremes(proj, emb.targets, top)
    comp = np.arange(K)
    data = {
        "components": (("component", "train"), to_numpy(V),
                       {"description": "principal axes in embedding space (unit rows)"}),
        "explained_variance": ("component", ev),
        "explained_variance_ratio": ("component", evr),
        "singular_values": ("component", s),
        "mean": ("train", to_numpy(r["mean"]), {"description": "mean of the fit set"}),
        "projection": (("target", "component"), proj),
        "fitted": ("target", fitted, {"description": "target in the fit set"}),
        "top_targets": (("component", "rank"), hi,
                        {"description": "targets with the most positive projections"}),
        "top_projection": (("component", "rank"), hi_v),
        "bottom_targets": (("component", "rank"), lo,
                           {"description": "targets with the most negative projections"}),
        "bottom_projection": (("component", "rank"), lo_v),
    }
    coords = {"component": comp, "train": np.asarray(dm["train"].values),
              "target": emb.targets, "rank": np.arange(hi.shape[1])}
    kept = emb.kept
    for c in ("target_label", "target_train_index"):
        if c in dm.coords:
            coords[c] = ("target", np.asarray(dm[c].values)[kept])
    if "train_label" in dm.coords:
        coords["train_label"] = ("train", np.asarray(dm["train_label"].values))
    attrs = {"dmdask_embeddings_pca": 1, "n_components": K, "n_power_iter": q,
             "n_oversamples": p, "fit_on": fit_on, "n_fit": int(m), "n_zero": emb.n_zero,
             "excluded_targets": np.asarray(dm["target"].values)[~kept].tolist(),
             "normalised": bool(normalise), "seed": int(seed), "passes": r["passes"],
             "total_variance": total, "seconds": seconds, **dims}
    if representation:
        tpos = np.asarray(emb.targets[rows], np.int64)
        rev, rtot, dim = _representation_spectrum(store, dm, tpos, n_models=n_models,
                                                  seed=seed)
        data["representation_explained_variance"] = ("rep_component", rev)
        data["representation_explained_variance_ratio"] = ("rep_component", rev / rtot)
        coords["rep_component"] = np.arange(rev.size)
        rd = effective_dimensionality(rev, rtot)
        attrs.update({f"representation_{k}": v for k, v in rd.items()})
        attrs.update({"representation_dim": dim, "representation_models": int(n_models)})
    ds = xr.Dataset(data, coords=coords)
    ds.attrs.update(portable_attrs(attrs))
    return ds
