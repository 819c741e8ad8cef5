"""The KPN verification protocols (REFERENCE.md §6.5): non-interactive and two-message interactive.

Both decide whether claimed scores ``a`` (indicator coding: prediction b + aᵀm for a subset's
mask m, i.e. datamodel weights) are within ε of the best linear attribution in predictive MSE
under B_p, and output the scores with the verifier's intercept, or abort.

* **Non-interactive** (KPN §3): the verifier trains the ρ-pairs itself and its MSE sample:
  ``4·n_pairs + n_mse`` trainings, O(ε⁻³).
* **Interactive** (Algorithm 1, the algorithm box, which dmdask implements): the verifier sends
  the subsets E (pairs at ρ and 2ρ, members shuffled) with a training seed each; the prover
  trains them all and returns their outputs with its scores; the verifier retrains a secret
  uniform spot-check set C ⊂ E with the prover's seeds (abort if CHECKEQUIV fails), runs
  RESIDUALESTIMATION on the prover's outputs, trains its own MSE sample M with *fresh* seeds,
  and aborts iff mse_hat > B̂_{≥2} + ε/2: ``n_checks + n_mse`` trainings, O(ε⁻²).

Constants (``dmdask.verify.*`` in dmdask.yaml, calibrated by simulation: docs/verify.md), with
u = ε/bound² and L = ln(4Z/δ) for Z targets (a union bound over targets, Theorem 3):
``n_mse = c_mse·L/u²``, ``n_pairs = c_pairs·L/u³`` per level, ``ρ = c_rho·√u``,
``n_checks = c_checks·L/u²``. The intercept is always the verifier's: refit on M (so mse_hat is
the residual variance, ddof 1); a prover's intercept is ignored (KPN's g has none; REFERENCE.md
§6.1 needs one).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from .. import config
from ..errors import InputError
from . import residual

__all__ = ["Challenge", "CheckEquiv", "Plan", "ProverMessage", "Secret", "Trainer", "Verdict",
           "challenge", "interactive", "make_plan", "naive", "non_interactive", "settle"]

PROTOCOLS = ("interactive", "non-interactive")


class Trainer(Protocol):
    """The learning algorithm as the verifier uses it: train one model per mask and return its
    outputs on the targets, ``[n, Z]``. ``view``: the examples the mask columns are (all of
    them for a store); ``fresh``: the seeds are the trainer's own, not the ones given."""

    n_train: int

    def train(self, masks: np.ndarray, seeds: np.ndarray, view: np.ndarray, *,
              fresh: bool = False) -> np.ndarray: ...


@dataclass(frozen=True)
class Plan:
    """Sizes of one verification (all counts are trainings or models)."""

    epsilon: float
    delta: float
    p: float
    bound: float
    n_targets: int
    rho: float
    n_pairs: int      # pairs per level (ρ and 2ρ)
    n_mse: int        # |M|
    n_checks: int     # |C|

    @property
    def n_challenge(self) -> int:
        """|E|: both members of every pair."""
        return 4 * self.n_pairs

    @property
    def log_term(self) -> float:
        return math.log(4.0 * self.n_targets / self.delta)

    @property
    def m_star(self) -> float:
        """Corrupted models above which the spot checks catch the prover w.p. ≥ 1 − δ/4:
        |E|·ln(4/δ)/k (REFERENCE.md §6.6, derived)."""
        return self.n_challenge * math.log(4.0 / self.delta) / max(self.n_checks, 1)

    @property
    def threshold(self) -> float:
        """Accept iff mse_hat ≤ B̂_{≥2} + ε/2."""
        return self.epsilon / 2.0

    def verifier_trainings(self, protocol: str) -> int:
        if protocol == "interactive":
            return self.n_checks + self.n_mse
        return self.n_challenge + self.n_mse

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(n_challenge=self.n_challenge, m_star=self.m_star, threshold=self.threshold)
        return d


def _constants(constants: dict[str, float] | None) -> dict[str, float]:
    c = {k: float(config.get(f"verify.{k}")) for k in ("c-mse", "c-pairs", "c-rho", "c-checks")}
    for k, v in (constants or {}).items():
        if k not in c:
            raise InputError(f"unknown verification constant {k!r}; one of {sorted(c)}")
        c[k] = float(v)
    return c


def check_tolerances(epsilon: float, delta: float) -> None:
    """Refuse ε ≤ 0 (or not a number) and δ outside (0, 1)."""
    for name, v in (("epsilon", epsilon), ("delta", delta)):
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            raise InputError(f"{name} must be a finite number, got {v!r}")
    if not epsilon > 0:
        raise InputError(f"epsilon must be > 0, got {epsilon!r}")
    if not 0.0 < delta < 1.0:
        raise InputError(f"delta must be in (0, 1), got {delta!r}")


