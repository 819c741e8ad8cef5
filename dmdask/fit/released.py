"""MadryLab's released datamodels (``datamodels.pt``, fast_l1's output) as a datamodels Dataset.

``datamodels/regression/compute_datamodels.py`` saves ``{"weight": [n_train, n_targets],
"bias": [n_targets], "lam": [n_targets]}`` with ``torch.save``. fast_l1 fits on standardised
masks, ``x = (mask − μ) / σ`` with μ, σ the column means and (population) standard deviations
of the fitting models' masks, so its weights predict ``margin ≈ x @ weight + bias``; whether a
*released* file was converted back to raw-mask space (``margin ≈ mask @ weight + bias``, the
space of dmdask's ``weight``) is not documented. :func:`import_datamodels` therefore asks
the run store the data came from:

* ``space="auto"``: both readings predict the store's completed ``"heldout"`` models'
  margins; per target, the reading with the smaller squared error wins. The space is decided
  when the two-sided sign test over the targets where they differ has ``p <
  dmdask.formats.space-test-p`` and the loser's held-out MSE is at least
  ``dmdask.formats.space-min-ratio`` times the winner's (a clear margin, not just a
  consistent one); otherwise (or without held-out models) the import is refused and the user must say
  ``space=``.
* ``space="standardised"``: converted to raw space with the fitting models' μ, σ (for a
  0/1 mask σ = sqrt(μ(1−μ))): ``weight_raw = weight / σ``, ``bias_raw = bias − (μ/σ) @
  weight``; a column with σ = 0 contributes nothing (fast_l1's standardised column is 0).
* ``space="raw"``: taken as is.

``lam`` is kept as saved (fast_l1's λ, standardised space, loss 1/(2n), as dmdask's).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .. import config, optional
from ..errors import InputError
from ..outputs import portable_attrs

__all__ = ["SPACES", "import_datamodels", "load_released", "space_evidence"]

SPACES = ("auto", "raw", "standardised")


def load_released(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``weight [n_train, n_targets]`` (float32, as saved), ``bias [n_targets]``, ``lam
    [n_targets]`` (float64) from a ``datamodels.pt`` or a fast_l1 output directory holding
    one; shapes checked."""
    p = Path(path)
    if p.is_dir():
        p = p / "datamodels.pt"
    if not p.is_file():
        raise InputError(f"{p}: no such file (expected MadryLab's datamodels.pt or the "
                         "compute_datamodels.py output directory holding it)")
    torch = optional.torch()
    try:
        d = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"{p}: not a readable torch file ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict) or "weight" not in d:
        keys = sorted(d) if isinstance(d, dict) else type(d).__name__
        raise InputError(f"{p}: expected a dict with 'weight', 'bias', 'lam' (fast_l1's "
                         f"datamodels.pt), got {keys}")

    def arr(k, dtype=np.float64):
        v = d.get(k)
        if v is None:
            return None
        v = v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
        return np.asarray(v, dtype)

    w = arr("weight", np.float32)  # the release's 50,000 x 10,000 is 2 GB already
    if w.ndim != 2:
        raise InputError(f"{p}: weight must be 2-d [n_train, n_targets], got shape {w.shape}")
    nt = w.shape[1]
    bias = arr("bias")
    bias = np.zeros(nt) if bias is None else bias.reshape(-1)
    lam = arr("lam")
    lam = np.full(nt, np.nan) if lam is None else np.broadcast_to(lam.reshape(-1), (nt,)) \
        if lam.size == 1 else lam.reshape(-1)
    for k, v in (("bias", bias), ("lam", lam)):
        if v.shape != (nt,):
            raise InputError(f"{p}: {k} has shape {v.shape}, but weight {w.shape} has {nt} "
                             f"targets (columns)")
    if not (np.isfinite(w).all() and np.isfinite(bias).all()):
        raise InputError(f"{p}: weight or bias holds NaN or inf")
    return {"weight": w, "bias": bias, "lam": np.array(lam, np.float64), "path": str(p)}


def _store_moments(ds: xr.Dataset, fit_rows: np.ndarray, block: int) -> np.ndarray:
    """Column means of the fitting models' masks, one block of models at a time."""
    total = np.zeros(ds.sizes["train"], np.float64)
    for s in range(0, fit_rows.size, block):
        rows = fit_rows[s:s + block]
        total += np.asarray(ds["mask"][rows].values, np.float64).sum(axis=0)
    return total / max(fit_rows.size, 1)


def _inv_sigma(mu: np.ndarray) -> np.ndarray:
    """1/σ of 0/1 mask columns with mean μ (σ = sqrt(μ(1−μ))); 0 where σ = 0."""
    sigma = np.sqrt(np.clip(mu * (1 - mu), 0, None))
    return np.divide(1.0, sigma, out=np.zeros_like(sigma), where=sigma > 0)


