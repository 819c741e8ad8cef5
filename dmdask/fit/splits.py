"""How the models are split to choose λ: the validation holdout and K contiguous folds, by row
position. Shared by the statistics pass (which accumulates one group per split part) and the
solvers (which select λ from those groups)."""

from __future__ import annotations

import numpy as np

from ..errors import DmdaskError

__all__ = ["fold_bounds", "holdout_size"]


def holdout_size(n: int, val_fraction: float) -> int:
    """Number of validation rows: the first ``round(val_fraction·n)`` rows (at least 1, and at
    least 1 row left for training)."""
    n_val = int(round(val_fraction * n))
    n_val = min(max(n_val, 1), n - 1)
    if n_val < 1:
        raise DmdaskError(f"cannot split {n} rows into training and validation")
    return n_val


def fold_bounds(n: int, folds: int) -> np.ndarray:
    """Boundaries [K+1] of K contiguous folds of n rows, with scikit-learn ``KFold`` sizes
    (the first n % K folds one row larger)."""
    if folds < 2 or folds > n:
        raise DmdaskError(f"cannot make {folds} folds of {n} rows")
    sizes = np.full(folds, n // folds, dtype=np.int64)
    sizes[: n % folds] += 1
    return np.concatenate([[0], np.cumsum(sizes)])
