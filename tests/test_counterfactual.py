"""Counterfactuals (dmdask.counterfactual): removal orders and predicted effects against brute
force, the isotonic zero crossing against analytic crossings, and the trained machinery against
learners whose answer is known exactly (an additive learner, the deterministic convex job)."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import dmdask
from dmdask.counterfactual import Counterfactual, counterfactuals, measure, select, support
from dmdask.counterfactual.crossing import decreasing_fit, zero_crossing
from dmdask.counterfactual.removal import predicted_effect, removal_order, top_k
from dmdask.counterfactual.summary import correlation
from dmdask.counterfactual.support import heuristic_support
from dmdask.errors import InputError
from dmdask.store.runstore import read_meta

ADDITIVE = "testjobs:Additive"
RIDGE = "testjobs:RidgeDigits"


# ---------------------------------------------------------------- pure parts


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 40), st.integers(0, 10_000))
def test_predicted_effect_of_disjoint_sets_adds_up(n, seed):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=n)
    perm = rng.permutation(n)
    cut = rng.integers(0, n + 1, size=2)
    r1, r2 = perm[: cut.min()], perm[cut.min(): cut.max()]
    both = np.concatenate([r1, r2])
    assert predicted_effect(w, both) == pytest.approx(
        predicted_effect(w, r1) + predicted_effect(w, r2), abs=1e-12)
    assert predicted_effect(w, both, alpha=0.3) == pytest.approx(
        0.3 * predicted_effect(w, both), abs=1e-12)


@pytest.mark.parametrize("n", [5, 9, 12])
def test_top_k_is_the_brute_force_argmax(n):
    rng = np.random.default_rng(n)
    w = rng.normal(size=n)
    for k in range(1, n + 1):
        best = max(itertools.combinations(range(n), k), key=lambda r: w[list(r)].sum())
        assert set(top_k(w, k)) == set(best)
        assert w[top_k(w, k)].sum() == pytest.approx(w[list(best)].sum())


def test_removal_orders_are_nested_and_of_the_right_examples():
    rng = np.random.default_rng(0)
    w = rng.normal(size=50)
    w[:10] = 0.0
    lab = np.arange(50) % 5
    kw = dict(target=3, target_label=2, train_label=lab, seed=7)
    assert set(removal_order("zero", w, **kw)) == set(range(10))
    assert set(removal_order("random_class", w, **kw)) == set(np.flatnonzero(lab == 2))
    r = removal_order("random", w, **kw)
    assert sorted(r) == list(range(50))
    np.testing.assert_array_equal(r, removal_order("random", w, **kw))  # seeded
    np.testing.assert_array_equal(removal_order("bottom", w, **kw), top_k(-w, 50))


def test_zero_crossing_of_a_noiseless_decreasing_line_is_analytic():
    k = np.array([0, 10, 20, 40, 80, 160])
    for c, slope in [(3.0, 0.05), (1.0, 0.037), (5.0, 0.031)]:
        m = c - slope * k  # strictly decreasing: the fit is the curve itself
        want = np.ceil(c / slope)
        got = zero_crossing(k, m)
        assert got == (want if want <= 160 else np.inf)
    # piecewise linear: the crossing lies on the segment where the sign changes
    m = np.array([2.0, 1.5, 0.5, -0.5, -1.0, -3.0])
    assert zero_crossing(k, m) == np.ceil(20 + 20 * 0.5 / 1.0)


def test_zero_crossing_edges():
    k = [0, 10, 20]
    assert zero_crossing(k, [-0.1, -1, -2]) == 0.0  # control <= 0: support 0
    assert zero_crossing(k, [0.0, -1, -2]) == 0.0
    assert zero_crossing(k, [3, 2, 1]) == np.inf  # never crosses: > k_max
    assert zero_crossing(k, [3, np.nan, -1]) == np.ceil(20 * 3 / 4)  # NaN points dropped
    with pytest.raises(InputError):
        zero_crossing([0, 10, 10], [1, 0, -1])


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.0, 2.0))
def test_zero_crossing_of_noisy_curves_is_monotone_under_shifts(seed, shift):
    rng = np.random.default_rng(seed)
    k = np.array([0, 10, 20, 40, 80, 160, 320], float)
    m = 2.0 - 0.02 * k + rng.normal(0, 0.7, k.size)
    fit = decreasing_fit(k, m)
    assert np.all(np.diff(fit) <= 1e-12)
    # raising the whole curve never moves the crossing earlier
    assert zero_crossing(k, m + shift) >= zero_crossing(k, m)


def test_heuristic_support_is_the_brute_force_minimum():
    rng = np.random.default_rng(3)
    for _ in range(20):
        w = rng.normal(size=10)
        control = rng.uniform(0.1, 2.0)
        best = min((k for k in range(11) for r in itertools.combinations(range(10), k)
                    if w[list(r)].sum() >= control), default=np.inf)
        assert heuristic_support(w, control) == best
    assert heuristic_support(w, -1.0) == 0.0


def test_correlation_intervals_match_scipy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    y = x + rng.normal(size=40)
    r = correlation(x, y, method="pearson")
    ref = stats.pearsonr(x, y)
    ci = ref.confidence_interval(0.95)
    assert r["r"] == pytest.approx(ref.statistic)
    assert (r["low"], r["high"]) == pytest.approx((ci.low, ci.high))
    assert correlation(x, np.ones(40))["r"] != correlation(x, np.ones(40))["r"]  # NaN


# ---------------------------------------------------------------- trained machinery


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=":0", silence_logs=40) as c, Client(c) as cl:
        yield cl


def _planted(path, job):
    from testjobs import Additive

    j = Additive(**job)
    dm = xr.Dataset({"weight": (("target", "train"), j.weights()),
                     "bias": ("target", j.bias())},
                    coords={"target": np.arange(j.W.shape[0]), "train": np.arange(j.W.shape[1])})
    return dm


def _additive_store(tmp_path, name="a.zarr", **params):
    p = str(tmp_path / name)
    dmdask.create_store(p, job=ADDITIVE, params=params, n_models=64, alpha=0.5, block_size=32)
    return p, _planted(p, params)


def test_additive_learner_actual_effects_equal_predictions_and_zero_weights_do_nothing(
        tmp_path, client):
    p, dm = _additive_store(tmp_path, noise=0.0)
    cf = counterfactuals(p, dm, targets=6, k=(5, 10, 25), runs=2, control_runs=2,
                         client=client, progress=False)
    assert cf.sizes == {"target": 6, "heuristic": 5, "k": 3, "rank": 25, "run": 2,
                        "control_run": 2}
    zero = cf.sel(heuristic="zero", k=[5, 10])
    np.testing.assert_array_equal(zero.predicted.values, 0.0)
    np.testing.assert_array_equal(zero.actual.values, 0.0)  # exactly: the same sums
    ok = np.isfinite(cf.predicted.values)
    np.testing.assert_allclose(cf.actual.values[ok], cf.predicted.values[ok], atol=2e-5)
    assert cf.attrs["spearman_overall"] > 0.999
    # the removal sets are the heuristics' orders, nested
    order = cf.removal_order.sel(heuristic="top").values
    for i in range(6):
        np.testing.assert_array_equal(order[i], top_k(dm.weight.values[i], 25))
    # undefined points (20 class members, 20 zero weights: fewer than k) are NaN, untrained
    rc = cf.sel(heuristic=["random_class", "zero"], k=25)
    assert np.isnan(rc.actual.values).all() and (rc.n_runs.values == 0).all()
    assert np.isnan(rc.predicted.values).all()


def test_alpha_control_equals_alpha_times_the_sum_within_its_error(tmp_path, client):
    p, dm = _additive_store(tmp_path, noise=0.2)
    dmdask.add_models(p, "random", n=200)
    cf = counterfactuals(p, dm, targets=6, k=(10, 20), heuristics=["top", "bottom"], runs=6,
                         alpha_control=True, client=client, progress=False)
    z = ((cf.actual_alpha - cf.predicted_alpha) / cf.actual_alpha_se).values.ravel()
    np.testing.assert_allclose(cf.predicted_alpha, 0.5 * cf.predicted)
    assert np.isfinite(z).all()
    # standardised errors of a correct prediction: about N(0, 1) (loose, any CPU)
    assert np.abs(z).max() < 5.0 and np.mean(z**2) < 3.0


def test_convex_job_actual_effects_equal_direct_retraining_exactly(tmp_path, client):
    from jobs.digits import DigitsLogistic

    p = str(tmp_path / "l.zarr")
    dmdask.create_store(p, job="jobs.digits:DigitsLogistic", n_models=8, alpha=0.5,
                        block_size=8)
    rng = np.random.default_rng(0)
    n_train, n_target = 1297, 500
    tg = np.array([3, 200])
    dm = xr.Dataset({"weight": (("target", "train"), rng.normal(size=(2, n_train))),
                     "bias": ("target", np.zeros(2))},
                    coords={"target": tg, "train": np.arange(n_train)})
    cf = counterfactuals(p, dm, indices=tg, k=(50,), heuristics=["top", "random"], runs=1,
                         control_runs=1, client=client, progress=False)
    job = DigitsLogistic()
    full = job.train_block(np.ones((1, n_train), bool), np.zeros(1, np.uint64))[0]
    for i, t in enumerate(tg):
        for h in ("top", "random"):
            r = cf.removal_order.sel(heuristic=h).values[i, :50]
            mask = np.ones((1, n_train), bool)
            mask[0, r] = False
            direct = job.train_block(mask, np.zeros(1, np.uint64))[0]
            assert cf.actual.sel(heuristic=h).values[i, 0] == (
                np.float64(full[t]) - np.float64(direct[t]))
    assert n_target == dmdask.open_store(p).sizes["target"]


def test_data_support_on_an_additive_learner_is_certified_and_bounds_the_truth(
        tmp_path, client):
    p, dm = _additive_store(tmp_path, noise=0.0, n_train=80, zeros=10)
    s = support(p, dm, targets=6, k=(2, 4, 8, 16, 32), runs=1, control_runs=1, client=client,
                progress=False)
    W, b = dm.weight.values, dm.bias.values
    for i, t in enumerate(s.target.values):
        control = b[t] + W[t].sum()
        # exact support of an additive learner: removing the top-k is optimal (brute force
        # over k of the exact margins)
        truth = heuristic_support(W[t], control)
        est = s.support.values[i, 0]
        if control <= 0:
            assert est == 0
        elif truth > 32:
            assert est == np.inf or est >= truth
        else:
            # convex curve: linear interpolation crosses no earlier than the curve
            assert s.k_hat.values[i, 0] >= truth
            assert s.certified.values[i, 0] == 1.0
        assert s.heuristic_support.values[i] == truth


def test_selection_predictions_are_exact_on_an_additive_learner(tmp_path, client):
    p, dm = _additive_store(tmp_path, noise=0.0, n_target=8)
    ds = select(p, dm, indices=np.arange(8), k=(10, 30), runs=2, client=client,
                progress=False)
    np.testing.assert_allclose(ds.actual.values, ds.predicted.values, atol=2e-5)
    assert set(ds.method.values) == {"datamodels", "random", "random_balanced"}
    # the datamodels' choice maximises the selection half's mean weight sum; on an additive
    # learner with shared structure it is at least as good as random on average
    sel = ds.selection_targets.values
    w = dm.weight.values[sel].mean(0)
    for j, kk in enumerate(ds.k.values):
        chosen = ds.selected.sel({"method": "datamodels"}).values[j, 0, :kk]
        assert w[chosen].sum() == pytest.approx(np.sort(w)[::-1][:kk].sum())


def test_measure_remove_keep_only_and_relabel(tmp_path, client):
    p, dm = _additive_store(tmp_path, noise=0.0)
    cfs = [Counterfactual(target=0, remove=[1, 2, 3], name="r"),
           Counterfactual(target=1, keep_only=list(range(30)), name="s"),
           Counterfactual(target=2, remove=[])]
    out = measure(p, dm, cfs, runs=1, control_runs=1, client=client, progress=False)
    W = dm.weight.values
    np.testing.assert_allclose(out.predicted.values,
                               [W[0, [1, 2, 3]].sum(), W[1, 30:].sum(), 0.0])
    np.testing.assert_allclose(out.actual.values, out.predicted.values, atol=2e-5)
    assert list(out.kind.values) == ["counterfactual", "selected", "counterfactual"]
    n = read_meta(p)["n_models"]
    for bad, msg in [(Counterfactual(target=0, remove=[5, 5]), "repeated"),
                     (Counterfactual(target=0, remove=[60]), "outside"),
                     (Counterfactual(target=0, remove=[-1]), "outside"),
                     (Counterfactual(target=99, remove=[1]), "do not exist"),
                     (Counterfactual(target=0, relabel={1: 2}), "relabelled")]:
        with pytest.raises(InputError, match=msg):
            measure(p, dm, [bad], runs=1, client=client, progress=False)
    assert read_meta(p)["n_models"] == n  # nothing added


def test_mislabel_search_flips_a_ridge_classifier(tmp_path, client):
    p = str(tmp_path / "r.zarr")
    dmdask.create_store(p, job=RIDGE, params={"n_train": 120, "n_target": 12}, n_models=400,
                        alpha=0.5, block_size=16)
    dmdask.train(p, client, progress=False)
    from dmdask.fit.datamodels import fit_datamodels

    dm = fit_datamodels(p)
    with pytest.raises(InputError, match="train_logits"):
        support(p, dm, targets=3, mode="relabel", runs=1, client=client, progress=False)
    lab = dmdask.open_store(p).target_label.values
    tg = np.flatnonzero(dm.weight.values.any(axis=1))[:3]
    s = support(p, dm, indices=tg, mode="relabel", flip_class=(lab[tg] + 1) % 10,
                k=(5, 10, 20, 40), runs=1, control_runs=1, client=client, progress=False)
    np.testing.assert_array_equal(s.flip_class.values, (lab[tg] + 1) % 10)
    # relabelling examples towards another class can only lower a ridge margin here:
    # the fitted curve is non-increasing and a finite estimate is certified
    for i in range(tg.size):
        f = s.fitted.values[i, 0]
        assert np.all(np.diff(f[np.isfinite(f)]) <= 1e-12)
        if np.isfinite(s.support.values[i, 0]) and s.support.values[i, 0] > 0:
            assert s.certified_margin.values[i, 0] < 0 or s.certified.values[i, 0] == 0


# ---------------------------------------------------------------- CLI: refusals and resumption


def _cli(*args, check=False):
    return subprocess.run([sys.executable, "-m", "dmdask.cli", *args], capture_output=True,
                          text=True, check=check)


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
    p, dm = _additive_store(tmp_path)
    dmp = str(tmp_path / "dm.zarr")
    dm.to_zarr(dmp)
    q, dm2 = _additive_store(tmp_path, name="other.zarr", n_train=50)
    dmq = str(tmp_path / "dm2.zarr")
    dm2.to_zarr(dmq)
    n = read_meta(p)["n_models"]
    cases = [
        (["counterfactual", p, dmp, "--k", "10,61"], "outside [1, 60]"),
        (["counterfactual", p, dmp, "--k", "5", "--targets", "1,77"], "do not exist"),
        (["counterfactual", p, dmq, "--k", "5"], "another store"),
        (["counterfactual", p, dmp, "--k", "5", "--estimators", "nope"], "unknown estimator"),
        (["counterfactual", p, dmp, "--k", "5", "--heuristics", "top,sideways"],
         "unknown heuristic"),
        (["mislabel", p, dmp, "--targets", "2", "--k", "5"], "cannot train relabelled"),
        (["support", p, dmp, "--targets", "2", "--k", "5,99"], "outside [1, 60]"),
        (["select", p, dmp, "--k", "5"], "target class or explicit"),
    ]
    from cli_inprocess import invoke

    # the first through a real process (its whole stderr is the one line), the rest through
    # the same command in process: an interpreter start-up each was most of their time
    first = _cli(*cases[0][0])
    runs = [(first.returncode, first.stderr)]
    for args, _ in cases[1:]:
        r = invoke(*args)
        runs.append((r.exit_code, r.stderr))
    for (args, msg), (code, err) in zip(cases, runs, strict=True):
        assert code == 2, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and msg in lines[0], (args, err)
    assert read_meta(p)["n_models"] == n
    assert not any(f.endswith("cf.zarr") for f in os.listdir(tmp_path))


def test_a_killed_counterfactual_run_completes_identically(tmp_path, client):
    """Kill `dmdask counterfactual` while it trains; the rerun trains only what is missing and
    gives exactly the uninterrupted result (deterministic job)."""
    import zarr

    from dmdask.fit.datamodels import fit_datamodels, save_datamodels
    from dmdask.store.runstore import incomplete_blocks
    from dmdask.train import train_block_task

    ref, cut = str(tmp_path / "ref.zarr"), str(tmp_path / "cut.zarr")
    # The store and its datamodels are only the setup: made in process, trained by the
    # worker's own task without a cluster, and without the delay, which changes timing only
    # (RidgeDigits is closed form: the margins are the same).
    fast = {"n_train": 80, "n_target": 10, "delay": 0.0}
    dmdask.create_store(ref, job=RIDGE, params=fast, n_models=160, alpha=0.5, block_size=16)
    spec = read_meta(ref)["job"]
    for block in incomplete_blocks(ref):
        train_block_task(ref, block, spec)
    shutil.copytree(ref, cut)
    dmp = str(tmp_path / "dm.zarr")
    save_datamodels(fit_datamodels(ref), dmp)
    args = [dmp, "--targets", "4", "--k", "5,10,20", "--heuristics", "top,random", "--runs",
            "2", "--workers", "1", "--no-progress"]
    # the uninterrupted result, through the API on the module's cluster (the CLI passes the
    # same arguments on to it: the two results must agree exactly)
    a = counterfactuals(ref, dmp, targets=4, k=(5, 10, 20), heuristics=["top", "random"],
                        runs=2, client=client, progress=False)

    def set_delay(path, delay):
        g = zarr.open_group(path, mode="r+")
        meta = dict(g.attrs["dmdask"])
        g.attrs["dmdask"] = {**meta, "job": {**meta["job"],
                                             "params": {**fast, "delay": delay}}}

    set_delay(cut, 0.5)  # slow enough to be caught midway
    proc = subprocess.Popen([sys.executable, "-m", "dmdask.cli", "counterfactual", cut, *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline, mid = time.time() + 120, False
    while time.time() < deadline and not mid:  # kill once some counterfactual models are done
        time.sleep(0.3)
        meta = read_meta(cut)
        if meta["n_models"] > 160:
            done = zarr.open_group(cut)["completed"][160:meta["n_models"]]
            mid = bool(0 < done.sum() < done.size)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert mid, "the run was not caught midway"
    set_delay(cut, 0.0)
    r = _cli("counterfactual", cut, *args, "--out", str(tmp_path / "cut_cf.zarr"))
    assert r.returncode == 0, r.stderr
    b = xr.open_zarr(str(tmp_path / "cut_cf.zarr")).load()
    for v in ("predicted", "actual", "actual_se", "n_runs", "removal_order", "models"):
        np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=v)
    assert read_meta(cut)["n_models"] == read_meta(ref)["n_models"]


def _loop_sums(w, orders, ks):
    out = np.full(orders.shape[:2] + (len(ks),), np.nan)
    for i in range(orders.shape[0]):
        for h in range(orders.shape[1]):
            o = orders[i, h][orders[i, h] >= 0]
            for j, k in enumerate(ks):
                if o.size >= k:
                    out[i, h, j] = w[i, o[:k]].sum()
    return out


def _orders(rng, T=4, H=3, N=30, L=12):
    w = rng.normal(size=(T, N))
    orders = np.stack([np.stack([rng.permutation(N)[:L] for _ in range(H)]) for _ in range(T)])
    orders[0, 1, 5:] = -1  # an order shorter than some k
    return w, orders


def test_removal_sums_equal_the_loop():
    from dmdask.counterfactual.removal import removal_sums

    w, orders = _orders(np.random.default_rng(0))
    ks = [1, 3, 5, 6, 12]
    np.testing.assert_allclose(removal_sums(w, orders, ks), _loop_sums(w, orders, ks),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.gpu
def test_removal_sums_on_cupy_match_numpy():
    import dask

    from dmdask.counterfactual.removal import removal_sums

    w, orders = _orders(np.random.default_rng(1), T=50, H=5, N=2000, L=400)
    ks = [10, 40, 160, 400]
    with dask.config.set({"dmdask.array.backend": "cupy"}):
        got = removal_sums(w, orders, ks)
    assert isinstance(got, np.ndarray)
    np.testing.assert_allclose(got, _loop_sums(w, orders, ks), rtol=1e-10, atol=1e-10)


@pytest.mark.viz
def test_report_draws_every_counterfactual_figure(tmp_path, client):
    from dmdask.report import COUNTERFACTUAL_FIGURE_IDS, write_report

    p, dm = _additive_store(tmp_path, noise=0.1, n_target=8)
    cf = counterfactuals(p, dm, targets=4, k=(5, 10), runs=2, client=client, progress=False)
    sup = support(p, dm, targets=4, k=(4, 8, 16), runs=1, client=client, progress=False)
    sel = select(p, dm, indices=np.arange(8), k=(10, 20), runs=2, client=client,
                 progress=False)
    out = write_report(tmp_path / "r.html", store=p, counterfactuals=cf, support=sup,
                       mislabel=sup.assign_attrs(mode="relabel"), selection=sel)
    page = out.read_text()
    for fig in COUNTERFACTUAL_FIGURE_IDS:
        assert f'<figure id="{fig}"><img src="data:image/png;base64,' in page, fig
    bare = write_report(tmp_path / "b.html", store=p).read_text()
    assert "dmdask counterfactual STORE" in bare and "dmdask support STORE" in bare
