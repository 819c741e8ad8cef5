"""``fit_datamodels``: from a run store to the datamodels Dataset (DESIGN.md, issue 4).

Which models: ``kind == "random"``, completed, of one α (``alpha=`` picks when the store holds
several). Held-out, replicate and counterfactual models are never used. Rows are the fitting
models in model-index order; the holdout validates on the first ``val_fraction`` of them, CV
uses ``folds`` contiguous folds (:mod:`dmdask.fit.solve.base`).

Which solver (``solver="auto"``): targets whose rows are shared by all (no NaN margin among the
fitting models, not a training example) go to the Gram solver; the others — NaN margins, and
training-example targets, which use only the models that exclude them (paper eq. 9) — go to
the streaming solver ``dmdask.fit.solve.saga`` (holdout selection). ``solver="gram"`` refuses such
targets with an error naming them; ``solver="saga"`` sends every target to the streaming solver.

Which selection (``selection="auto"``): K-fold CV when the holdout would have fewer than
``dmdask.solve.auto-cv-below`` validation models (default 5,000, i.e. CV below 50,000
models at a 10% holdout), else the holdout. Measured on planted problems by
``benchmarks/bench_solve.py --crossover`` (``benchmarks/RESULTS.md``; d = 500, 40
targets): from 1,000 to 32,000 models the 10% holdout's fits had 9–18% more prediction error
against the planted signal than 5-fold CV's, at ~3× less time — no crossover up to 3,200
validation models, so the threshold sits above the measured range (to be re-measured at
larger n).
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from typing import Any

import numpy as np
import xarray as xr

from .. import config
from ..errors import DmdaskError, InputError
from ..memory import fit_memory
from ..outputs import portable_attrs, write_zarr
from .solve import PathOptions, PathResult, Split, UnsupportedTargets, get_solver
from .solve.base import BudgetWarning
from .solve.grid import holdout_size

__all__ = ["fit_datamodels", "save_datamodels", "select_models", "choose_selection"]

SOLVER_CODES = ("gram", "saga")


def _versions() -> dict[str, str]:
    import dask
    import numpy
    import scipy
    import zarr

    from ..version import __version__

    return {"dmdask": __version__, "numpy": numpy.__version__, "scipy": scipy.__version__,
            "dask": dask.__version__, "xarray": xr.__version__, "zarr": zarr.__version__}


def select_models(ds: xr.Dataset, alpha: float | None = None,
                  n_models: int | None = None) -> tuple[np.ndarray, float]:
    """Positions of the fitting models (``kind == "random"``, completed, one α), ascending,
    and that α. Several α and ``alpha=None`` is an error listing them. ``n_models``: only the
    first n of them by model index (sample-complexity and Table 5 rows)."""
    kind = np.asarray(ds["kind"].values).astype(str)
    done = np.asarray(ds["completed"].values).astype(bool)
    alphas = np.asarray(ds["alpha"].values, dtype=np.float64)
    ok = (kind == "random") & done
    if not ok.any():
        raise InputError("no completed models of kind 'random' to fit datamodels on")
    present = np.unique(np.round(alphas[ok], 6))
    if alpha is None:
        if present.size > 1:
            raise InputError(
                f"the store holds random models of several alpha values {present.tolist()}; "
                "pick one with alpha=… (--alpha)")
        alpha = float(present[0])
    sel = ok & np.isclose(alphas, alpha, rtol=0, atol=1e-6)
    if not sel.any():
        raise InputError(f"no completed random models with alpha={alpha}; present: "
                         f"{present.tolist()}")
    rows = np.flatnonzero(sel)
    if n_models is not None:
        if not 2 <= int(n_models) <= rows.size:
            raise InputError(f"n_models={n_models}: the store has {rows.size} completed random "
                             f"models with alpha={alpha}; choose 2 … {rows.size}")
        rows = rows[: int(n_models)]
    return rows, float(alpha)


def choose_selection(selection: str, n_models: int, val_fraction: float) -> str:
    """Resolve ``selection="auto"``: CV when the holdout would have fewer than
    ``dmdask.solve.auto-cv-below`` validation models, else the holdout."""
    if selection in ("holdout", "cv"):
        return selection
    if selection != "auto":
        raise InputError(f"selection must be 'auto', 'holdout' or 'cv', not {selection!r}")
    below = int(config.get("solve.auto-cv-below", 5000))
    return "cv" if holdout_size(n_models, val_fraction) < below else "holdout"


def _own_rows_error(bad: np.ndarray, why: str):
    raise UnsupportedTargets(
        f"solver='gram' needs targets that share rows; {bad.size} target(s) have their "
        f"own rows ({why}), e.g. {bad[:10].tolist()}; use solver='auto' or 'saga'")


def _open(ds_or_path) -> xr.Dataset:
    if isinstance(ds_or_path, xr.Dataset):
        return ds_or_path
    if isinstance(ds_or_path, (str, os.PathLike)):
        from ..store.runstore import open_store

        return open_store(ds_or_path)
    raise InputError(f"expected a run-store Dataset or path, not {type(ds_or_path).__name__}")


def fit_datamodels(
    ds,
    *,
    alpha: float | None = None,
    selection: str = "auto",
    folds: int = 5,
    val_fraction: float = 0.1,
    n_lambdas: int = 30,
    lambda_ratio: float = 1e-3,
    solver: str = "auto",
    targets=None,
    client=None,
    tol: float = 1e-5,
    max_iter: int = 5000,
    early_stop: bool = True,
    progress: bool = False,
    n_models: int | None = None,
    out=None,
    block_targets: int | None = None,
) -> xr.Dataset:
    """Fit one sparse linear datamodel per target; return the datamodels Dataset.

    ``ds``: a run-store Dataset (:func:`dmdask.open_store`, or any Dataset with its schema) or
    a store path. ``targets``: positions along ``target`` (default all). ``solver``: ``auto``
    (Gram where rows are shared, streaming SAGA elsewhere), ``gram`` or ``saga``. See the
    module docstring for models, selection and routing; ``tol`` is the relative duality-gap
    tolerance (default 1e-5: on the digits quickstart store, 1e-6 took 7× longer for a
    validation MSE equal to 8 digits), ``early_stop`` the fast_l1 validation early stop (§1.3: a target's path stops
    once its validation MSE rises after ≥ 10 λ; on planted problems this skips the costly dense
    end of the path — 20× faster at the same chosen validation MSE, benchmarks/RESULTS.md).
    ``n_models``: fit on the first n fitting models only (by model index).

    ``out``: a Zarr path to write the datamodels to block by block (``block_targets``
    targets at a time, setting ``dmdask.fit.out-block-targets``), never holding the whole
    weight matrix; a rerun of the same fit resumes with the blocks already written, a rerun
    with other options is refused (:mod:`dmdask.fit.blockwise`). The Dataset returned is then
    lazy (dask arrays read from ``out``). Without ``out`` everything is in memory.

    Returns variables ``weight(target, train)`` float32 in raw-mask space (prediction =
    mask @ weight + bias), ``bias``, ``lam`` (standardised-space λ), ``val_mse``,
    ``lambdas(target, lam_index)``, ``val_mse_path``, ``n_models``, ``n_iter``, ``converged``,
    ``solver`` (code into ``attrs['solver_codes']``), the store's coordinates, and provenance
    attributes.
    """
    # the local scheduler's threads allocate in this process: keep what they free for reuse,
    # fault in small pages (dmdask/memory.py)
    with fit_memory(enabled=client is None):
        if out is not None:
            from .blockwise import fit_to_zarr

            return fit_to_zarr(ds, out, alpha=alpha, selection=selection, folds=folds,
                               val_fraction=val_fraction, n_lambdas=n_lambdas,
                               lambda_ratio=lambda_ratio, solver=solver, targets=targets,
                               client=client, tol=tol, max_iter=max_iter,
                               early_stop=early_stop, progress=progress, n_models=n_models,
                               block_targets=block_targets)
        return _fit(ds, alpha, selection, folds, val_fraction, n_lambdas, lambda_ratio, solver,
                    targets, client, tol, max_iter, early_stop, progress, n_models)


def _fit(ds, alpha, selection, folds, val_fraction, n_lambdas, lambda_ratio, solver, targets,
         client, tol, max_iter, early_stop, progress, n_models) -> xr.Dataset:
    t0 = time.perf_counter()
    ds = _open(ds)
    if solver not in ("auto", "gram", "saga"):
        raise InputError(f"solver must be 'auto', 'gram' or 'saga', not {solver!r}")
    rows, alpha = select_models(ds, alpha, n_models)
    n = rows.size
    n_target = ds.sizes["target"]
    tpos = np.arange(n_target) if targets is None else np.asarray(targets, dtype=np.int64)
    if tpos.ndim != 1 or tpos.size == 0 or tpos.min() < 0 or tpos.max() >= n_target:
        raise InputError(f"targets must be positions in [0, {n_target})")
    sel_kind = choose_selection(selection, n, val_fraction)
    X = ds["mask"].data[rows]
    Y = ds["margin"].data[rows][:, tpos]
    if "target_train_index" in ds.coords:
        tti = np.asarray(ds["target_train_index"].values, dtype=np.int64)[tpos]
    else:
        tti = np.full(tpos.size, -1, np.int64)
    own_rows = tti >= 0
    if solver == "gram" and own_rows.any():
        _own_rows_error(tpos[own_rows], "training-example targets")
    options = PathOptions(n_lambdas=n_lambdas, lambda_ratio=lambda_ratio, tol=tol,
                          max_iter=max_iter, early_stop=early_stop, progress=progress)
    gram_t = np.flatnonzero(~own_rows) if solver != "saga" else np.zeros(0, np.int64)
    parts: list[tuple[np.ndarray, PathResult]] = []
    if gram_t.size:
        # targets with NaN margins are found by the statistics pass itself (no separate
        # pass over the margins) and join the streaming solver's targets
        split = Split(sel_kind, val_fraction=val_fraction, folds=folds)
        good, res = get_solver("gram").fit_finite(X, Y[:, gram_t], split=split,
                                                  options=options, client=client)
        if solver == "gram" and good.size < gram_t.size:
            _own_rows_error(tpos[np.setdiff1d(gram_t, gram_t[good])], "NaN margins")
        if res is not None:
            parts.append((gram_t[good], res))
        gram_t = gram_t[good]
    saga_t = np.setdiff1d(np.arange(tpos.size), gram_t)
    if saga_t.size:
        try:
            saga = get_solver("saga")
        except DmdaskError as e:
            raise DmdaskError(f"{saga_t.size} target(s) need the streaming solver: {e}") from e
        split = Split("holdout", val_fraction=val_fraction, folds=folds)
        res = saga.fit(X, Y[:, saga_t], split=split, options=options,
                       target_train_index=tti[saga_t], client=client)
        parts.append((saga_t, res))
    _warn_budget(parts, tpos, max_iter, tol)
    return _build_dataset(ds, rows, tpos, parts, alpha=alpha, selection=sel_kind,
                          options=dict(selection_requested=selection, folds=folds,
                                       val_fraction=val_fraction, n_lambdas=n_lambdas,
                                       lambda_ratio=lambda_ratio, solver_requested=solver,
                                       tol=tol, max_iter=max_iter, early_stop=early_stop),
                          seconds=time.perf_counter() - t0)


def _warn_budget(parts, tpos: np.ndarray, max_iter: int, tol: float) -> None:
    """One warning naming the targets that spent their iteration budget (not converged)."""
    bad = np.sort(np.concatenate([idx[~np.asarray(p.converged, bool)] for idx, p in parts]))
    if bad.size:
        warnings.warn(
            f"{bad.size} of {tpos.size} target(s) spent the iteration budget (max_iter="
            f"{max_iter} at one λ) before the duality gap met tol={tol:g}: their paths stopped "
            f"there and their fits are approximate (converged=False), e.g. targets at "
            f"positions {tpos[bad[:10]].tolist()}; raise max_iter or tol", BudgetWarning, stacklevel=4)


def _build_dataset(ds, rows, tpos, parts, *, alpha, selection, options, seconds):
    vals = _block_values(parts, tpos.size, ds.sizes["train"],
                         max(p.lambdas.shape[1] for _, p in parts))
    attrs = _dataset_attrs(ds, rows, alpha=alpha, selection=selection, options=options,
                           seconds=seconds, codes=vals["solver"])
    return _assemble(ds, tpos, vals, attrs)


def _block_values(parts, T: int, d: int, L: int) -> dict[str, np.ndarray]:
    """Every per-target variable of ``T`` targets from the solvers' results ``parts`` [(their
    positions among the T, PathResult)], paths padded with NaN to ``L`` λ values."""
    weight = np.zeros((T, d), np.float32)
    out = {k: np.full(T, np.nan) for k in ("bias", "lam", "val_mse")}
    lambdas = np.full((T, L), np.nan)
    vpath = np.full((T, L), np.nan)
    n_rows = np.zeros(T, np.int64)
    n_iter = np.zeros(T, np.int64)
    conv = np.zeros(T, bool)
    code = np.zeros(T, np.int8)
    for idx, p in parts:
        weight[idx] = p.weight
        out["bias"][idx] = p.bias
        out["lam"][idx] = p.lam
        out["val_mse"][idx] = p.val_mse
        lambdas[idx, : p.lambdas.shape[1]] = p.lambdas
        vpath[idx, : p.val_mse_path.shape[1]] = p.val_mse_path
        n_rows[idx] = p.n_rows
        n_iter[idx] = p.n_iter
        conv[idx] = p.converged
        code[idx] = SOLVER_CODES.index(p.solver.split("+")[0]) if p.solver else 0
    return {"weight": weight, **out, "lambdas": lambdas, "val_mse_path": vpath,
            "n_models": n_rows, "n_iter": n_iter, "converged": conv, "solver": code}


def _dataset_attrs(ds, rows, *, alpha, selection, options, seconds, codes) -> dict:
    model_ids = np.asarray(ds["model"].values)[rows].astype(np.int64)
    src = ds.attrs.get("dmdask", {})
    attrs = {
        "dmdask_datamodels": 1,
        "store": str(src.get("path", "")) if isinstance(src, dict) else "",
        # what later analyses check that a datamodels Dataset belongs to a store by
        "store_fingerprint": src.get("fingerprint") if isinstance(src, dict) else None,
        "store_seed": src.get("seed") if isinstance(src, dict) else None,
        "alpha": alpha,
        "selection": selection,
        "n_models": int(rows.size),
        "model_first": int(model_ids[0]),
        "model_last": int(model_ids[-1]),
        "model_sha1": hashlib.sha1(model_ids.tobytes()).hexdigest(),
        "solver_codes": list(SOLVER_CODES),
        "solvers_used": sorted({SOLVER_CODES[c] for c in np.unique(codes)}),
        "seconds": float(seconds),
        "versions": _versions(),
        **{f"opt_{k}": v for k, v in options.items()},
    }
    return portable_attrs(attrs)  # to_netcdf refuses a dict (versions), netCDF-3 a str list


def _assemble(ds, tpos, vals: dict[str, np.ndarray], attrs: dict) -> xr.Dataset:
    coords: dict[str, Any] = {"target": ds["target"].values[tpos], "train": ds["train"].values}
    for c in ("target_label", "target_train_index"):
        if c in ds.coords:
            coords[c] = ("target", np.asarray(ds[c].values)[tpos])
    if "train_label" in ds.coords:
        coords["train_label"] = ("train", np.asarray(ds["train_label"].values))
    data = {
        "weight": (("target", "train"), vals["weight"],
                   {"description": "raw-mask space: prediction = mask @ weight + bias"}),
        "bias": ("target", vals["bias"]),
        "lam": ("target", vals["lam"],
                {"description": "chosen λ, standardised space, 1/(2n)"}),
        "val_mse": ("target", vals["val_mse"]),
        "lambdas": (("target", "lam_index"), vals["lambdas"]),
        "val_mse_path": (("target", "lam_index"), vals["val_mse_path"]),
        "n_models": ("target", vals["n_models"]),
        "n_iter": ("target", vals["n_iter"]),
        "converged": ("target", vals["converged"]),
        "solver": ("target", vals["solver"], {"flag_values": list(range(len(SOLVER_CODES))),
                                              "flag_meanings": " ".join(SOLVER_CODES)}),
    }
    return xr.Dataset(data, coords=coords, attrs=attrs)


def save_datamodels(dm: xr.Dataset, path, *, overwrite: bool = False) -> str:
    """Write a datamodels Dataset as a Zarr store readable with ``xr.open_zarr``."""
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise InputError(f"{path}: already exists (overwrite=True replaces it)")
    return write_zarr(dm, path)
