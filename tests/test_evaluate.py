"""dmdask.evaluate and dmdask.analysis.scores on synthetic run stores with a planted additive model:
the evaluation equals an independent NumPy/scipy/sklearn computation on the same held-out
runs, calibration is the least-squares affine map, OPT recovers the planted noise, every
score source loads to the same matrix, and NaN margins / eq. 9 targets are handled."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
import zarr
from scipy import stats
from sklearn.metrics import roc_auc_score

import dmdask
from dmdask.analysis import estimators
from dmdask.analysis.evaluate import evaluate, evaluation_runs
from dmdask.analysis.scores import load_scores, make_scores
from dmdask.errors import InputError
from dmdask.store.runstore import read_meta


def make_store(path, *, N=20, T=5, n_fit=400, n_held=40, R=3, noise=0.3, alpha=0.5, block=64,
               seed=0, tti=None, W=None, b=None, sampling="fixed"):
    """A jobless store: ``n_fit`` random, ``n_held`` held-out models and R − 1 replicates of
    each held-out model; margin = mask @ Wᵀ + b + noise·N(0, 1). Returns (W, b)."""
    rng = np.random.default_rng(seed + 1000)
    dmdask.create_jobless_store(path, N, T, block_size=block, alpha=alpha, seed=seed,
                                target_train_index=tti, sampling=sampling)
    dmdask.add_models(path, "random", n=n_fit)
    h = dmdask.add_models(path, "heldout", n=n_held)
    if R > 1:
        dmdask.add_models(path, "replicate", replicate_of=np.repeat(h, R - 1))
    W = rng.normal(size=(T, N)) if W is None else W
    b = rng.normal(size=T) + 1 if b is None else b
    X = dmdask.open_store(path)["mask"].values.astype(np.float64)
    Y = (X @ W.T + b + noise * rng.normal(size=(X.shape[0], T))).astype(np.float32)
    n = read_meta(path)["n_models"]
    for blk in range(-(-n // block)):
        dmdask.write_block(path, blk, Y[blk * block: min((blk + 1) * block, n)])
    return W, b


def set_margins_nan(path, rows, target):
    """Blank some completed margins (as an import with missing outputs would leave them)."""
    g = zarr.open_group(str(path), mode="r+")
    arr = g["margin"]
    for r in rows:
        arr[int(r), int(target)] = np.nan


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    p = tmp_path_factory.mktemp("ev") / "s.zarr"
    W, b = make_store(p)
    return str(p), W, b


def _held(ds):
    subsets, runs, group = evaluation_runs(ds)
    X = ds["mask"].values[subsets].astype(np.float64)
    Y = ds["margin"].values[runs].astype(np.float64)
    return X, Y, group


# ------------------------------------------------------------------ evaluate
def test_evaluation_runs_groups_replicates(store):
    ds = dmdask.open_store(store[0])
    subsets, runs, group = evaluation_runs(ds)
    assert subsets.size == 40 and runs.size == 120
    kinds = ds["kind"].values
    assert set(kinds[subsets]) == {"heldout"}
    np.testing.assert_array_equal(np.bincount(group), 3)
    mask = ds["mask"].values
    np.testing.assert_array_equal(mask[runs], mask[subsets][group])  # same mask per group


def test_evaluate_matches_independent_computation(store):
    path, W, b = store
    ds = dmdask.open_store(path)
    sc = estimators.compute(ds, "ols")
    ev = evaluate(ds, sc)
    assert ev.attrs["calibrated"] == 0 and ev.attrs["n_heldout_subsets"] == 40
    X, Y, group = _held(ds)
    tau, bias = sc.values, sc["bias"].values
    z = X @ tau.T
    g = (z + bias)[group]
    for t in range(W.shape[0]):
        assert ev["mse"][t] == pytest.approx(np.mean((g[:, t] - Y[:, t]) ** 2), rel=1e-9)
        assert ev["pearson"][t] == pytest.approx(stats.pearsonr(g[:, t], Y[:, t])[0], abs=1e-9)
        assert ev["spearman"][t] == pytest.approx(stats.spearmanr(g[:, t], Y[:, t])[0],
                                                  abs=1e-9)
        lab = Y[:, t] > 0
        if lab.all() or not lab.any():
            assert np.isnan(ev["auc"][t])
        else:
            assert ev["auc"][t] == pytest.approx(roc_auc_score(lab, g[:, t]), abs=1e-12)
        fbar = np.array([Y[group == k, t].mean() for k in range(X.shape[0])])
        assert ev["lds"][t] == pytest.approx(stats.spearmanr(z[:, t], fbar)[0], abs=1e-9)
        s2 = np.mean([Y[group == k, t].var(ddof=1) for k in range(X.shape[0])])
        assert ev["opt"][t] == pytest.approx(s2, rel=1e-9)
    assert ev.attrs["lds_mean"] == pytest.approx(float(ev["lds"].mean()))
    assert ev.attrs["lds_ci_low"] < ev.attrs["lds_mean"] < ev.attrs["lds_ci_high"]


def test_opt_recovers_planted_noise_and_excess(store):
    path, W, b = store
    ds = dmdask.open_store(path)
    ev = evaluate(ds, make_scores(W, bias=b, ds=ds, estimator="truth"))
    s2 = 0.3**2
    se = s2 * np.sqrt(2 / (40 * 2))  # 40 subsets × (R − 1) = 2 degrees of freedom each
    assert abs(ev.attrs["opt_mean"] - s2) < 4 * se / np.sqrt(W.shape[0])
    assert np.all(np.abs(ev["opt"] - s2) < 4 * se)
    # the true model's excess error is zero up to sampling error
    assert abs(ev.attrs["excess_mse_mean"]) < 4 * se / np.sqrt(W.shape[0])
    assert ev.attrs["lds_mean"] > 0.95


def test_uncalibrated_scores_get_least_squares_affine_fit(store):
    path, W, b = store
    ds = dmdask.open_store(path)
    raw = 5.0 * W + 2.0  # scale-free, no bias
    ev = evaluate(ds, raw)
    assert ev.attrs["calibrated"] == 1
    rows = np.flatnonzero(ds["kind"].values == "random")
    Xr = ds["mask"].values[rows].astype(np.float64)
    Yr = ds["margin"].values[rows].astype(np.float64)
    zr = Xr @ raw.T
    for t in range(W.shape[0]):
        slope, icpt = np.polyfit(zr[:, t], Yr[:, t], 1)
        assert ev["calib_slope"][t] == pytest.approx(slope, rel=1e-8)
        assert ev["calib_intercept"][t] == pytest.approx(icpt, rel=1e-8, abs=1e-8)
    assert np.allclose(ev["calib_slope"], 0.2, rtol=0.05)
    # rank metrics need no calibration: LDS equals that of the calibrated truth
    ev_true = evaluate(ds, make_scores(W, bias=b, ds=ds))
    np.testing.assert_allclose(ev["lds"], ev_true["lds"], atol=1e-12)
    # without calibration the raw predictions are off by the scale: a much larger MSE
    ev_none = evaluate(ds, raw, calibrate=False)
    assert ev_none.attrs["calibrated"] == 0
    assert ev_none.attrs["mse_mean"] > 10 * ev.attrs["mse_mean"]
    assert ev.attrs["mse_mean"] < 2 * ev_true.attrs["mse_mean"]


def test_chunking_does_not_change_evaluation(tmp_path):
    W = np.random.default_rng(0).normal(size=(3, 12))
    out = []
    for block in (16, 500):
        p = tmp_path / f"b{block}.zarr"
        make_store(p, N=12, T=3, n_fit=150, n_held=30, R=2, block=block, W=W, b=np.zeros(3))
        ds = dmdask.open_store(p)
        out.append(evaluate(ds, 3 * W))
    for k in ("mse", "lds", "pearson", "opt", "calib_slope"):
        np.testing.assert_allclose(out[0][k], out[1][k], rtol=1e-10)


def test_nan_margins_drop_runs(tmp_path):
    p = tmp_path / "nan.zarr"
    W, b = make_store(p, N=10, T=3, n_fit=120, n_held=30, R=2)
    ds = dmdask.open_store(p)
    subsets, runs, group = evaluation_runs(ds)
    set_margins_nan(p, runs[:10], 1)
    set_margins_nan(p, np.flatnonzero(ds["kind"].values == "random")[:7], 1)
    ds = dmdask.open_store(p)
    ev = evaluate(ds, W)  # calibrated: uses the random models, NaN-aware
    assert int(ev["n_runs"][1]) == runs.size - 10 and int(ev["n_runs"][0]) == runs.size
    assert int(ev["calib_n_models"][1]) == 120 - 7 and int(ev["calib_n_models"][0]) == 120
    assert np.isfinite(ev["mse"]).all() and np.isfinite(ev["lds"]).all()
    X, Y, _ = _held(ds)
    ok = ~np.isnan(Y[:, 1])
    g = (X @ W.T * ev["calib_slope"].values + ev["calib_intercept"].values)[group]
    assert ev["mse"][1] == pytest.approx(np.mean((g[ok, 1] - Y[ok, 1]) ** 2), rel=1e-9)


def test_eq9_targets_exclude_runs_containing_them(tmp_path):
    p = tmp_path / "eq9.zarr"
    tti = np.array([3, -1, 7])
    W, b = make_store(p, N=10, T=3, n_fit=200, n_held=40, R=2, tti=tti)
    ds = dmdask.open_store(p)
    subsets, runs, group = evaluation_runs(ds)
    mask = ds["mask"].values
    sc = estimators.compute(ds, "dom_margin")
    assert np.isnan(sc.values[0, 3]) and np.isnan(sc.values[2, 7])  # not estimable
    ev = evaluate(ds, sc)
    assert int(ev["n_runs"][0]) == int((~mask[runs, 3]).sum())
    assert int(ev["n_runs"][2]) == int((~mask[runs, 7]).sum())
    assert int(ev["n_runs"][1]) == runs.size
    ev_all = evaluate(ds, sc.fillna(0.0), eq9=False)
    assert int(ev_all["n_runs"][0]) == runs.size
    bad = sc.copy()
    bad[1, 2] = np.nan
    with pytest.raises(InputError, match="NaN"):
        evaluate(ds, bad)


def test_needs_heldout_models(tmp_path):
    p = tmp_path / "noheld.zarr"
    dmdask.create_jobless_store(p, 6, 2, alpha=0.5)
    dmdask.add_models(p, "random", n=20)
    dmdask.write_block(p, 0, np.zeros((20, 2), np.float32))
    with pytest.raises(InputError, match="held-out"):
        evaluate(dmdask.open_store(p), np.zeros((2, 6)))


# ------------------------------------------------------------------ score sources
def test_score_sources_load_identically(store, tmp_path):
    path, W, b = store
    ds = dmdask.open_store(path)
    T, N = W.shape
    ref = load_scores(W, ds=ds)
    assert ref.dims == ("target", "train") and ref.shape == (T, N) and "bias" not in ref.coords
    np.save(tmp_path / "tt.npy", W)
    np.save(tmp_path / "tr.npy", W.T)
    srcs = [tmp_path / "tt.npy", tmp_path / "tr.npy", W.T, xr.DataArray(W.T, dims=("train", "target"))]
    # TRAK: save_dir/scores/<exp>.mmap, an .npy-format memmap [n_train, n_targets], float32
    trak = tmp_path / "trak"
    (trak / "scores").mkdir(parents=True)
    mm = np.lib.format.open_memmap(trak / "scores" / "quick.mmap", mode="w+", dtype=np.float32,
                                   shape=(N, T))
    mm[:] = W.T
    mm.flush()
    (trak / "experiments.json").write_text(json.dumps(
        {"quick": {"num_targets": T, "scores_path": "x", "scores_finalized": 1}}))
    # a header-less raw memmap, float16
    raw = tmp_path / "raw.mmap"
    W.T.astype(np.float16).tofile(raw)
    z = zarr.create_array(str(tmp_path / "a.zarr"), shape=(T, N), dtype="float64")
    z[...] = W
    srcs += [str(tmp_path / "a.zarr")]
    for s in srcs:
        np.testing.assert_allclose(load_scores(s, ds=ds).values, W, rtol=1e-12)
    t = load_scores(trak, ds=ds, exp_name="quick")
    assert t.attrs["estimator"] == "trak" and t.attrs["layout"] == "train_target"
    np.testing.assert_allclose(t.values, W, rtol=1e-6)
    np.testing.assert_allclose(load_scores(raw, ds=ds).values, W, rtol=2e-3, atol=2e-3)
    with pytest.raises(InputError, match="exp_name"):
        load_scores(trak, ds=ds)


def test_datamodels_dataset_and_zarr(store, tmp_path):
    path, W, b = store
    ds = dmdask.open_store(path)
    dm = xr.Dataset({"weight": (("target", "train"), W.astype(np.float32)),
                     "bias": ("target", b)})
    s = load_scores(dm, ds=ds)
    np.testing.assert_allclose(s.values, W.astype(np.float32))
    np.testing.assert_allclose(s["bias"].values, b)
    assert s.attrs["estimator"] == "datamodels"
    dm.to_zarr(tmp_path / "dm.zarr", mode="w", consolidated=False)
    s2 = load_scores(str(tmp_path / "dm.zarr"), ds=ds)
    np.testing.assert_allclose(s2["bias"].values, b)
    ev = evaluate(ds, str(tmp_path / "dm.zarr"))
    assert ev.attrs["calibrated"] == 0  # it has a bias
    assert ev.attrs["mse_mean"] == pytest.approx(
        evaluate(ds, make_scores(W.astype(np.float32), bias=b, ds=ds)).attrs["mse_mean"])


def test_fit_datamodels_output_evaluates(tmp_path):
    """The datamodels Dataset of dmdask.fit is read with its bias and not recalibrated; on a
    planted additive store its held-out excess error is near 0 and its LDS near 1."""
    p = tmp_path / "fit.zarr"
    make_store(p, N=10, T=2, n_fit=300, n_held=30, R=2, noise=0.5)
    ds = dmdask.open_store(p)
    dm = dmdask.fit_datamodels(ds, n_lambdas=10)
    ev = evaluate(ds, dm)
    assert ev.attrs["estimator"] == "datamodels" and ev.attrs["calibrated"] == 0
    assert ev.attrs["lds_mean"] > 0.9
    assert abs(ev.attrs["excess_mse_mean"]) < 0.1 < ev.attrs["opt_mean"]
    np.testing.assert_allclose(ev["calib_intercept"], dm["bias"], rtol=1e-6)


def test_shape_errors_and_square_ambiguity(tmp_path):
    p = tmp_path / "sq.zarr"
    W, b = make_store(p, N=6, T=6, n_fit=60, n_held=20, R=1)
    ds = dmdask.open_store(p)
    with pytest.raises(InputError, match="ambiguous"):
        load_scores(W, ds=ds)
    np.testing.assert_allclose(load_scores(W, ds=ds, layout="train_target").values, W.T)
    np.testing.assert_allclose(load_scores(W, ds=ds, layout="target_train").values, W)
    with pytest.raises(InputError, match="fit neither"):
        load_scores(np.zeros((5, 6)), ds=ds)
    with pytest.raises(InputError, match="expects shape"):
        load_scores(np.zeros((6, 5)), ds=ds, layout="train_target")
    # TRAK's layout is documented: a square TRAK memmap is read as [n_train, n_targets]
    mm = np.lib.format.open_memmap(tmp_path / "sq.mmap", mode="w+", dtype=np.float32,
                                   shape=(6, 6))
    mm[:] = W
    mm.flush()
    np.testing.assert_allclose(load_scores(tmp_path / "sq.mmap", ds=ds).values, W.T, rtol=1e-6)
    with pytest.raises(InputError, match="no such"):
        load_scores(tmp_path / "missing.npy", ds=ds)
    ev = evaluate(ds, W, layout="target_train")
    assert np.isnan(ev["opt"]).all() and ev.attrs["opt_n_skipped"] == 6  # no replicates


# ------------------------------------------------------------------ sign and output (issue 15)
def test_negated_estimator_scores_negative(store):
    """Calibration never flips a sign: a negated estimator (no bias, so calibrated) scores
    negative on every correlation and below ½ AUC, exactly as scipy/sklearn on the raw
    predictions, and its calibration slope is clamped at 0."""
    path, W, b = store
    ds = dmdask.open_store(path)
    ev = evaluate(ds, -W)
    assert ev.attrs["calibrated"] == 1
    np.testing.assert_array_equal(ev["calib_slope"].values, 0.0)
    X, Y, group = _held(ds)
    z = (X @ -W.T)[group]
    for t in range(W.shape[0]):
        assert ev["spearman"][t] == pytest.approx(stats.spearmanr(z[:, t], Y[:, t])[0], abs=1e-9)
        assert ev["pearson"][t] == pytest.approx(stats.pearsonr(z[:, t], Y[:, t])[0], abs=1e-9)
        lab = Y[:, t] > 0
        if lab.any() and not lab.all():
            assert ev["auc"][t] == pytest.approx(roc_auc_score(lab, z[:, t]), abs=1e-12)
    for m in ("spearman", "pearson", "lds"):
        assert ev.attrs[f"{m}_mean"] < 0, m
    assert ev.attrs["auc_mean"] < 0.5
    # the right sign scores the opposite, and a slope 0 predictor explains nothing
    ev_pos = evaluate(ds, W)
    np.testing.assert_allclose(ev["spearman"], -ev_pos["spearman"], atol=1e-12)
    assert ev.attrs["r2_mean"] <= 0.0 < ev_pos.attrs["r2_mean"]


def test_correctness_scores_against_correctness(store):
    """``output="correctness"`` scores against 1[margin > 0] of every run; a correctness
    estimator with a bias is scored so by default, without calibration."""
    path, W, b = store
    ds = dmdask.open_store(path)
    sc = estimators.compute(ds, "dom_correctness")
    ev = evaluate(ds, sc)
    assert ev.attrs["scored_against"] == "correctness" and ev.attrs["calibrated"] == 0
    X, Y, group = _held(ds)
    C = (Y > 0).astype(np.float64)
    z = X @ sc.values.T
    g = (z + sc["bias"].values)[group]
    for t in range(W.shape[0]):
        assert ev["mse"][t] == pytest.approx(np.mean((g[:, t] - C[:, t]) ** 2), rel=1e-9)
        fbar = np.array([C[group == k, t].mean() for k in range(X.shape[0])])
        if np.ptp(fbar) > 0 and np.ptp(z[:, t]) > 0:
            assert ev["lds"][t] == pytest.approx(stats.spearmanr(z[:, t], fbar)[0], abs=1e-9)
        else:
            assert np.isnan(ev["lds"][t])
    ev_m = evaluate(ds, sc, output="margin")
    assert ev_m.attrs["scored_against"] == "margin" and ev_m.attrs["calibrated"] == 1
    with pytest.raises(InputError, match="output"):
        evaluate(ds, sc, output="loss")


def test_calibration_on_the_first_models(store):
    """``calibration_models=n`` fits the affine map on the first n fitting models only."""
    path, W, b = store
    ds = dmdask.open_store(path)
    raw = 3.0 * W
    ev = evaluate(ds, raw, calibration_models=50)
    rows = np.flatnonzero(ds["kind"].values == "random")[:50]
    zr = ds["mask"].values[rows].astype(np.float64) @ raw.T
    Yr = ds["margin"].values[rows].astype(np.float64)
    np.testing.assert_array_equal(ev["calib_n_models"].values, 50)
    for t in range(W.shape[0]):
        slope, icpt = np.polyfit(zr[:, t], Yr[:, t], 1)
        assert ev["calib_slope"][t] == pytest.approx(slope, rel=1e-8)
        assert ev["calib_intercept"][t] == pytest.approx(icpt, rel=1e-8, abs=1e-8)
