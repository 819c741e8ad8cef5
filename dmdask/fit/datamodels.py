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

import os
import time

import numpy as np
import xarray as xr

from ..errors import DmdaskError, InputError
from ..memory import fit_memory
from ..outputs import write_zarr
from .dataset import (  # noqa: F401 - select_models, _open, SOLVER_CODES: used from here
    SOLVER_CODES,
    _assemble,
    _block_values,
    _dataset_attrs,
    _open,
    _own_rows_error,
    _versions,
    _warn_budget,
    choose_selection,
    fit_inputs,
    select_models,
)
from .solve import PathOptions, PathResult, Split, get_solver

__all__ = ["fit_datamodels", "save_datamodels", "select_models", "choose_selection"]



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
    ds, rows, alpha, tpos = fit_inputs(ds, solver, alpha, n_models, targets)
    n = rows.size
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


def _build_dataset(ds, rows, tpos, parts, *, alpha, selection, options, seconds):
    vals = _block_values(parts, tpos.size, ds.sizes["train"],
                         max(p.lambdas.shape[1] for _, p in parts))
    attrs = _dataset_attrs(ds, rows, alpha=alpha, selection=selection, options=options,
                           seconds=seconds, codes=vals["solver"])
    return _assemble(ds, tpos, vals, attrs)


def save_datamodels(dm: xr.Dataset, path, *, overwrite: bool = False) -> str:
    """Write a datamodels Dataset as a Zarr store readable with ``xr.open_zarr``."""
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise InputError(f"{path}: already exists (overwrite=True replaces it)")
    return write_zarr(dm, path)