def make_plan(epsilon: float, delta: float, p: float, *, bound: float = 1.0,
              n_targets: int = 1, constants: dict[str, float] | None = None) -> Plan:
    """The sizes for ε (MSE units), δ, subset fraction p and output bound b_f (|f| ≤ bound)."""
    try:
        epsilon, delta, p, bound = float(epsilon), float(delta), float(p), float(bound)
    except (TypeError, ValueError) as e:
        raise InputError(f"epsilon, delta, p and bound must be numbers ({e})") from None
    check_tolerances(epsilon, delta)
    if not (bound > 0 and math.isfinite(bound)):
        raise InputError(f"bound must be a positive number, got {bound!r}")
    if not (0.0 < epsilon <= bound ** 2):
        raise InputError(f"epsilon must be in (0, bound²] = (0, {bound ** 2:g}], got {epsilon!r}")
    if not 0.0 < delta < 1.0:
        raise InputError(f"delta must be in (0, 1), got {delta!r}")
    if not 0.0 < p < 1.0:
        raise InputError(f"p (the subset fraction) must be in (0, 1), got {p!r}")
    if int(n_targets) < 1:
        raise InputError(f"n_targets must be >= 1, got {n_targets}")
    c = _constants(constants)
    u = epsilon / bound ** 2
    big_l = math.log(4.0 * int(n_targets) / delta)
    n_pairs = math.ceil(c["c-pairs"] * big_l / u ** 3)
    return Plan(epsilon=epsilon, delta=delta, p=p, bound=bound, n_targets=int(n_targets),
                rho=min(c["c-rho"] * math.sqrt(u), 0.45),
                n_pairs=n_pairs, n_mse=math.ceil(c["c-mse"] * big_l / u ** 2),
                n_checks=min(math.ceil(c["c-checks"] * big_l / u ** 2), 4 * n_pairs))


# ----------------------------------------------------------------------------- messages


@dataclass
class Challenge:
    """V → P: the subsets E (columns: the examples ``view``) and one training seed each."""

    masks: np.ndarray     # bool [|E|, len(view)]
    seeds: np.ndarray     # uint64 [|E|]
    view: np.ndarray      # int [width]


@dataclass
class Secret:
    """What the verifier keeps: which rows of E pair up at which level, and C."""

    first: np.ndarray     # [n_pairs_total] row of s in E
    second: np.ndarray    # [n_pairs_total] row of s′ in E
    level: np.ndarray     # 1 (ρ) or 2 (2ρ)
    checks: np.ndarray    # rows of E in C


@dataclass
class ProverMessage:
    """P → V: the outputs of the prover's models of E (``[|E|, Z]``, rows as in the challenge)
    and its scores ``[Z, N]`` (indicator coding)."""

    outputs: np.ndarray
    scores: np.ndarray
    trainings: int = 0


class CheckEquiv:
    """CHECKEQUIV on outputs: bitwise (``atol = rtol = 0``, deterministic jobs) or within a
    tolerance (|a − b| ≤ atol + rtol·|b|, for training that is not bit-reproducible)."""

    def __init__(self, atol: float = 0.0, rtol: float = 0.0):
        if atol < 0 or rtol < 0:
            raise InputError(f"CHECKEQUIV tolerances must be >= 0, got atol={atol}, rtol={rtol}")
        self.atol, self.rtol = float(atol), float(rtol)

    def __call__(self, mine: np.ndarray, theirs: np.ndarray) -> np.ndarray:
        mine, theirs = np.asarray(mine), np.asarray(theirs)
        if self.atol == 0 and self.rtol == 0:
            ok = (mine == theirs) | (np.isnan(mine) & np.isnan(theirs))
        else:
            ok = np.isclose(mine, theirs, atol=self.atol, rtol=self.rtol, equal_nan=True)
        return ok.reshape(len(ok), -1).all(axis=1)


@dataclass
class Verdict:
    """The verifier's decision and everything it measured."""

    protocol: str
    accepted: bool
    reason: str
    mse_hat: np.ndarray          # [Z]
    b_ge2_hat: np.ndarray        # [Z] estimated optimal error
    intercept: np.ndarray        # [Z] the verifier's intercept (indicator coding)
    target_accepted: np.ndarray  # [Z]
    verifier_trainings: int
    verifier_inferences: int
    prover_trainings: int
    failed_checks: int
    plan: Plan
    extra: dict = field(default_factory=dict)

    @property
    def gap_hat(self) -> np.ndarray:
        """Estimated sub-optimality mse_hat − B̂_{≥2}."""
        return self.mse_hat - self.b_ge2_hat

    def to_dict(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "decision": "accept" if self.accepted else "abort",
                "reason": self.reason, "mse_hat": self.mse_hat.tolist(),
                "b_ge2_hat": self.b_ge2_hat.tolist(), "gap_hat": self.gap_hat.tolist(),
                "intercept": self.intercept.tolist(),
                "target_accepted": self.target_accepted.tolist(),
                "verifier_trainings": self.verifier_trainings,
                "verifier_inferences": self.verifier_inferences,
                "prover_trainings": self.prover_trainings,
                "failed_checks": self.failed_checks, "plan": self.plan.to_dict(), **self.extra}


