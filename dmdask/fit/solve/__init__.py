"""LASSO-path solvers and their registry.

Every solver implements :class:`dmdask.fit.solve.base.Solver` and registers here by name; the
contract suite ``tests/test_solver_contract.py`` runs every registered solver. Modules are
imported lazily so a solver's optional pieces cost nothing until used.
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
    "to_raw",
]

# name -> "module:attribute" of a Solver class
_REGISTRY: dict[str, str] = {
    "gram": "dmdask.fit.solve.gram:GramSolver",
    "saga": "dmdask.fit.solve.saga:SagaSolver",
}


def register_solver(name: str, target: str) -> None:
    """Register a solver class given as ``"package.module:ClassName"``."""
    _REGISTRY[name] = target


def _load(name: str):
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise DmdaskError(f"unknown solver {name!r}; registered: {sorted(_REGISTRY)}") from None
    mod, _, attr = target.partition(":")
    try:
        module = importlib.import_module(mod)
    except ModuleNotFoundError as e:
        if e.name == mod:
            raise DmdaskError(f"solver {name!r} is registered but {mod} does not exist") from e
        raise
    return getattr(module, attr)


def get_solver(name: str, **kwargs) -> Solver:
    """An instance of the registered solver ``name``."""
    return _load(name)(**kwargs)


def available_solvers() -> list[str]:
    """Names of registered solvers whose module imports."""
    out = []
    for name in _REGISTRY:
        try:
            _load(name)
        except DmdaskError:
            continue
        out.append(name)
    return out
