"""Attribution estimators, each producing a ``(target, train)`` score matrix in the schema of
:mod:`dmdask.analysis.scores` (raw-mask space, τ > 0: presence raises the output; a ``bias``
coordinate where the estimator is a calibrated predictor).

Registry (``ESTIMATORS``; ``compute(ds, name, **opts)``):

=========================  ==========================================================  ======  =====
name                       what                                                        bias    eq. 9
=========================  ==========================================================  ======  =====
dom_margin                 difference of means (Feldman–Zhang) on margins              yes     yes
dom_correctness            difference of means on correctness 1[margin > 0]            yes*    yes
ols                        least-norm OLS with intercept (``light_ridge=`` option)     yes     yes
ridge                      ridge with intercept, (G_c + nλI)w = c_c, λ by K-fold CV    yes     yes
representation_similarity  −‖φ(x) − φ(z_j)‖ in the penultimate layer (``metric=``)     no      no
influence_last_layer       −I_up,loss on the last layer, exact Hessian + ``damping``   no      no
tracincp                   Σ_c η_c ∇ℓ(w_c, z_j)·∇ℓ(w_c, x) over epoch checkpoints      no      no
trak                       TRAK via ``traker`` (``proj_dim="auto"``, ``lambda_reg=``)  no      no
loo_exact                  exact leave-one-out, Sherman–Morrison (least-squares jobs)  no      no
loo_newton                 one-Newton-step leave-one-out with leverage (cross-entropy)  no      no
loo_retrain                leave-one-out by retraining N + 1 sets through the store    no      no
shapley                    Data Shapley per target from runs at Gauss nodes over α     no      no
=========================  ==========================================================  ======  =====

\\* predicts correctness, not the margin: :func:`dmdask.evaluate` scores it against correctness.
The first four are computed from the store's fitting models (``kind == "random"``) by
:mod:`dmdask.analysis.estimators.store`. The last four (:mod:`dmdask.analysis.estimators.model`) train models of
the store's job through its optional model hooks (:mod:`dmdask.store.jobspec`) and take
``n_models=``, ``seed=`` and ``models="full"|"subsets"|"store"``; without a bias they are
calibrated by :func:`dmdask.evaluate` (affine fit). ``docs/estimators.md`` has the formulas.
The three leave-one-out estimators (:mod:`dmdask.analysis.estimators.loo`, ``docs/values.md``)
need their own job hooks (``Estimator.hooks``); ``loo_retrain`` trains N + 1 models through the
store, so it is not among :func:`dmdask.analysis.compare.default_rows` (name it as a row).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...errors import InputError
from .loo import LOO_HOOKS, loo_exact, loo_newton, loo_retrain
from .model import influence_last_layer, representation_similarity, tracincp, trak
from .semivalue import shapley
from .store import StoreStats, difference_of_means, ols, ridge, store_statistics

__all__ = ["ESTIMATORS", "MODEL_BASED", "Estimator", "StoreStats", "compute",
           "difference_of_means", "influence_last_layer", "loo_exact", "loo_newton",
           "loo_retrain", "ols", "register", "representation_similarity", "ridge", "shapley",
           "store_statistics", "tracincp", "trak"]


@dataclass(frozen=True)
class Estimator:
    """A registered estimator: ``fn(ds, **opts) -> DataArray``, the output it models, whether
    it returns a bias, and whether it honours paper eq. 9 for training-example targets;
    ``hooks``: the job hooks a model-based estimator needs (None: the model hooks), and
    ``default_row``: whether :func:`dmdask.analysis.compare.default_rows` includes it."""

    name: str
    fn: Callable[..., Any]
    output: str
    has_bias: bool
    eq9: bool
    description: str
    hooks: tuple[str, ...] | None = None
    default_row: bool = True


ESTIMATORS: dict[str, Estimator] = {}


def register(est: Estimator) -> Estimator:
    """Add an estimator to the registry (names are unique)."""
    if est.name in ESTIMATORS:
        raise InputError(f"estimator {est.name!r} is already registered")
    ESTIMATORS[est.name] = est
    return est


def _dom(output):
    def fn(ds, **opts):
        return difference_of_means(ds, output=output, **opts)

    return fn


def _with_output(f, output):
    def fn(ds, **opts):
        return f(ds, output=output, **opts)

    return fn


register(Estimator("dom_margin", _dom("margin"), "margin", True, True,
                   "difference of means (Feldman-Zhang) on margins"))
register(Estimator("dom_correctness", _dom("correctness"), "correctness", True, True,
                   "difference of means (Feldman-Zhang) on correctness"))
register(Estimator("ols", _with_output(ols, "margin"), "margin", True, True,
                   "least-norm OLS with intercept on margins"))
register(Estimator("ridge", _with_output(ridge, "margin"), "margin", True, True,
                   "ridge with intercept on margins"))
register(Estimator("representation_similarity", representation_similarity, "margin", False,
                   False, "negative L2 distance in the penultimate layer of trained models"))
register(Estimator("influence_last_layer", influence_last_layer, "margin", False, False,
                   "influence functions (Koh & Liang) on the last layer, exact Hessian"))
register(Estimator("tracincp", tracincp, "margin", False, False,
                   "TracInCP over end-of-epoch checkpoints"))
register(Estimator("trak", trak, "margin", False, False,
                   "TRAK (MadryLab traker 0.3.2) over models on alpha-subsets"))

register(Estimator("loo_exact", loo_exact, "margin", False, False,
                   "exact leave-one-out by Sherman-Morrison (least-squares jobs)",
                   hooks=LOO_HOOKS["loo_exact"]))
register(Estimator("loo_newton", loo_newton, "margin", False, False,
                   "one-Newton-step leave-one-out with the leverage term",
                   hooks=LOO_HOOKS["loo_newton"]))
register(Estimator("loo_retrain", loo_retrain, "margin", False, False,
                   "leave-one-out by retraining the N + 1 sets through the store",
                   hooks=LOO_HOOKS["loo_retrain"], default_row=False))
register(Estimator("shapley", shapley, "margin", False, False,
                   "Data Shapley per target from runs at Gauss-Legendre nodes over alpha",
                   hooks=(), default_row=False))

#: estimators that train models of the store's job (need its model hooks)
MODEL_BASED = ("influence_last_layer", "representation_similarity", "tracincp", "trak",
               "loo_exact", "loo_newton", "loo_retrain", "shapley")


def compute(ds, name: str, **opts):
    """Run the registered estimator ``name`` on the run store ``ds`` (Dataset or path)."""
    if name not in ESTIMATORS:
        raise InputError(f"unknown estimator {name!r}; known: {sorted(ESTIMATORS)}")
    if not hasattr(ds, "sizes"):
        from ...store.runstore import open_store

        ds = open_store(ds)
    return ESTIMATORS[name].fn(ds, **opts)

