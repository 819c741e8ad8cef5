"""The contract every dmdask LASSO-path solver meets (Gram, streaming SAGA, ...).

A solver turns the fitting models' masks ``X`` (n × d, 0/1) and outputs ``Y`` (n × T, float,
NaN = missing) into a :class:`PathResult`: per target a λ path on standardised features, the
validation MSE of every λ, the chosen λ and the refit weights in raw-mask space.

Conventions (REFERENCE.md §1, shared by all solvers):

* objective (1/2n)‖y_c − X̃_c w̃‖² + λ‖w̃‖₁ on standardised features X̃ = (X − μ)/σ
  (μ, σ with 1/n, from the split the solve uses; σ_j = 0 columns get weight 0);
* λ grid: ``lambda_grid(λ_max, n_lambdas, lambda_ratio)`` (see :mod:`dmdask.fit.solve.grid`);
  λ_max is in the standardised space of the *training* split (holdout) or of all fitting
  models (CV, as scikit-learn's ``LassoCV``); one grid per target, shared by every fold;
* rows are positions in ``X``/``Y`` (the fitting models in model-index order): the holdout
  validates on rows ``[0, n_val)`` with ``n_val = holdout_size(n, val_fraction)``; CV uses the
  contiguous folds ``fold_bounds(n, folds)`` (scikit-learn ``KFold`` sizes, no shuffle);
* validation MSE: mean squared residual (not halved) on the validation rows of the raw-space
  model obtained from the training split (its μ, σ, ȳ); CV MSE = mean over folds;
* selection: the smallest validation MSE, ties → the smaller λ (``select_lambda``);
* refit on all fitting rows at the chosen λ (standardised with their μ, σ);
* per-target rows: a row is unused for target t if ``Y[i, t]`` is NaN, or, when
  ``target_train_index[t] = j ≥ 0``, if ``X[i, j] = 1`` (paper eq. 9; then ``weight[t, j] = 0``).
  The split stays defined by row position over *all* n rows (validation = rows
  ``[0, holdout_size(n, val_fraction))``); an unused row simply drops out of the split it is in,
  and ``n_rows[t]`` counts the used fitting rows. Solvers with ``per_target_rows = False``
  refuse such targets (``UnsupportedTargets``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from ...errors import DmdaskError, UnsupportedTargets

__all__ = [
    "BudgetWarning",
    "PathOptions",
    "PathResult",
    "Solver",
    "Split",
    "UnsupportedTargets",
    "to_raw",
]


class BudgetWarning(UserWarning):
    """Targets used their whole iteration budget (``max_iter`` at one λ) before meeting the
    tolerance: their paths stopped there and their fits are approximate."""


@dataclass(frozen=True)
class Split:
    """How λ is chosen: ``kind="holdout"`` (first ``val_fraction`` rows validate) or
    ``kind="cv"`` (``folds`` contiguous folds by row position)."""

    kind: str = "holdout"
    val_fraction: float = 0.1
    folds: int = 5

    def __post_init__(self):
        if self.kind not in ("holdout", "cv"):
            raise DmdaskError(f"split kind must be 'holdout' or 'cv', not {self.kind!r}")
        if self.kind == "holdout" and not (0.0 < self.val_fraction < 1.0):
            raise DmdaskError(f"val_fraction must lie in (0, 1), not {self.val_fraction}")
        if self.kind == "cv" and self.folds < 2:
            raise DmdaskError(f"cv needs folds >= 2, not {self.folds}")


@dataclass(frozen=True)
class PathOptions:
    """Path options shared by every solver (solver-specific knobs go in ``extra``)."""

    n_lambdas: int = 30
    lambda_ratio: float = 1e-3
    tol: float = 1e-6  # duality gap ≤ tol·‖y_c‖²/(2n) (relative)
    max_iter: int = 5000  # per λ (iterations / epochs, the solver's unit); spent: path stops
    early_stop: bool = False  # fast_l1 rule: stop once validation MSE rises (grid.should_stop)
    min_lams_to_try: int = 10
    target_block_size: int | None = None  # None: setting dmdask.solve.target-block-size
    row_block_size: int | None = None  # None: setting dmdask.solve.row-block-size
    progress: bool = False
    extra: dict = field(default_factory=dict)


@dataclass
class PathResult:
    """Result for a block of T targets over d training examples and L λ values.

    ``weight``/``bias`` are raw-mask space (prediction = mask @ weight + bias), refit on all
    fitting rows at ``lam`` (standardised-space λ). ``val_mse_path`` is NaN where a λ was not
    solved (early stop). ``n_iter`` counts solver iterations over the whole path and refit;
    ``converged`` is True when every solve met the tolerance. ``n_rows`` is the number of
    fitting rows the refit used per target.
    """

    weight: np.ndarray  # [T, d] float64
    bias: np.ndarray  # [T]
    lam: np.ndarray  # [T]
    lambdas: np.ndarray  # [T, L]
    val_mse_path: np.ndarray  # [T, L]
    val_mse: np.ndarray  # [T]
    n_iter: np.ndarray  # [T] int64
    converged: np.ndarray  # [T] bool
    n_rows: np.ndarray  # [T] int64
    solver: str = ""
    info: dict = field(default_factory=dict)

    _PER_TARGET: ClassVar[tuple[str, ...]] = (
        "weight", "bias", "lam", "lambdas", "val_mse_path", "val_mse", "n_iter", "converged",
        "n_rows",
    )

    @property
    def n_targets(self) -> int:
        return self.weight.shape[0]

    def validate(self) -> PathResult:
        """Check shapes/dtypes; returns self."""
        T, _ = self.weight.shape
        L = self.lambdas.shape[1]
        for name in self._PER_TARGET:
            a = getattr(self, name)
            if a.shape[0] != T:
                raise DmdaskError(f"PathResult.{name} has {a.shape[0]} targets, expected {T}")
        if self.val_mse_path.shape != (T, L):
            raise DmdaskError(f"val_mse_path shape {self.val_mse_path.shape} != {(T, L)}")
        return self

    @classmethod
    def concat(cls, parts: list[PathResult]) -> PathResult:
        """Concatenate results of consecutive target blocks."""
        if len(parts) == 1:
            return parts[0]
        kw: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in cls._PER_TARGET:
                kw[f.name] = np.concatenate([getattr(p, f.name) for p in parts], axis=0)
        solvers = sorted({p.solver for p in parts})
        kw["solver"] = solvers[0] if len(solvers) == 1 else "+".join(solvers)
        kw["info"] = {"parts": [p.info for p in parts]}
        return cls(**kw)


def to_raw(w_std, mu, sigma, ybar):
    """Standardised weights w̃ [T, d] (centred problem) -> raw-mask (w [T, d], b [T]).

    w_j = w̃_j/σ_j (0 where σ_j = 0), b = ȳ − μᵀw (REFERENCE §1.2)."""
    xp = _ns(w_std)
    safe = xp.where(sigma > 0, sigma, 1.0)
    w = xp.where(sigma > 0, w_std / safe, 0.0)
    b = ybar - w @ mu
    return w, b


def _ns(x):
    mod = type(x).__module__.split(".")[0]
    if mod == "cupy":
        import cupy

        return cupy
    return np


@runtime_checkable
class Solver(Protocol):
    """What every registered solver provides (see :mod:`dmdask.fit.solve`).

    ``fit(X, Y, ...)``: ``X`` (n, d) 0/1 and ``Y`` (n, T) float with NaN = missing, numpy or
    dask arrays (rows = fitting models in model-index order); ``target_train_index`` [T]
    (−1 = not a training example). Returns one :class:`PathResult` for all T targets.
    """

    name: ClassVar[str]
    per_target_rows: ClassVar[bool]  # handles NaN margins / eq. 9 training-example targets
    selections: ClassVar[tuple[str, ...]]  # split kinds supported, e.g. ("holdout", "cv")

    def fit(
        self,
        X,
        Y,
        *,
        split: Split,
        options: PathOptions,
        target_train_index=None,
        client=None,
    ) -> PathResult: ...
