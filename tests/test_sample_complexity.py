"""dmdask.analysis.complexity.sample_complexity: nested prefixes from one statistics pass give the same
fits as fitting each prefix on its own, and the held-out error falls toward the OPT floor."""

from __future__ import annotations

import numpy as np
import pytest
from test_evaluate import make_store

import dmdask
from dmdask.analysis.complexity import default_sizes, sample_complexity
from dmdask.analysis.estimators import difference_of_means, ols
from dmdask.errors import InputError
from dmdask.fit.datamodels import fit_datamodels


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    p = tmp_path_factory.mktemp("sc") / "s.zarr"
    make_store(p, N=25, T=5, n_fit=1600, n_held=50, R=3, noise=0.5, block=128)
    return str(p)


@pytest.mark.parametrize("selection", ["cv", "holdout"])
def test_prefixes_equal_separate_fits(store, selection):
    sizes = [200, 700, 1600]
    sc = sample_complexity(store, sizes, estimators=("lasso", "dom_margin", "ols"),
                           selection=selection)
    assert sc.sizes == {"estimator": 3, "n_models": 3}
    for size in sizes:
        dm = fit_datamodels(store, n_models=size, selection=selection)
        assert dm.attrs["n_models"] == size
        ev = dmdask.evaluate(store, dm)
        got = sc.sel(estimator="lasso", n_models=size)
        for m in ("mse", "lds", "spearman", "auc"):
            np.testing.assert_allclose(float(got[m]), ev.attrs[f"{m}_mean"], rtol=2e-4)
        for name, fn in (("dom_margin", difference_of_means), ("ols", ols)):
            ev = dmdask.evaluate(store, fn(dmdask.open_store(store), n_models=size))
            got = sc.sel(estimator=name, n_models=size)
            # the pass accumulates XᵀY as a shifted float32 GEMM (~1e-7 relative, stats.py)
            np.testing.assert_allclose(float(got.mse), ev.attrs["mse_mean"], rtol=1e-6)
            np.testing.assert_allclose(float(got.lds), ev.attrs["lds_mean"], rtol=1e-6)


def test_error_falls_toward_the_noise_floor(store):
    sc = sample_complexity(store, estimators=("lasso", "dom_margin"))
    assert list(sc.n_models.values) == default_sizes(1600)
    opt = float(sc.opt)
    # planted noise 0.5: OPT estimates its variance 0.25 from the replicates
    assert abs(opt - 0.25) < 0.05
    for est in ("lasso", "dom_margin"):
        ex = sc.excess_mse.sel(estimator=est).values
        assert ex[-1] < ex[0] / 3
        # E(f - g)^2 = OPT + E(E[f|S] - g)^2 >= OPT, up to the CI of the mean
        assert np.all(sc.mse_ci_high.sel(estimator=est).values >= opt - 0.02)
    # the explicit datamodel beats difference of means at every size on a planted additive
    # model (DoM pays for the other columns' variance)
    assert np.all(sc.mse.sel(estimator="lasso").values < sc.mse.sel(estimator="dom_margin"))


def test_bad_sizes_and_estimators(store):
    with pytest.raises(InputError, match="sizes must lie"):
        sample_complexity(store, [5, 100])
    with pytest.raises(InputError, match="sizes must lie"):
        sample_complexity(store, [100, 5000])
    with pytest.raises(InputError, match="estimators must be among"):
        sample_complexity(store, [100], estimators=("trak",))


def test_n_models_option_is_checked(store):
    with pytest.raises(InputError, match="n_models=99999"):
        fit_datamodels(store, n_models=99999)
