"""fit_datamodels on small synthetic run stores: which models, α, routing, the Dataset, Zarr."""

import numpy as np
import pytest
import xarray as xr

import dmdask
from dmdask.errors import InputError
from dmdask.fit.datamodels import choose_selection, fit_datamodels, save_datamodels
from dmdask.fit.solve import UnsupportedTargets
from dmdask.store.runstore import create_jobless_store, open_store, write_block

N_TRAIN, N_TARGET, B = 40, 4, 64


def _truth(seed=0):
    rng = np.random.default_rng(seed)
    W = np.zeros((N_TRAIN, N_TARGET))
    W[:5] = rng.standard_normal((5, N_TARGET))
    return W


def _fill(path, W, seed=0, wild_from=None):
    ds = open_store(path)
    X = ds.mask.values.astype(np.float64)
    rng = np.random.default_rng(seed)
    Y = X @ W + 0.5 * rng.standard_normal((X.shape[0], N_TARGET)) + 1.0
    if wild_from is not None:
        Y[wild_from:] += 1000.0  # non-random models: using them would wreck the fit
    Y = Y.astype(np.float32)
    for b in range(-(-X.shape[0] // B)):
        write_block(path, b, Y[b * B:(b + 1) * B])
    return X, Y


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("fit") / "run.zarr")
    create_jobless_store(path, N_TRAIN, N_TARGET, block_size=B, seed=0,
                         target_train_index=np.array([-1, -1, -1, 7]))
    dmdask.add_models(path, "random", n=10 * B, alpha=0.5)
    dmdask.add_models(path, "heldout", n=B, alpha=0.5)
    X, Y = _fill(path, _truth(), wild_from=10 * B)
    return path, X, Y


def test_fit_uses_random_models_only_and_routes(store):
    path, X, Y = store
    dm = fit_datamodels(path, selection="holdout")
    assert dm.attrs["n_models"] == 10 * B and dm.attrs["model_last"] == 10 * B - 1
    assert dm.weight.dims == ("target", "train") and dm.weight.dtype == np.float32
    # targets 0-2 share rows (Gram), target 3 is training example 7 (streaming solver, eq. 9)
    np.testing.assert_array_equal(dm.solver.values, [0, 0, 0, 1])
    assert dm.weight.values[3, 7] == 0
    assert int(dm.n_models[3]) == int((X[:10 * B, 7] == 0).sum())
    np.testing.assert_array_equal(dm.n_models.values[:3], 10 * B)
    # the fit recovers the planted weights (heldout models with +1000 would destroy this)
    W = _truth()
    for t in range(3):
        assert np.corrcoef(dm.weight.values[t], W[:, t])[0, 1] > 0.95
        pred = X[:10 * B] @ dm.weight.values[t] + float(dm.bias[t])
        assert np.mean((pred - Y[:10 * B, t]) ** 2) < 0.5
    assert np.isfinite(dm.val_mse).all() and (dm.lam > 0).all()
    assert dm.attrs["selection"] == "holdout" and dm.attrs["store"].endswith("run.zarr")


def test_gram_refuses_training_example_targets(store):
    path, *_ = store
    with pytest.raises(UnsupportedTargets, match="training-example"):
        fit_datamodels(path, solver="gram", selection="holdout")
    dm = fit_datamodels(open_store(path), solver="gram", targets=[0, 2], selection="cv",
                        folds=3)
    np.testing.assert_array_equal(dm.target.values, [0, 2])
    assert dm.attrs["selection"] == "cv"


def test_roundtrip_zarr(store, tmp_path):
    path, *_ = store
    dm = fit_datamodels(path, targets=[0, 1], selection="holdout")
    out = save_datamodels(dm, tmp_path / "dm.zarr")
    back = xr.open_zarr(out, consolidated=False)
    xr.testing.assert_identical(back.load(), dm)
    with pytest.raises(InputError, match="exists"):
        save_datamodels(dm, out)


def test_alpha_choice(tmp_path):
    path = str(tmp_path / "two.zarr")
    create_jobless_store(path, N_TRAIN, N_TARGET, block_size=B, seed=1)
    dmdask.add_models(path, "random", n=4 * B, alpha=0.5)
    dmdask.add_models(path, "random", n=4 * B, alpha=0.25)
    _fill(path, _truth(1), seed=1)
    with pytest.raises(InputError, match=r"0\.25.*0\.5"):
        fit_datamodels(path)
    dm = fit_datamodels(path, alpha=0.25, selection="holdout")
    assert dm.attrs["n_models"] == 4 * B and dm.attrs["model_first"] == 4 * B
    assert dm.attrs["alpha"] == 0.25
    with pytest.raises(InputError, match="no completed random models"):
        fit_datamodels(path, alpha=0.7)


def test_nan_margins_route_to_streaming_solver(store):
    path, X, Y = store
    ds = open_store(path).load()
    m = ds.margin.values.copy()
    m[5, 1] = np.nan  # a missing margin among the fitting models of target 1
    ds["margin"] = (("model", "target"), m)
    with pytest.raises(UnsupportedTargets, match="NaN"):
        fit_datamodels(ds, solver="gram", targets=[0, 1])
    dm = fit_datamodels(ds, targets=[0, 1], selection="holdout")
    np.testing.assert_array_equal(dm.solver.values, [0, 1])
    assert int(dm.n_models[1]) == 10 * B - 1
    # the pass that found the NaN also served target 0: the same fit as without target 1
    alone = fit_datamodels(ds, targets=[0], selection="holdout")
    np.testing.assert_array_equal(dm.weight.values[0], alone.weight.values[0])
    assert float(dm.bias[0]) == float(alone.bias[0])


def test_auto_selection_threshold():
    import dask

    with dask.config.set({"dmdask.solve.auto-cv-below": 1000}):
        assert choose_selection("auto", 9000, 0.1) == "cv"
        assert choose_selection("auto", 10000, 0.1) == "holdout"
    with pytest.raises(InputError):
        choose_selection("bogus", 100, 0.1)
