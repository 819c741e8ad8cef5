"""The influence–OLS lemma (REFERENCE §2.5) on run stores: min-norm OLS with intercept and
the difference of means agree up to the lemma's constant within their jackknifed sampling
error, the gap shrinks like 1/sqrt(m), and a wrong constant is detected (the check has
power)."""

from __future__ import annotations

import numpy as np
import pytest

import dmdask
from dmdask.analysis.lemma import lemma_check


def _nonlinear_store(path, *, N=8, T=4, m=40000, block=4096, sampling="fixed", seed=3):
    """Outputs with pairwise interactions and noise: far from additive, so the identity is
    not a property of the data, only of the sampling."""
    dmdask.create_jobless_store(path, N, T, block_size=block, alpha=0.5, seed=seed,
                                sampling=sampling)
    dmdask.add_models(path, "random", n=m)
    X = dmdask.open_store(path)["mask"].values.astype(np.float64)
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(T, N))
    B = rng.normal(size=(T, N, N))
    Y = X @ A.T + np.einsum("ni,tij,nj->nt", X, B, X) / 4 + 0.3 * rng.normal(size=(m, T))
    for blk in range(-(-m // block)):
        dmdask.write_block(path, blk, Y[blk * block:(blk + 1) * block].astype(np.float32))


# under the lemma z = D/SE is ~ Student-t with groups-1 = 9 dof: E z^2 = 9/7, sd of one z^2
# ≈ 2.3; 3.0 is several standard errors of a mean over the 32 (target, column) terms above it
Z2_MAX = 3.0


@pytest.mark.parametrize("output", ["margin", "correctness"])
@pytest.mark.parametrize("sampling", ["fixed", "bernoulli"])
def test_lemma_holds_within_sampling_error(tmp_path, output, sampling):
    p = tmp_path / "s.zarr"
    _nonlinear_store(p, sampling=sampling)
    # a wrong constant: 1 for fixed-size subsets (lemma: 7/8), 7/8 for Bernoulli (lemma: 1)
    control = 1.0 if sampling == "fixed" else 7 / 8
    lc = lemma_check(p, [2500, 10000, 40000], output=output, control_scale=control)
    assert lc.attrs["lemma_scale"] == (7 / 8 if sampling == "fixed" else 1.0)
    rel = lc.rel_diff.values
    # sampling error ~ 1/sqrt(m): 16x the models, about 1/4 the gap
    assert rel[2] < rel[0] / 2.5
    assert np.all(lc.mean_z2.values < Z2_MAX)
    assert np.all(lc.n_terms.values == 32)
    # the wrong constant leaves a gap that does not shrink and z^2 that grows with m
    crel = lc.control_rel_diff.values
    assert crel[2] > 0.5 * crel[0] and crel[2] > 0.08
    cz = lc.control_mean_z2.values
    assert cz[2] > 10 * Z2_MAX and cz[2] > 4 * cz[0]


@pytest.mark.parametrize("output", ["margin", "correctness"])
def test_lemma_on_a_convex_job(tmp_path_factory, output):
    """Real training: a ridge classifier on 40 digits (closed form, convex), 20,000 models."""
    p = tmp_path_factory.getbasetemp() / "ridge_lemma.zarr"
    if not p.exists():
        dmdask.create_store(p, "testjobs:RidgeDigits", 20000, 0.5, params={"n_train": 40},
                            block_size=2500)
        dmdask.train(p, workers=1, progress=False)
    lc = lemma_check(p, [1250, 5000, 20000], output=output, control_scale=0.9)
    assert lc.attrs["lemma_scale"] == 39 / 40
    assert np.all(lc.n_targets_used.values >= 30)  # targets whose output varies
    rel = lc.rel_diff.values
    assert rel[2] < rel[0] / 2.5  # ~1/sqrt(m): a quarter for 16x the models
    assert np.all(lc.mean_z2.values < Z2_MAX)
    # a 10% wrong constant is rejected by the same rule that accepts the lemma, and its
    # evidence grows with the number of models
    cz = lc.control_mean_z2.values
    assert cz[2] > Z2_MAX and cz[2] > 2 * cz[0]
