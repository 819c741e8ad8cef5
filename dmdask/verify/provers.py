"""Provers: the honest one and the adversaries the protocols must reject.

A prover has ``scores`` (``[Z, N]``, indicator coding) and ``respond(challenge)`` → a
:class:`~dmdask.verify.protocols.ProverMessage` (its models' outputs on the challenged subsets,
trained with the challenge's seeds, and its scores). Score attacks keep honest models and send
altered scores (:func:`scaled` is the a*/2 attack on the naive check); :class:`Targeted` sends
altered scores *and* corrupts the outputs of the models behind chosen pairs so that
RESIDUALESTIMATION over-estimates B_{≥2} just enough to cover its gap (the reviewer's worry).
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from . import residual
from .protocols import Challenge, ProverMessage

__all__ = ["ATTACKS", "Honest", "Targeted", "attack", "corrupted", "favoured", "noised",
           "permuted", "scaled"]


class Honest:
    """Trains every challenged subset with its seed and sends ``scores`` (any array: dmdask's
    fitted datamodels, the optimum, or an attack's)."""

    omniscient = False

    def __init__(self, trainer, scores):
        self.trainer = trainer
        self.scores = np.atleast_2d(np.asarray(scores, np.float64))

    def respond(self, ch: Challenge, pairing=None) -> ProverMessage:
        out = self.trainer.train(ch.masks, ch.seeds, ch.view)
        return ProverMessage(outputs=np.asarray(out, np.float64), scores=self.scores,
                             trainings=len(ch.masks))


# ----------------------------------------------------------------------------- score attacks


def scaled(a: np.ndarray, factor: float = 0.5, rng=None) -> np.ndarray:
    """a·factor (a*/2: halved payouts)."""
    return np.asarray(a, float) * factor


def noised(a: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
    """a + N(0, scale²) on every coordinate."""
    a = np.asarray(a, float)
    return a + rng.normal(0.0, scale, a.shape)


def permuted(a: np.ndarray, rng: np.random.Generator, among: np.ndarray | None = None
             ) -> np.ndarray:
    """The scores of ``among`` (default all) shuffled between examples."""
    a = np.array(a, float)
    idx = np.arange(a.shape[-1]) if among is None else np.asarray(among)
    a[..., idx] = a[..., rng.permutation(idx)]
    return a


def corrupted(a: np.ndarray, coords, value: float) -> np.ndarray:
    """A few coordinates set to ``value``."""
    a = np.array(a, float)
    a[..., np.asarray(coords)] = value
    return a


def favoured(a: np.ndarray, group, beta: float) -> np.ndarray:
    """A group's scores raised by the constant β."""
    a = np.array(a, float)
    a[..., np.asarray(group)] += beta
    return a


ATTACKS = ("scaled", "noised", "permuted", "corrupted", "favoured")


def attack(name: str, a: np.ndarray, rng: np.random.Generator, **kw) -> np.ndarray:
    """Apply a named score attack."""
    fns = {"scaled": scaled, "noised": noised, "permuted": permuted, "corrupted": corrupted,
           "favoured": favoured}
    if name not in fns:
        raise InputError(f"unknown attack {name!r}; one of {ATTACKS}")
    if name in ("noised", "permuted"):
        kw.setdefault("rng", rng)
    return fns[name](a, **kw)


# ----------------------------------------------------------------------------- targeted


class Targeted(Honest):
    """Sends ``scores`` (gap err > ε) and corrupts the models behind pairs of one level so that
    B̂_{≥2} ≥ ``claim_mse`` − ε/2 + ``margin``: the fewest such models it can find.

    ``level=2``: raise the 2ρ-level products (the pair's second member set to ``bound·sign`` of
    the first's output, which also raises mean f²); ``level=1``: lower the ρ-level products
    (B̂_1 moves 4× more per product). ``omniscient``: it is told the secret pairing (the
    strongest such prover; with large N the pairs are identifiable from subset overlap anyway).
    ``max_models`` caps the corruption (e.g. at m* to stay under the spot checks' radar).
    """

    omniscient = True

    def __init__(self, trainer, scores, *, claim_mse: float, epsilon: float, rho: float,
                 bound: float, level: int = 2, margin: float = 0.0,
                 max_models: int | None = None):
        super().__init__(trainer, scores)
        if level not in (1, 2):
            raise InputError(f"level must be 1 (ρ) or 2 (2ρ), got {level}")
        self.need = float(claim_mse) - epsilon / 2.0 + margin
        self.rho, self.bound, self.level, self.max_models = rho, bound, level, max_models
        self.corrupted = 0

    def respond(self, ch: Challenge, pairing=None) -> ProverMessage:
        msg = super().respond(ch)
        if pairing is None:
            raise InputError("the targeted prover needs the pairing")
        first, second, level = pairing
        out = msg.outputs
        sel = np.flatnonzero(level == self.level)
        fa = out[first[sel], 0]
        sign = np.where(fa >= 0, 1.0, -1.0) * (1.0 if self.level == 2 else -1.0)
        new = self.bound * sign
        gain = (new - out[second[sel], 0]) * fa * (1.0 if self.level == 2 else -1.0)
        order = sel[np.argsort(-gain)]
        cap = len(order) if self.max_models is None else min(len(order), int(self.max_models))

        def corrupt(m: int) -> np.ndarray:
            o = out.copy()
            rows = second[order[:m]]
            o[rows, 0] = self.bound * np.where(out[first[order[:m]], 0] >= 0, 1.0, -1.0) * (
                1.0 if self.level == 2 else -1.0)
            return o

        def est(m: int) -> float:
            o = corrupt(m)
            return residual.residual_estimation(o[first], o[second], level, self.rho)[0].b_ge2

        lo, hi = 0, cap
        if est(hi) < self.need:
            m = hi  # cannot reach it: corrupt all it may
        else:
            while lo < hi:  # smallest m reaching the need (the estimate rises with m)
                mid = (lo + hi) // 2
                if est(mid) >= self.need:
                    hi = mid
                else:
                    lo = mid + 1
            m = lo
        self.corrupted = m
        msg.outputs = corrupt(m)
        return msg
