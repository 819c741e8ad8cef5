"""Utilities of trained models from their margins on the store's targets (REFERENCE §7).

A utility spec is ``NAME`` or ``NAME@TARGETS``:

* ``output`` (default): each target's own margin — one game per target, values
  ``value(train, target)``;
* ``mean_margin``: the mean margin over the targets — one scalar game, ``value(train)``;
* ``accuracy``: the fraction of targets with margin > 0 (correct) — scalar.

``TARGETS`` selects targets by position: ``0,5,9``, ranges ``0-99`` (inclusive), or
``label=K`` (every target of class K). A spec that names no target of the store, or an
unknown utility, is refused in one line.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError

__all__ = ["UTILITIES", "Utility", "parse_utility"]

UTILITIES = ("output", "mean_margin", "accuracy")


@dataclass(frozen=True)
class Utility:
    """A parsed utility: its ``name``, the target positions it reads and its spec."""

    name: str
    targets: np.ndarray
    spec: str

    @property
    def scalar(self) -> bool:
        return self.name != "output"

    def __call__(self, margins: np.ndarray) -> np.ndarray:
        """Utility of runs from their margins on ``self.targets`` [runs, T]: [runs] for a
        scalar utility, [runs, T] for ``output``."""
        m = np.asarray(margins, np.float64)
        if self.name == "output":
            return m
        if self.name == "mean_margin":
            return m.mean(1)
        return (m > 0).mean(1)


def _positions(sel: str, spec: str, n_target: int, labels) -> np.ndarray:
    if sel.startswith("label="):
        try:
            k = int(sel[6:])
        except ValueError:
            raise InputError(f"utility {spec!r}: label=K needs an integer class") from None
        if labels is None:
            raise InputError(f"utility {spec!r}: the store records no target labels")
        pos = np.flatnonzero(np.asarray(labels) == k)
        if pos.size == 0:
            raise InputError(f"utility {spec!r}: no target of the store has label {k}")
        return pos
    out: list[int] = []
    for part in sel.split(","):
        a, dash, b = part.strip().partition("-")
        try:
            lo = int(a)
            hi = int(b) if dash else lo
        except ValueError:
            raise InputError(f"utility {spec!r}: targets must be positions, ranges a-b or "
                             "label=K") from None
        if lo < 0 or hi >= n_target or hi < lo:
            raise InputError(f"utility {spec!r}: targets {part.strip()} are not positions of "
                             f"the store's {n_target} targets [0, {n_target})")
        out.extend(range(lo, hi + 1))
    return np.unique(np.asarray(out, np.int64))


def parse_utility(spec: str | None, n_target: int, target_labels=None) -> Utility:
    """Parse ``NAME[@TARGETS]`` against a store with ``n_target`` targets."""
    spec = "output" if spec is None else str(spec).strip()
    name, at, sel = spec.partition("@")
    if name not in UTILITIES:
        raise InputError(f"utility {spec!r}: not one of {', '.join(UTILITIES)}")
    pos = (_positions(sel, spec, n_target, target_labels) if at
           else np.arange(n_target, dtype=np.int64))
    if pos.size == 0:
        raise InputError(f"utility {spec!r} selects no target")
    return Utility(name, pos, spec)
