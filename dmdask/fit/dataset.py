"""The datamodels Dataset's pieces shared by the in-memory fit (:mod:`.datamodels`) and the
blockwise one (:mod:`.blockwise`): which models, which selection, the per-target variables of
solver results, the provenance attributes and the Dataset itself."""

from __future__ import annotations

import hashlib
import os
import warnings
from typing import Any

import numpy as np
import xarray as xr

from .. import config
from ..errors import InputError
from ..outputs import portable_attrs
from .solve import UnsupportedTargets
from .solve.base import BudgetWarning
from .solve.grid import holdout_size

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


def _warn_budget(parts, tpos: np.ndarray, max_iter: int, tol: float) -> None:
    """One warning naming the targets that spent their iteration budget (not converged)."""
    bad = np.sort(np.concatenate([idx[~np.asarray(p.converged, bool)] for idx, p in parts]))
    if bad.size:
        warnings.warn(
            f"{bad.size} of {tpos.size} target(s) spent the iteration budget (max_iter="
            f"{max_iter} at one λ) before the duality gap met tol={tol:g}: their paths stopped "
            f"there and their fits are approximate (converged=False), e.g. targets at "
            f"positions {tpos[bad[:10]].tolist()}; raise max_iter or tol", BudgetWarning, stacklevel=4)


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


def fit_inputs(ds, solver: str, alpha: float | None, n_models: int | None, targets
               ) -> tuple[xr.Dataset, np.ndarray, float, np.ndarray]:
    """The checked inputs of a fit: the opened store, the fitting rows, their α and the target
    positions (all targets when ``targets`` is None)."""
    ds = _open(ds)
    if solver not in ("auto", "gram", "saga"):
        raise InputError(f"solver must be 'auto', 'gram' or 'saga', not {solver!r}")
    rows, alpha = select_models(ds, alpha, n_models)
    return ds, rows, alpha, target_positions(ds.sizes["target"], targets)


def target_positions(n_target: int, targets) -> np.ndarray:
    """``targets`` as int64 positions in ``[0, n_target)`` (all of them when None); an empty
    or out-of-range selection is an :class:`InputError`."""
    tpos = np.arange(n_target) if targets is None else np.asarray(targets, dtype=np.int64)
    if tpos.ndim != 1 or tpos.size == 0 or tpos.min() < 0 or tpos.max() >= n_target:
        raise InputError(f"targets must be positions in [0, {n_target})")
    return tpos
