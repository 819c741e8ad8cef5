"""``fit_datamodels(..., out=PATH)``: the fit written block by block, larger than memory and
resumable (issue 18, item 1).

The targets are cut into blocks of ``block_targets`` (setting
``dmdask.fit.out-block-targets``). One pass over the masks forms the Gram part of the
statistics (``XᵀX``, column sums, per group of the split) and, from it, everything the blocks
share (:func:`dmdask.fit.solve.gram.solver.prepare_gram`: standardised Grams and their
problems) — once, and on a cluster sent to each worker once. Then, per block not yet
committed: a pass over the rows for the block's own target statistics (``XᵀY`` of its
columns, NaN margins found in the same pass), its LASSO paths, selection and refit
(:func:`~dmdask.fit.solve.gram.solver.solve_targets`; targets with their own rows go to the
streaming solver as in the in-memory fit), then its rows of every output variable and its
commit mark (:mod:`dmdask.fit.output`).

Memory: the shared Grams (a few d × d), a few row blocks, and per block the target
statistics (d × ``block_targets`` float64 per group) and its results — whatever the number of
targets. Time: the Gram is formed once; the masks and margins are read once per block.

Resume: the blocks are fixed by the request (targets, ``block_targets``), so a rerun computes
exactly the blocks not committed, from the same statistics in the same order: the result
is bit-identical to an uninterrupted fit. A rerun with another request on the same output is
refused, naming the differences.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import numpy as np
import xarray as xr

from .. import config
from ..errors import DmdaskError, InputError
from .dataset import (
    _assemble,
    _block_values,
    _dataset_attrs,
    _own_rows_error,
    _warn_budget,
    choose_selection,
    fit_inputs,
)
from .output import FitOutput, open_fit
from .solve import PathOptions, Split, get_solver
from .stats import compute_stats, group_bounds_for

__all__ = ["fit_to_zarr", "fit_request"]

_FORMAT = 1


def fit_request(ds: xr.Dataset, rows: np.ndarray, tpos: np.ndarray, *, alpha: float,
                selection: str, options: dict[str, Any], block_targets: int) -> dict[str, Any]:
    """What a blockwise output is a fit of: the store (fingerprint, sizes), the models and
    targets (hashes), the options and the block size. Two fits with equal requests write
    equal outputs."""
    src = ds.attrs.get("dmdask", {})
    model_ids = np.asarray(ds["model"].values)[rows].astype(np.int64)
    return {
        "format": _FORMAT,
        "store_fingerprint": src.get("fingerprint") if isinstance(src, dict) else None,
        "n_train": int(ds.sizes["train"]),
        "n_models": int(rows.size),
        "models_sha1": hashlib.sha1(model_ids.tobytes()).hexdigest(),
        "n_targets": int(tpos.size),
        "targets_sha1": hashlib.sha1(np.ascontiguousarray(tpos, np.int64).tobytes()).hexdigest(),
        "alpha": float(alpha),
        "selection": selection,
        "block_targets": int(block_targets),
        **{k: v for k, v in options.items()},
    }


def fit_to_zarr(ds, out, *, alpha=None, selection="auto", folds=5, val_fraction=0.1,
                n_lambdas=30, lambda_ratio=1e-3, solver="auto", targets=None, client=None,
                tol=1e-5, max_iter=5000, early_stop=True, progress=False, n_models=None,
                block_targets: int | None = None) -> xr.Dataset:
    """The body of ``fit_datamodels(..., out=)`` (see the module docstring); returns the
    lazy Dataset of the finished output."""
    t0 = time.perf_counter()
    ds, rows, alpha, tpos = fit_inputs(ds, solver, alpha, n_models, targets)
    n = rows.size
    block = int(block_targets or config.get("fit.out-block-targets", 1024))
    if block < 1:
        raise InputError(f"block_targets must be positive, not {block}")
    sel_kind = choose_selection(selection, n, val_fraction)
    opts = dict(selection_requested=selection, folds=folds, val_fraction=val_fraction,
                n_lambdas=n_lambdas, lambda_ratio=lambda_ratio, solver_requested=solver,
                tol=tol, max_iter=max_iter, early_stop=early_stop)
    request = fit_request(ds, rows, tpos, alpha=alpha, selection=sel_kind, options=opts,
                          block_targets=block)
    template = _template(ds, rows, tpos, alpha, sel_kind, opts, n_lambdas)
    dst = FitOutput.open_or_create(out, request, template, block)
    todo = np.flatnonzero(~dst.done())
    phases = {k: 0.0 for k in ("gram_pass", "gram_prepare", "target_stats", "solve", "write")}
    if todo.size:
        _run_blocks(phases, ds, dst, todo, rows, tpos, sel_kind, solver, folds, val_fraction, n_lambdas,
                    PathOptions(n_lambdas=n_lambdas, lambda_ratio=lambda_ratio, tol=tol,
                                max_iter=max_iter, early_stop=early_stop, progress=progress),
                    client, progress)
    if todo.size or not dst.finished:
        codes = np.asarray(dst.group["solver"][:])
        dst.finish({"seconds": float(time.perf_counter() - t0),
                    # this run's time per phase (a resumed fit: of the blocks it computed)
                    "phase_seconds": {k: round(v, 3) for k, v in phases.items()},
                    "solvers_used": sorted({("gram", "saga")[c] for c in np.unique(codes)})})
    return open_fit(dst.path)


def _template(ds, rows, tpos, alpha, sel_kind, opts, n_lambdas) -> xr.Dataset:
    """The output's variables (lazy zeros), coordinates and attributes."""
    import dask.array as da

    vals = _block_values([], 0, ds.sizes["train"], n_lambdas)
    attrs = _dataset_attrs(ds, rows, alpha=alpha, selection=sel_kind, options=opts,
                           seconds=0.0, codes=np.zeros(0, np.int8))
    lazy = {k: da.zeros((tpos.size, *a.shape[1:]), dtype=a.dtype) for k, a in vals.items()}
    return _assemble(ds, tpos, lazy, attrs)


