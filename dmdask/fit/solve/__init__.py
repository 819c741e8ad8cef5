"""LASSO-path solvers and their registry.

Every solver implements :class:`dmdask.fit.solve.base.Solver` and registers here by name; the
contract suite ``tests/test_solver_contract.py`` runs every registered solver. Modules are
imported lazily so a solver's optional pieces cost nothing until used; a registered solver
whose module fails to import is an error that names it, never a solver silently missing.
"""

from __future__ import annotations

import importlib

from ...errors import DmdaskError
from .base import PathOptions, PathResult, Solver, Split, UnsupportedTargets, to_raw

__all__ = [
    "PathOptions",
    "PathResult",
    "Solver",
    "Split",
    "UnsupportedTargets",
    "available_solvers",
    "get_solver",
    "register_solver",
    "registered_solvers",
    "to_raw",
]

# name -> "module:attribute" of a Solver class
_REGISTRY: dict[str, str] = {
    "gram": "dmdask.fit.solve.gram.solver:GramSolver",
    "saga": "dmdask.fit.solve.saga:SagaSolver",
}


def register_solver(name: str, target: str) -> None:
    """Register a solver class given as ``"package.module:ClassName"``."""
    _REGISTRY[name] = target


def registered_solvers() -> list[str]:
    """Names of every registered solver, importable or not (the contract suite runs each)."""
    return list(_REGISTRY)


def _load(name: str):
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise DmdaskError(f"unknown solver {name!r}; registered: {sorted(_REGISTRY)}") from None
    mod, _, attr = target.partition(":")
    try:
        module = importlib.import_module(mod)
    except ImportError as e:  # the module itself or something it imports
        raise DmdaskError(f"solver {name!r} ({target}) failed to import: "
                          f"{type(e).__name__}: {e}") from e
    try:
        return getattr(module, attr)
    except AttributeError:
        raise DmdaskError(f"solver {name!r} ({target}): {mod} has no {attr!r}") from None


def get_solver(name: str, **kwargs) -> Solver:
    """An instance of the registered solver ``name`` (a :class:`~dmdask.errors.DmdaskError`
    naming it and the cause where it is unknown or fails to import)."""
    return _load(name)(**kwargs)


def available_solvers() -> list[str]:
    """Names of the registered solvers, each imported first: one that fails to import raises
    a :class:`~dmdask.errors.DmdaskError` naming it and its ImportError (a registered solver
    never silently drops out)."""
    for name in _REGISTRY:
        _load(name)
    return list(_REGISTRY)
