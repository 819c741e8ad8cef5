"""The KPN protocols on synthetic learners with known structure: completeness, soundness against
score attacks and the targeted model-corrupting prover, the naive check fooled by a*/2, seed
noise, CHECKEQUIV with a tolerance, the verifier's cost, and bad input.

Rates are judged against δ with a binomial bound: over R repetitions, a protocol whose error
rate is at most δ exceeds ``binom.ppf(0.999, R, δ)`` errors with probability ≤ 0.1%.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from dmdask.errors import InputError
from dmdask.verify import protocols, provers
from dmdask.verify.learners import make_learner

P, EPS, DELTA, REPS = 0.3, 0.2, 0.1, 24


def _max_errors(reps: int, delta: float = DELTA) -> int:
    return int(binom.ppf(0.999, reps, delta))


def _pair(name, n_train=500, noise=0.0, seed=1):
    """A verifier's and a prover's copy of one learner (separate training counters)."""
    return (make_learner(name, n_train, P, noise=noise, seed=seed),
            make_learner(name, n_train, P, noise=noise, seed=seed))


@pytest.mark.parametrize("name,noise", [("mixed", 0.0), ("majority3", 0.3), ("linear", 0.1)])
def test_honest_prover_is_accepted_by_both_protocols(name, noise):
    ver, pro = _pair(name, noise=noise)
    plan = protocols.make_plan(EPS, DELTA, P)
    w, _ = ver.optimal()
    rejected = {"interactive": 0, "non-interactive": 0}
    for s in range(REPS):
        v = protocols.interactive(ver, provers.Honest(pro, w), plan, seed=s)
        rejected["interactive"] += not v.accepted
        rejected["non-interactive"] += not protocols.non_interactive(ver, w, plan,
                                                                     seed=s).accepted
    assert max(rejected.values()) <= _max_errors(REPS), rejected


def _attacks(ver, w, rng):
    far = ver.coords[: max(1, ver.coords.size // 2)]
    return {
        "scaled 1/4": provers.scaled(w, 0.25),
        "zero": provers.scaled(w, 0.0),
        "permuted": provers.permuted(w, rng, among=ver.coords),
        "corrupted": provers.corrupted(w, far, -1.5),
        "favoured": provers.favoured(w, ver.coords[:3], 1.2),
        "noised": provers.noised(w, 0.12, rng),
    }


def test_adversarial_scores_whose_gap_exceeds_epsilon_are_rejected():
    ver, pro = _pair("strong", n_train=120)
    plan = protocols.make_plan(EPS, DELTA, P)
    w, _ = ver.optimal()
    rng = np.random.default_rng(0)
    tested = 0
    for name, a in _attacks(ver, w, rng).items():
        if ver.gap(a) <= EPS:  # within ε: accepting it is correct, not a soundness failure
            continue
        tested += 1
        acc = sum(protocols.interactive(ver, provers.Honest(pro, a), plan, seed=s).accepted
                  for s in range(REPS // 2))
        acc_ni = sum(protocols.non_interactive(ver, a, plan, seed=s).accepted
                     for s in range(REPS // 2))
        assert max(acc, acc_ni) <= _max_errors(REPS // 2), (name, ver.gap(a), acc, acc_ni)
    assert tested >= 4


@pytest.mark.parametrize("level", [1, 2])
def test_targeted_prover_is_rejected(level):
    ver, pro = _pair("strong", n_train=200)
    plan = protocols.make_plan(EPS, DELTA, P)
    w, _ = ver.optimal()
    a = provers.scaled(w, 0.25)
    gap = ver.gap(a)
    assert gap > EPS
    accepted, corrupted = 0, []
    for s in range(REPS):
        t = provers.Targeted(pro, a, claim_mse=ver.b_ge2() + gap, epsilon=EPS, rho=plan.rho,
                             bound=ver.bound, level=level)
        v = protocols.interactive(ver, t, plan, seed=s)
        accepted += v.accepted
        corrupted.append(t.corrupted)
    assert accepted <= _max_errors(REPS)
    assert np.mean(corrupted) > 0  # it did attack


def test_targeted_prover_under_the_spot_check_radar_does_not_reach_its_goal():
    """Capped at m* corrupted models, the corruption moves B̂_≥2 too little (Lemma 1)."""
    ver, pro = _pair("strong", n_train=200)
    plan = protocols.make_plan(EPS, DELTA, P)
    w, _ = ver.optimal()
    a = provers.scaled(w, 0.25)
    accepted = 0
    for s in range(REPS):
        t = provers.Targeted(pro, a, claim_mse=ver.b_ge2() + ver.gap(a), epsilon=EPS,
                             rho=plan.rho, bound=ver.bound, level=2,
                             max_models=int(plan.m_star))
        accepted += protocols.interactive(ver, t, plan, seed=s).accepted
    assert accepted <= _max_errors(REPS)


def test_halved_scores_fool_the_naive_check_but_not_the_protocol():
    eps = 0.1
    ver, pro = _pair("strong", n_train=100)
    q = ver.exact()
    w, _ = ver.optimal()
    half = provers.scaled(w, 0.5)
    assert ver.gap(half) == pytest.approx(q.b1 / 4) and q.b1 / 4 > eps
    plan = protocols.make_plan(eps, DELTA, P)
    # preset t: "the scores explain at least half the output variance"
    t = 0.5 * (q.mean_sq - q.weights[0])
    reps = 6
    naive = sum(protocols.naive(ver, half, plan, t=t, seed=s).accepted for s in range(reps))
    proto = sum(protocols.interactive(ver, provers.Honest(pro, half), plan, seed=s).accepted
                for s in range(reps))
    assert naive == reps  # its MSE is plausible: B_≥2 + B_1/4 < t + ε
    assert proto <= _max_errors(reps)


def test_seed_noise_cancels_in_the_gap():
    """Fresh seeds: B̂_≥2 and mse_hat both move up by Var ξ, so the estimated gap does not."""
    plan = protocols.make_plan(EPS, DELTA, P)
    out = {}
    for noise in (0.0, 0.4):
        ver = make_learner("mixed", 300, P, noise=noise, seed=1)
        w, _ = ver.optimal()
        vs = [protocols.non_interactive(ver, w, plan, seed=s) for s in range(REPS)]
        out[noise] = (np.array([v.gap_hat[0] for v in vs]),
                      np.array([v.mse_hat[0] for v in vs]))
    (g0, m0), (g1, m1) = out[0.0], out[0.4]
    se_g = np.sqrt(g0.var(ddof=1) / REPS + g1.var(ddof=1) / REPS)
    se_m = np.sqrt(m0.var(ddof=1) / REPS + m1.var(ddof=1) / REPS)
    assert abs(g1.mean() - g0.mean()) <= 4 * se_g
    assert abs(m1.mean() - m0.mean() - 0.4 ** 2) <= 4 * se_m


class _Jitter:
    """A learner whose retraining is not bit-reproducible: every output moves by up to 1e-6."""

    def __init__(self, inner, rng):
        self.inner, self.rng = inner, rng
        self.n_train, self.support = inner.n_train, inner.support

    def train(self, masks, seeds, view, *, fresh=False):
        out = self.inner.train(masks, seeds, view, fresh=fresh)
        return out + self.rng.uniform(-1e-6, 1e-6, out.shape)


def test_checkequiv_is_bitwise_by_default_and_takes_a_tolerance():
    ver, pro = _pair("mixed")
    ver_j = _Jitter(ver, np.random.default_rng(0))
    plan = protocols.make_plan(EPS, DELTA, P)
    w, _ = ver.optimal()
    strict = protocols.interactive(ver_j, provers.Honest(pro, w), plan, seed=0)
    assert not strict.accepted and strict.failed_checks == plan.n_checks
    assert "CHECKEQUIV" in strict.reason
    tol = protocols.interactive(ver_j, provers.Honest(pro, w), plan, seed=0,
                                check=protocols.CheckEquiv(atol=1e-5))
    assert tol.failed_checks == 0 and tol.accepted
    # a prover that sends other models' outputs fails even the tolerant check
    class Liar(provers.Honest):
        def respond(self, ch, pairing=None):
            msg = super().respond(ch)
            msg.outputs = msg.outputs + 1e-3
            return msg
    lie = protocols.interactive(ver_j, Liar(pro, w), plan, seed=0,
                                check=protocols.CheckEquiv(atol=1e-5))
    assert not lie.accepted and lie.failed_checks == plan.n_checks


@pytest.mark.parametrize("protocol", ["interactive", "non-interactive"])
def test_verifier_trainings_do_not_depend_on_n(protocol):
    plan = protocols.make_plan(EPS, DELTA, P)
    counts = []
    for n in (100, 100_000):
        ver, pro = _pair("mixed", n_train=n)
        w, _ = ver.optimal()
        if protocol == "interactive":
            v = protocols.interactive(ver, provers.Honest(pro, w), plan, seed=0)
            assert pro.trained == plan.n_challenge == v.prover_trainings
        else:
            v = protocols.non_interactive(ver, w, plan, seed=0)
        assert ver.trained == v.verifier_trainings == plan.verifier_trainings(protocol)
        counts.append(ver.trained)
    assert counts[0] == counts[1]
    assert plan.verifier_trainings("interactive") < plan.verifier_trainings("non-interactive")


def test_plan_scales_as_the_theory_says():
    eps = np.array([0.05, 0.1, 0.2, 0.4])
    plans = [protocols.make_plan(e, DELTA, P) for e in eps]
    slope = lambda y: np.polyfit(np.log(eps), np.log(y), 1)[0]  # noqa: E731
    assert slope([p.n_mse for p in plans]) == pytest.approx(-2, abs=0.02)
    assert slope([p.n_checks for p in plans]) == pytest.approx(-2, abs=0.02)
    assert slope([p.n_challenge for p in plans]) == pytest.approx(-3, abs=0.02)
    assert slope([p.rho for p in plans]) == pytest.approx(0.5, abs=0.02)
    # more targets: a union bound, logarithmic
    assert protocols.make_plan(0.2, DELTA, P, n_targets=10).n_mse > plans[2].n_mse


def test_the_intercept_is_the_verifiers_own():
    """Pinned choice: the verifier refits a_0 on M; a prover's intercept is never used."""
    ver, pro = _pair("mixed")
    w, b = ver.optimal()
    plan = protocols.make_plan(EPS, DELTA, P)
    vs = [protocols.non_interactive(ver, w, plan, seed=s) for s in range(8)]
    icpt = np.array([v.intercept[0] for v in vs])
    assert abs(icpt.mean() - b) <= 4 * icpt.std(ddof=1) / np.sqrt(len(icpt)) + 1e-12


