"""λ grid, splits and selection rules shared by every solver (REFERENCE.md §1.3)."""

from __future__ import annotations

import numpy as np

from ...errors import DmdaskError
from ..splits import fold_bounds, holdout_size

__all__ = [
    "fold_bounds",
    "holdout_size",
    "lambda_grid",
    "select_lambda",
    "should_stop",
]


def lambda_grid(lam_max, n_lambdas: int = 30, lambda_ratio: float = 1e-3) -> np.ndarray:
    """Per-target grid λ_max·r^{i/(k−1)}, i = 0…k−1 (descending), shape [T, k].

    ``lam_max`` [T] is in the standardised space. A target with λ_max = 0 (constant output)
    gets an all-zero grid (its solution is w = 0 at every λ)."""
    lam_max = np.asarray(lam_max, dtype=np.float64).reshape(-1)
    if n_lambdas < 1:
        raise DmdaskError(f"n_lambdas must be >= 1, not {n_lambdas}")
    if not (0.0 < lambda_ratio <= 1.0):
        raise DmdaskError(f"lambda_ratio must lie in (0, 1], not {lambda_ratio}")
    if n_lambdas == 1:
        return lam_max[:, None].copy()
    expo = np.arange(n_lambdas) / (n_lambdas - 1)
    return lam_max[:, None] * lambda_ratio ** expo[None, :]


def select_lambda(val_mse_path) -> np.ndarray:
    """Index [T] of the best λ per target: smallest validation MSE, ties → the smaller λ
    (grids are descending, so the later index). NaN entries (not solved) are ignored; an
    all-NaN row selects index 0."""
    v = np.asarray(val_mse_path, dtype=np.float64)
    T, L = v.shape
    filled = np.where(np.isnan(v), np.inf, v)
    # argmin over the reversed path picks the last (smallest λ) of equal minima
    idx = L - 1 - np.argmin(filled[:, ::-1], axis=1)
    allnan = np.isnan(v).all(axis=1)
    idx[allnan] = 0
    return idx


def should_stop(val_prev, val_cur, n_done: int, nnz, min_lams_to_try: int = 10) -> np.ndarray:
    """fast_l1's early-stop rule per target: validation MSE rose against the previous λ, at
    least ``min_lams_to_try`` λ values are done, and the solution has more than one nonzero."""
    val_prev = np.asarray(val_prev)
    val_cur = np.asarray(val_cur)
    return (val_cur > val_prev) & (n_done >= min_lams_to_try) & (np.asarray(nnz) > 1)