def _std_bias(w: np.ndarray, b: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """The raw-space bias of standardised weights: ``b − (μ/σ) @ w``."""
    return b - (mu * _inv_sigma(mu)) @ w.astype(np.float64)


def _to_raw(w: np.ndarray, b: np.ndarray, mu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return w * _inv_sigma(mu).astype(w.dtype)[:, None], _std_bias(w, b, mu)


def space_evidence(w, b, ds: xr.Dataset, mu: np.ndarray, held: np.ndarray,
                   block: int) -> dict[str, Any]:
    """Per-target squared errors on the held-out models ``held`` of both readings, and the
    sign test between them (see the module docstring)."""
    from scipy.stats import binomtest

    # the standardised reading is (mask/σ) @ w + (b − (μ/σ) @ w): no second weight matrix
    inv = _inv_sigma(mu).astype(w.dtype)
    b_std = _std_bias(w, b, mu)
    sse = {"raw": np.zeros(w.shape[1]), "standardised": np.zeros(w.shape[1])}
    for s in range(0, held.size, block):
        rows = held[s:s + block]
        m = np.asarray(ds["mask"][rows].values, w.dtype)  # w's dtype: no upcast copy of w
        y = np.asarray(ds["margin"][rows].values, np.float64)
        sse["raw"] += ((m @ w + b - y) ** 2).sum(axis=0)
        sse["standardised"] += (((m * inv) @ w + b_std - y) ** 2).sum(axis=0)
    diff = sse["standardised"] - sse["raw"]
    tied = np.abs(diff) <= 1e-9 * (sse["raw"] + sse["standardised"]) + 1e-300
    n_std = int(((diff < 0) & ~tied).sum())
    n_raw = int(((diff > 0) & ~tied).sum())
    n = n_std + n_raw
    p = float(binomtest(n_std, n, 0.5).pvalue) if n else 1.0
    return {"mse_raw": float(sse["raw"].sum() / (held.size * w.shape[1])),
            "mse_standardised": float(sse["standardised"].sum() / (held.size * w.shape[1])),
            "targets_raw_better": n_raw, "targets_standardised_better": n_std,
            "targets_tied": int(tied.sum()), "p_value": p, "n_heldout": int(held.size)}


def import_datamodels(
    path: str | os.PathLike,
    store: str | os.PathLike | xr.Dataset,
    *,
    space: str = "auto",
    target_start: int = 0,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> xr.Dataset:
    """Read MadryLab's released datamodels (``datamodels.pt`` or a fast_l1 output directory)
    into dmdask's datamodels Dataset (``weight(target, train)`` in raw-mask space, ``bias``,
    ``lam``, …), for the run store ``store`` the masks and margins came from (e.g. one made
    with ``dmdask import … --heldout-rows N``).

    ``space``: ``"auto"`` (detect against the store's held-out models; refuse if unclear),
    ``"raw"`` or ``"standardised"`` (see the module docstring). ``target_start``: the first
    store target of the file's columns (``compute_datamodels``'s ``target_start_ind``).
    Refuses (one line) a file whose shapes disagree with the store. With ``out`` the Dataset
    is also written (Zarr; refuses an existing path unless ``overwrite``).
    """
    from ..outputs import write_zarr
    from ..store.runstore import open_store
    from .datamodels import SOLVER_CODES, _versions

    if space not in SPACES:
        raise InputError(f"space must be one of {', '.join(SPACES)}, not {space!r}")
    if out is not None and not isinstance(store, xr.Dataset) and \
            os.path.realpath(os.fspath(out)) == os.path.realpath(os.fspath(store)):
        raise InputError(f"{os.fspath(out)} is the run store the datamodels are read "
                         "against; refusing to write the datamodels over it")
    if out is not None and os.path.exists(os.fspath(out)) and not overwrite:
        raise InputError(f"{os.fspath(out)}: already exists; refusing to overwrite it (pass "
                         "overwrite / --overwrite)")
    rel = load_released(path)
    w, b = rel["weight"], rel["bias"]
    ds = store if isinstance(store, xr.Dataset) else open_store(store)
    where = ds.attrs.get("dmdask", {}).get("path", "the store") if isinstance(
        ds.attrs.get("dmdask"), dict) else "the store"
    n_train, n_target = ds.sizes["train"], ds.sizes["target"]
    t0 = int(target_start)
    if w.shape[0] != n_train or t0 < 0 or t0 + w.shape[1] > n_target:
        hint = " (it looks transposed)" if w.shape == (n_target, n_train) else ""
        raise InputError(
            f"{rel['path']}: weight is [n_train={w.shape[0]}, n_targets={w.shape[1]}]{hint}, "
            f"but {where} has {n_train} training examples and {n_target} targets"
            + (f" (from target {t0})" if t0 else ""))
    tpos = np.arange(t0, t0 + w.shape[1])
    ds_t = ds.isel(target=tpos)
    kind = np.asarray(ds["kind"].values).astype(str)
    done = np.asarray(ds["completed"].values, bool)
    fit_rows = np.flatnonzero((kind == "random") & done)
    held = np.flatnonzero((kind == "heldout") & done)
    block = int(ds.attrs.get("dmdask", {}).get("block_size", 256)) if isinstance(
        ds.attrs.get("dmdask"), dict) else 256
    need_mu = space != "raw"
    if need_mu and fit_rows.size == 0:
        raise InputError(f"{where}: no completed 'random' models to take the standardisation "
                         "(μ, σ of the masks) from; pass space='raw' if the weights are raw")
    mu = _store_moments(ds, fit_rows, block) if need_mu else None
    evidence: dict[str, Any] = {}
    chosen = space
    if space == "auto":
        if held.size == 0:
            raise InputError(f"{where}: no completed held-out models to tell the weight space "
                             "from; say it: --space raw or --space standardised (or import the "
                             "store with --heldout-rows N)")
        evidence = space_evidence(w, b, ds_t, mu, held, block)
        p_max = float(config.get("formats.space-test-p", 1e-3))
        ratio = float(config.get("formats.space-min-ratio", 1.05))
        m_raw, m_std = evidence["mse_raw"], evidence["mse_standardised"]
        n_std, n_raw = evidence["targets_standardised_better"], evidence["targets_raw_better"]
        if n_std + n_raw == 0:
            chosen = "raw"  # every target's two readings agree (all-zero weights)
        elif evidence["p_value"] < p_max and n_std > n_raw and m_raw >= ratio * m_std:
            chosen = "standardised"
        elif evidence["p_value"] < p_max and n_raw > n_std and m_std >= ratio * m_raw:
            chosen = "raw"
        else:
            raise InputError(
                f"{rel['path']}: cannot tell the weight space from {held.size} held-out models "
                f"(held-out MSE raw {m_raw:.4g}, standardised {m_std:.4g}, need a ratio ≥ "
                f"{ratio:g}; standardised better on {n_std} of {n_std + n_raw} targets, sign "
                f"test p = {evidence['p_value']:.2g}, need < {p_max:g}); say it: --space raw "
                "or --space standardised")
    if chosen == "standardised":
        w, b = _to_raw(w, b, mu)
    T = w.shape[1]
    coords: dict[str, Any] = {"target": ds_t["target"].values, "train": ds["train"].values}
    for c in ("target_label", "target_train_index"):
        if c in ds.coords:
            coords[c] = ("target", np.asarray(ds_t[c].values))
    if "train_label" in ds.coords:
        coords["train_label"] = ("train", np.asarray(ds["train_label"].values))
    meta = ds.attrs.get("dmdask", {}) if isinstance(ds.attrs.get("dmdask"), dict) else {}
    h = hashlib.sha1()
    with open(rel["path"], "rb") as f:
        for piece in iter(lambda: f.read(1 << 24), b""):
            h.update(piece)
    sha1 = h.hexdigest()
    attrs = {
        "dmdask_datamodels": 1,
        "store": str(meta.get("path", "")),
        "store_fingerprint": meta.get("fingerprint"),
        "store_seed": meta.get("seed"),
        "alpha": meta.get("alpha"),
        "selection": "imported",
        "n_models": int(fit_rows.size),
        "solver_codes": list(SOLVER_CODES),
        "solvers_used": ["saga"],
        "versions": _versions(),
        "imported_from": rel["path"],
        "imported_sha1": sha1,
        "imported_space": chosen,
        "imported_space_given": space,
        "target_start": t0,
        "converged_note": "unknown for imported weights: set true",
        **{f"space_{k}": v for k, v in evidence.items()},
    }
    lam = rel["lam"]
    data = {
        "weight": (("target", "train"), np.ascontiguousarray(w.T, np.float32),
                   {"description": "raw-mask space: prediction = mask @ weight + bias"}),
        "bias": ("target", b.astype(np.float64)),
        "lam": ("target", lam, {"description": "λ as saved by fast_l1 (standardised space, "
                                               "1/(2n))"}),
        "val_mse": ("target", np.full(T, np.nan)),
        "lambdas": (("target", "lam_index"), lam[:, None]),
        "val_mse_path": (("target", "lam_index"), np.full((T, 1), np.nan)),
        "n_models": ("target", np.full(T, fit_rows.size, np.int64)),
        "n_iter": ("target", np.zeros(T, np.int64)),
        "converged": ("target", np.ones(T, bool)),
        "solver": ("target", np.full(T, SOLVER_CODES.index("saga"), np.int8),
                   {"flag_values": list(range(len(SOLVER_CODES))),
                    "flag_meanings": " ".join(SOLVER_CODES)}),
    }
    dm = xr.Dataset(data, coords=coords, attrs=portable_attrs(attrs))
    if out is not None:
        write_zarr(dm, os.fspath(out), overwrite=overwrite)
    return dm