def _run_blocks(phases: dict, ds, dst: FitOutput, todo, rows, tpos, sel_kind, solver, folds, val_fraction,
                n_lambdas, options: PathOptions, client, progress) -> None:
    X = ds["mask"].data[rows]
    Yall = ds["margin"].data[rows]
    if "target_train_index" in ds.coords:
        tti_all = np.asarray(ds["target_train_index"].values, dtype=np.int64)[tpos]
    else:
        tti_all = np.full(tpos.size, -1, np.int64)
    if solver == "gram" and (tti_all >= 0).any():
        _own_rows_error(tpos[tti_all >= 0], "training-example targets")
    split = Split(sel_kind, val_fraction=val_fraction, folds=folds)
    bounds = group_bounds_for(X.shape[0], split)
    c_dtype = "float32" if options.tol >= 1e-7 else None
    shared = None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=todo.size, desc="target blocks")
    from .solve.gram.solver import prepare_gram, solve_targets

    for b in todo:
        sl = dst.block_slice(int(b))
        bpos = tpos[sl]
        tti = tti_all[sl]
        own = tti >= 0
        gram_t = np.flatnonzero(~own) if solver != "saga" else np.zeros(0, np.int64)
        parts = []
        if gram_t.size:
            if shared is None:
                # the Gram part once for all blocks (no target columns), sent to each
                # worker once
                t = time.perf_counter()
                g = compute_stats(X, Yall[:, :0], bounds, row_block_size=options.row_block_size,
                                  client=client, progress=progress, c_dtype=c_dtype)
                phases["gram_pass"] += time.perf_counter() - t
                t = time.perf_counter()
                shared = prepare_gram(g, split, options, client=client)
                del g
                if client is not None:
                    shared.scatter(client)
                phases["gram_prepare"] += time.perf_counter() - t
            t = time.perf_counter()
            tg = compute_stats(X, Yall[:, bpos[gram_t]], bounds,
                               row_block_size=options.row_block_size, client=client,
                               progress=False, c_dtype=c_dtype, nonfinite="mark", gram=False)
            phases["target_stats"] += time.perf_counter() - t
            t = time.perf_counter()
            bad = np.zeros(gram_t.size, bool)
            for g in tg:
                bad |= np.asarray(g.nonfinite, bool)
            good = np.flatnonzero(~bad)
            if solver == "gram" and good.size < gram_t.size:
                _own_rows_error(bpos[gram_t[bad]], "NaN margins")
            if good.size:
                if good.size < gram_t.size:
                    tg = [g.take_targets(good) for g in tg]
                res = solve_targets(shared, tg, split, options, client=client)
                parts.append((gram_t[good], res))
            gram_t = gram_t[good]
            del tg
            phases["solve"] += time.perf_counter() - t
        saga_t = np.setdiff1d(np.arange(bpos.size), gram_t)
        t = time.perf_counter()
        if saga_t.size:
            try:
                saga = get_solver("saga")
            except DmdaskError as e:
                raise DmdaskError(f"{saga_t.size} target(s) need the streaming solver: "
                                  f"{e}") from e
            res = saga.fit(X, Yall[:, bpos[saga_t]],
                           split=Split("holdout", val_fraction=val_fraction, folds=folds),
                           options=options, target_train_index=tti[saga_t], client=client)
            parts.append((saga_t, res))
        phases["solve"] += time.perf_counter() - t
        _warn_budget(parts, bpos, options.max_iter, options.tol)
        t = time.perf_counter()
        dst.write_block(int(b), _block_values(parts, bpos.size, X.shape[1], n_lambdas))
        phases["write"] += time.perf_counter() - t
        del parts
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