# ----------------------------------------------------------------------------- pieces


def _scores(scores, n_train: int, n_targets: int | None = None) -> np.ndarray:
    a = np.asarray(scores, dtype=np.float64)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[1] != n_train or (n_targets is not None and
                                                a.shape[0] != n_targets):
        want = f"({n_targets if n_targets is not None else 'Z'}, {n_train})"
        raise InputError(f"scores have shape {np.shape(scores)}, expected {want} "
                         f"(targets × training examples)")
    if not np.isfinite(a).all():
        raise InputError("scores contain NaN or inf")
    return a


def _views(trainer: Trainer, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Columns to draw for E (what the outputs depend on) and for M (that and the scores'
    support). Exact: a coordinate outside both changes neither f nor aᵀm."""
    support = getattr(trainer, "support", None)
    if support is None:
        full = np.arange(trainer.n_train)
        return full, full
    e_view = np.asarray(support, np.int64)
    return e_view, np.union1d(e_view, np.flatnonzero((a != 0).any(axis=0)))


def _seeds(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 2**63, size=n, dtype=np.int64).astype(np.uint64)


def challenge(plan: Plan, view: np.ndarray, rng: np.random.Generator) -> tuple[Challenge, Secret]:
    """Draw E (ρ- and 2ρ-pairs, members in a secret random order), seeds and C."""
    n = plan.n_pairs
    width = len(view)
    a1, b1 = residual.draw_pairs(rng, n, width, plan.p, plan.rho)
    a2, b2 = residual.draw_pairs(rng, n, width, plan.p, 2.0 * plan.rho)
    masks = np.concatenate([a1, a2, b1, b2])
    order = rng.permutation(masks.shape[0])
    where = np.empty_like(order)
    where[order] = np.arange(order.size)  # row of original member i in the sent E
    first, second = where[:2 * n], where[2 * n:]
    level = np.repeat([1, 2], n)
    checks = np.sort(rng.choice(masks.shape[0], size=plan.n_checks, replace=False))
    return (Challenge(masks=masks[order], seeds=_seeds(rng, masks.shape[0]),
                      view=np.asarray(view)),
            Secret(first=first, second=second, level=level, checks=checks))


def _mse_sample(trainer: Trainer, a: np.ndarray, view: np.ndarray, plan: Plan,
                rng: np.random.Generator, chunk: int = 1 << 24) -> tuple[np.ndarray, np.ndarray]:
    """Train M with fresh seeds; return (mse_hat, intercept) per target (intercept refit)."""
    av = a[:, view]
    rows = max(1, chunk // max(len(view), 1))
    res = []
    for s in range(0, plan.n_mse, rows):
        m = rng.random((min(rows, plan.n_mse - s), len(view))) < plan.p
        f = trainer.train(m, _seeds(rng, len(m)), view, fresh=True)
        res.append(f - m.astype(np.float64) @ av.T)
    r = np.concatenate(res)
    return r.var(axis=0, ddof=1), r.mean(axis=0)


def _estimate(outputs: np.ndarray, secret: Secret, rho: float) -> np.ndarray:
    fits = residual.residual_estimation(outputs[secret.first], outputs[secret.second],
                                        secret.level, rho)
    return np.array([r.b_ge2 for r in fits])


def settle(protocol: str, mse_hat, b_ge2_hat, intercept, plan: Plan, *, trainings: int,
           inferences: int, prover_trainings: int, failed_checks: int = 0,
           extra: dict | None = None, reference=None, slack: float | None = None) -> Verdict:
    """The one-sided rule: abort iff mse_hat > B̂_{≥2} + ε/2 for some target (the naive check:
    ``reference`` t and ``slack`` ε instead)."""
    ref = np.asarray(b_ge2_hat if reference is None else reference, float)
    ok = np.asarray(mse_hat) <= ref + (plan.threshold if slack is None else slack)
    if failed_checks:
        reason, accepted = f"abort: {failed_checks} spot-checked model(s) failed CHECKEQUIV", False
    elif ok.all():
        reason, accepted = "accept", True
    else:
        rule = "B̂_≥2 + ε/2" if reference is None else "t + ε"
        reason = f"abort: mse_hat > {rule} on {int((~ok).sum())} of {ok.size} target(s)"
        accepted = False
    return Verdict(protocol=protocol, accepted=accepted, reason=reason,
                   mse_hat=np.asarray(mse_hat, float), b_ge2_hat=np.asarray(b_ge2_hat, float),
                   intercept=np.asarray(intercept, float),
                   target_accepted=ok & (failed_checks == 0),
                   verifier_trainings=int(trainings), verifier_inferences=int(inferences),
                   prover_trainings=int(prover_trainings), failed_checks=int(failed_checks),
                   plan=plan, extra=dict(extra or {}))


# ----------------------------------------------------------------------------- protocols


def non_interactive(trainer: Trainer, scores, plan: Plan, *, seed: int = 0) -> Verdict:
    """The non-interactive protocol: the verifier trains E and M itself."""
    a = _scores(scores, trainer.n_train, plan.n_targets)
    rng = np.random.default_rng(seed)
    e_view, m_view = _views(trainer, a)
    ch, secret = challenge(plan, e_view, rng)
    outputs = np.asarray(trainer.train(ch.masks, ch.seeds, ch.view), np.float64)
    b_hat = _estimate(outputs, secret, plan.rho)
    mse_hat, icpt = _mse_sample(trainer, a, m_view, plan, rng)
    return settle("non-interactive", mse_hat, b_hat, icpt, plan,
                  trainings=plan.n_challenge + plan.n_mse, inferences=0, prover_trainings=0)


def check_message(msg: ProverMessage, ch: Challenge, n_train: int, plan: Plan) -> np.ndarray:
    """Refuse a prover message that does not answer the challenge; return the scores."""
    out = np.asarray(msg.outputs)
    if out.ndim == 1:
        out = out[:, None]
    if out.shape != (ch.masks.shape[0], plan.n_targets):
        raise InputError(f"the prover's message does not match the challenge: outputs of "
                         f"shape {np.shape(msg.outputs)} for {ch.masks.shape[0]} challenged "
                         f"subsets and {plan.n_targets} target(s)")
    msg.outputs = out.astype(np.float64)
    return _scores(msg.scores, n_train, plan.n_targets)


def interactive(trainer: Trainer, prover, plan: Plan, *, seed: int = 0,
                check: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> Verdict:
    """Algorithm 1. ``prover.respond(challenge)`` returns a :class:`ProverMessage`; a prover
    with ``omniscient = True`` (a simulated worst case) is also shown the secret pairing (never
    C). ``check``: CHECKEQUIV on the outputs of the spot-checked models (default bitwise)."""
    check = check or CheckEquiv()
    rng = np.random.default_rng(seed)
    claimed = _scores(getattr(prover, "scores", np.zeros((plan.n_targets, trainer.n_train))),
                      trainer.n_train, plan.n_targets)
    e_view, m_view = _views(trainer, claimed)
    ch, secret = challenge(plan, e_view, rng)
    if getattr(prover, "omniscient", False):
        msg = prover.respond(ch, pairing=(secret.first, secret.second, secret.level))
    else:
        msg = prover.respond(ch)
    a = check_message(msg, ch, trainer.n_train, plan)
    if not np.array_equal(a, claimed):
        m_view = _views(trainer, a)[1]
    c = secret.checks
    mine = np.asarray(trainer.train(ch.masks[c], ch.seeds[c], ch.view), np.float64)
    failed = int((~np.asarray(check(mine, msg.outputs[c]), bool)).sum())
    rng_m = np.random.default_rng([seed, 1])
    if failed:
        nan = np.full(plan.n_targets, np.nan)
        return settle("interactive", nan, nan, nan, plan, trainings=plan.n_checks,
                      inferences=0, prover_trainings=msg.trainings, failed_checks=failed)
    b_hat = _estimate(msg.outputs, secret, plan.rho)
    mse_hat, icpt = _mse_sample(trainer, a, m_view, plan, rng_m)
    return settle("interactive", mse_hat, b_hat, icpt, plan,
                  trainings=plan.n_checks + plan.n_mse,
                  inferences=plan.n_challenge - plan.n_checks, prover_trainings=msg.trainings)


def naive(trainer: Trainer, scores, plan: Plan, *, t: float, seed: int = 0) -> Verdict:
    """The naive check (REFERENCE.md §6.4): accept iff mse_hat ≤ t + ε for a preset t, on the
    verifier's own fresh-seed sample M. It never estimates the optimum, so scores whose MSE is
    merely plausible (a*/2) pass: the baseline the protocols are compared against."""
    a = _scores(scores, trainer.n_train, plan.n_targets)
    rng = np.random.default_rng([seed, 1])
    mse_hat, icpt = _mse_sample(trainer, a, _views(trainer, a)[1], plan, rng)
    tt = np.broadcast_to(np.asarray(t, float), mse_hat.shape)
    return settle("naive", mse_hat, np.full(mse_hat.shape, np.nan), icpt, plan,
                  trainings=plan.n_mse, inferences=0, prover_trainings=0, reference=tt,
                  slack=plan.epsilon, extra={"t": tt.tolist()})