def test_bad_input_is_refused_in_one_line():
    ver, pro = _pair("mixed", n_train=50)
    w, _ = ver.optimal()
    for eps, delta, match in [(0.0, 0.1, "epsilon"), (2.0, 0.1, "epsilon"),
                              (0.2, 0.0, "delta"), (0.2, 1.5, "delta")]:
        with pytest.raises(InputError, match=match):
            protocols.make_plan(eps, delta, P)
    plan = protocols.make_plan(EPS, DELTA, P)
    with pytest.raises(InputError, match="scores have shape"):
        protocols.non_interactive(ver, w[:-1], plan)
    with pytest.raises(InputError, match="NaN"):
        protocols.non_interactive(ver, np.full(50, np.nan), plan)

    class Short(provers.Honest):
        def respond(self, ch, pairing=None):
            msg = super().respond(ch)
            msg.outputs = msg.outputs[:-1]
            return msg
    with pytest.raises(InputError, match="does not match the challenge"):
        protocols.interactive(ver, Short(pro, w), plan)
    for err in (InputError,):
        with pytest.raises(err, match="scores have shape"):
            protocols.interactive(ver, provers.Honest(pro, np.zeros((2, 50))), plan)


def test_the_rule_is_one_sided_at_half_epsilon():
    """Pinned choice (the algorithm box, not the main text's two-sided sketch): abort iff
    mse_hat > B̂_≥2 + ε/2; an MSE far *below* the estimated optimum is accepted."""
    plan = protocols.make_plan(EPS, DELTA, P)
    b = np.array([0.3])
    kw = dict(trainings=0, inferences=0, prover_trainings=0)
    assert protocols.settle("x", b + EPS / 2, b, [0.0], plan, **kw).accepted
    assert not protocols.settle("x", b + EPS / 2 + 1e-9, b, [0.0], plan, **kw).accepted
    assert protocols.settle("x", b - 10 * EPS, b, [0.0], plan, **kw).accepted
    two = protocols.settle("x", np.array([0.0, 1.0]), np.zeros(2), [0, 0], plan, **kw)
    assert not two.accepted and two.target_accepted.tolist() == [True, False]
