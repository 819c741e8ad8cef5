"""Train–test leakage (dmdask.similarity.leakage): candidates against a brute-force sort of the
normalised weights, recall/precision curves against a direct count, the global ranking's
average precision against scikit-learn, the planted-duplicate digits job (valid, deterministic
pairs) through a real store, the report sections and the CLI, and bad input."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

import dmdask
from dmdask.errors import InputError
from dmdask.similarity import leakage, neighbors
from dmdask.similarity.leakage import candidate_curves, ranking_curve

LEAKY = "jobs.digits_leaky:DigitsLeakyLogistic"


def _dm(w, target=None, train_label=None):
    T, N = w.shape
    coords = {"target": np.arange(T) if target is None else np.asarray(target),
              "train": np.arange(N)}
    if train_label is not None:
        coords["train_label"] = ("train", np.asarray(train_label))
    return xr.Dataset({"weight": (("target", "train"), w), "bias": ("target", np.zeros(T))},
                      coords=coords)


# ------------------------------------------------------------ candidates and their ranking


@pytest.mark.parametrize("by", ["weight", "magnitude"])
def test_candidates_on_a_planted_additive_learner_equal_the_brute_force_top_c(tmp_path, by):
    from testjobs import Additive

    params = {"n_train": 40, "n_target": 7, "zeros": 25, "seed": 3}
    p = str(tmp_path / "add.zarr")
    dmdask.create_store(p, job="testjobs:Additive", params=params, n_models=8, alpha=0.5,
                        block_size=8)
    job = Additive(**params)
    w = job.weights()  # the additive learner's exact datamodels
    w[2] *= 50.0  # a target on another scale: the score must not care
    w[4] = 0.0  # a target with no candidates at all
    planted = np.array([[0, int(np.argmax(w[0]))], [3, 5], [6, 39]])
    C = 6
    lk = leakage(p, _dm(da.from_array(w, chunks=(3, 11))), C, by=by, planted=planted)
    key = w if by == "weight" else np.abs(w)
    pairs = []
    for t in range(w.shape[0]):
        norm = np.sqrt((w[t] ** 2).sum())
        pos = sorted((j for j in range(w.shape[1]) if key[t, j] > 0),
                     key=lambda j, t=t: (-key[t, j], j))[:C]
        want = pos + [-1] * (C - len(pos))
        np.testing.assert_array_equal(lk.candidate.values[t], want)
        got = lk.score.values[t, :len(pos)]
        np.testing.assert_allclose(got, [key[t, j] / norm for j in pos], rtol=1e-12)
        np.testing.assert_allclose(lk.weight.values[t, :len(pos)], w[t, pos], rtol=1e-12)
        assert np.isnan(lk.score.values[t, len(pos):]).all()
        pairs += [(-key[t, j] / norm, t, r, j) for r, j in enumerate(pos)]
    pairs.sort()
    np.testing.assert_array_equal(lk.pair_target.values, [q[1] for q in pairs])
    np.testing.assert_array_equal(lk.pair_candidate.values, [q[3] for q in pairs])
    # the scaled target's scores are those it had before scaling
    np.testing.assert_allclose(lk.score.values[2][lk.candidate.values[2] >= 0],
                               leakage(p, _dm(job.weights()), C, by=by).score.values[2][
                                   lk.candidate.values[2] >= 0], rtol=1e-12)
    # the ground truth was given: recall over c by direct count
    hits = [sum(int(j in lk.candidate.values[t, :c]) for t, j in planted)
            for c in range(1, C + 1)]
    np.testing.assert_allclose(lk.recall.sel(source="datamodels").values, np.array(hits) / 3)
    assert "representation" not in lk.source.values


def test_curves_equal_a_direct_count_on_hand_built_lists():
    cand = np.array([[4, 2, 9],
                     [1, -1, -1],
                     [7, 3, 5],
                     [0, 8, 6]])
    targets = np.array([10, 11, 12, 13])
    # (12, 5) at rank 3, (10, 2) at rank 2, (13, 0) at rank 1, (11, 9) never, (99, 1): target
    # without a datamodel (not covered)
    pairs = np.array([[12, 5], [10, 2], [13, 0], [11, 9], [99, 1]])
    recall, precision, covered = candidate_curves(cand, targets, pairs)
    assert covered == 4
    np.testing.assert_allclose(recall, [1 / 4, 2 / 4, 3 / 4])
    np.testing.assert_allclose(precision, [1 / 4, 2 / 7, 3 / 10])


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 5), st.integers(2, 12), st.integers(0, 10_000))
def test_recall_is_monotone_in_c_and_equals_a_loop_count(T, C, N, seed):
    rng = np.random.default_rng(seed)
    cand = np.full((T, C), -1)
    for t in range(T):
        n = int(rng.integers(0, min(C, N) + 1))
        cand[t, :n] = rng.choice(N, size=n, replace=False)
    targets = rng.choice(3 * T, size=T, replace=False)
    P = int(rng.integers(0, 8))
    pairs = np.stack([rng.choice(np.concatenate([targets, [3 * T + 1]]), size=P),
                      rng.integers(0, N, size=P)], axis=1).reshape(-1, 2)
    recall, precision, covered = candidate_curves(cand, targets, pairs)
    uniq = {tuple(q) for q in pairs.tolist()}
    cov = {q for q in uniq if q[0] in set(targets.tolist())}
    assert covered == len(cov)
    for c in range(1, C + 1):
        found = sum(1 for t, row in zip(targets, cand, strict=True) for j in row[:c]
                    if j >= 0 and (int(t), int(j)) in cov)
        issued = int((cand[:, :c] >= 0).sum())
        if cov:
            assert recall[c - 1] == pytest.approx(found / len(cov))
        else:
            assert np.isnan(recall[c - 1])
        if issued:
            assert precision[c - 1] == pytest.approx(found / issued)
    if cov:
        assert (np.diff(recall) >= 0).all() and 0 <= recall[-1] <= 1


def test_global_ranking_average_precision_equals_sklearn():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(5)
    flags = rng.random(80) < 0.2
    prec, rec, ap = ranking_curve(flags, int(flags.sum()))
    # the ranking is the order: score decreasing with position
    assert ap == pytest.approx(average_precision_score(flags, -np.arange(80.0)), rel=1e-12)
    assert rec[-1] == 1.0 and (np.diff(rec) >= 0).all()
    np.testing.assert_allclose(prec, np.cumsum(flags) / np.arange(1, 81))
    # planted pairs never ranked count as precision 0
    assert ranking_curve(flags, int(flags.sum()) * 2)[2] == pytest.approx(ap / 2)


# ------------------------------------------------------------ the planted-duplicate digits job


def _padded_windows(img):
    """The target and its four one-pixel shifts (zero fill), computed from a padded copy."""
    pad = np.zeros((10, 10))
    pad[1:9, 1:9] = img
    return [pad[1 + dr:9 + dr, 1 + dc:9 + dc] for dr, dc in ((0, 0), (1, 0), (-1, 0), (0, 1),
                                                             (0, -1))]


@pytest.mark.torch
def test_planted_pairs_are_valid_and_deterministic_for_a_seed():
    from jobs.digits_leaky import DigitsLeakyLogistic, DigitsLeakyMLP

    job = DigitsLeakyLogistic(n_planted=30, copies=2, noise=1.5, shift=0.5, plant_seed=4)
    pairs = job.planted_pairs()
    assert pairs.shape == (60, 2)
    desc = job.describe()
    assert job.n_train == desc["train_label"].size == 1297 + 60
    np.testing.assert_array_equal(pairs[:, 1], 1297 + np.arange(60))  # added, not replaced
    assert (np.bincount(pairs[:, 0]) <= 2).all() and np.unique(pairs[:, 0]).size == 30
    np.testing.assert_array_equal(desc["train_label"][pairs[:, 1]],
                                  desc["target_label"][pairs[:, 0]])
    from sklearn.datasets import load_digits

    raw = np.asarray(load_digits().images, np.float64)
    n_shifted = 0
    for t, j in pairs:
        copy = job.split.images[desc["train_id"][j]]
        dev = [np.abs(copy - win).max() for win in _padded_windows(raw[desc["target_id"][t]])]
        assert min(dev) <= 1.5 + 1e-12  # within the noise of the target or a shift of it
        n_shifted += int(np.argmin(dev) > 0)
        assert 0.0 <= copy.min() and copy.max() <= 16.0
    assert 0 < n_shifted < 60  # shift = 0.5: some of each
    # the features the models see and the images the report draws are the planted copies
    x = job.split.images[desc["train_id"]].reshape(-1, 64) / 16.0
    np.testing.assert_allclose(job.split.x_train, x - x.mean(axis=0), atol=1e-12)
    np.testing.assert_array_equal(job.examples("train", pairs[:3, 1]),
                                  np.rint(job.split.images[desc["train_id"][pairs[:3, 1]]]
                                          * 255 / 16).astype(np.uint8))
    np.testing.assert_array_equal(job.y_target, load_digits().target[desc["target_id"]])
    # deterministic for a seed, different for another; the MLP variant plants the same
    again = DigitsLeakyMLP(n_planted=30, copies=2, noise=1.5, shift=0.5, plant_seed=4,
                           epochs=1)
    np.testing.assert_array_equal(again.planted_pairs(), pairs)
    np.testing.assert_array_equal(again.split.x, job.split.x)
    # the models (and the representation baseline) see the copies
    assert again.model_inputs()["x_train"].shape == (1357, 64)
    masks = np.ones((2, 1357), bool)
    masks[1, 1297:] = False
    assert again.train_block(masks, np.arange(2)).shape == (2, 500)
    other = DigitsLeakyLogistic(n_planted=30, copies=2, noise=1.5, shift=0.5, plant_seed=5)
    assert not np.array_equal(other.planted_pairs(), pairs)
    with pytest.raises(ValueError, match="n_planted"):
        DigitsLeakyLogistic(n_planted=501)


@pytest.fixture(scope="module")
def leaky_store(tmp_path_factory):
    p = str(tmp_path_factory.mktemp("leaky") / "leaky.zarr")
    dmdask.create_store(p, job=LEAKY, params={"n_planted": 20, "noise": 1.0}, n_models=8,
                        alpha=0.5, block_size=8)
    return p


def _leaky_dm(path, seed=0):
    """Datamodels on the leaky store for a subset of its targets: small noise, and a large
    weight on the planted copy for every other planted target."""
    ds = dmdask.open_store(path)
    from jobs.digits_leaky import DigitsLeakyLogistic

    pairs = DigitsLeakyLogistic(n_planted=20, noise=1.0).planted_pairs()
    tg = np.unique(np.concatenate([pairs[:, 0][:15], np.arange(0, 500, 25)]))
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.01, size=(tg.size, ds.sizes["train"]))
    boosted = [(t, j) for t, j in pairs[:15:2]]
    for t, j in boosted:
        w[np.searchsorted(tg, t), j] = 1.0
    dm = _dm(w, tg, ds.train_label.values).assign_coords(
        target_label=("target", ds.target_label.values[tg]))
    return dm, pairs, tg, boosted


@pytest.mark.torch
def test_leakage_on_the_leaky_store_reads_its_planted_pairs(leaky_store):
    dm, pairs, tg, boosted = _leaky_dm(leaky_store)
    C = 5
    lk = leakage(leaky_store, dm, C, representation=True)
    assert lk.attrs["n_planted"] == 20 and lk.attrs["n_planted_covered"] == 15
    assert "jobs.digits_leaky" in lk.attrs["planted_source"]
    # every boosted pair is its target's first candidate and the top of the global ranking
    r = lk.sel(source="datamodels")
    assert float(r.recall.sel(n_candidates=1)) == pytest.approx(len(boosted) / 15)
    assert set(zip(lk.pair_target.values[:len(boosted)].tolist(),
                   lk.pair_candidate.values[:len(boosted)].tolist(), strict=True)) == set(boosted)
    assert float(r.average_precision) >= len(boosted) / 15 - 1e-12
    # the representation of a linear job is the pixels: its candidates by direct count
    from jobs.digits_leaky import DigitsLeakyLogistic

    job = DigitsLeakyLogistic(n_planted=20, noise=1.0)
    d = np.linalg.norm(job.x_target[tg][:, None] - job.split.x_train[None], axis=2)
    near = lk.rep_candidate.values  # (near-)ties may order either way: check the distances
    np.testing.assert_allclose(lk.rep_distance.values, np.sort(d, axis=1)[:, :C], rtol=1e-6)
    np.testing.assert_allclose(np.take_along_axis(d, near, axis=1), lk.rep_distance.values,
                               rtol=1e-6)
    cov = {(int(t), int(j)) for t, j in pairs if t in set(tg.tolist())}
    for c in range(1, C + 1):
        found = sum((int(t), int(j)) in cov for t, row in zip(tg, near, strict=True)
                    for j in row[:c])
        assert float(lk.recall.sel(source="representation", n_candidates=c)) == \
            pytest.approx(found / len(cov))
        assert float(lk.precision.sel(source="representation", n_candidates=c)) == \
            pytest.approx(found / (c * tg.size))


@pytest.mark.torch
@pytest.mark.viz
def test_report_sections_render_image_grids(leaky_store):
    from dmdask.report.neighbors import sec_leakage, sec_neighbors

    dm, *_ = _leaky_dm(leaky_store)
    ds = dmdask.open_store(leaky_store)
    nn = neighbors(dm, 4, store=leaky_store, representation=True)
    html = sec_neighbors(nn, ds, None)
    assert 'id="fig-neighbors"' in html and html.count("data:image/png;base64,") == 1
    assert "neighbors-agreement" in html and "nearest" in html
    lk = leakage(leaky_store, dm, 4, representation=True)
    html = sec_leakage(lk, ds, None)
    for fig in ("fig-leakage-curves", "fig-leakage-pairs", "leakage-curves", "leakage-pairs"):
        assert fig in html
    # without a ground truth or images: a note, the ranking still listed
    plain = sec_leakage(leakage(None, dm, 3), None, False)
    assert "No planted ground truth" in plain and "leakage-pairs" in plain
    assert "fig-leakage-pairs" not in plain
    from dmdask.report.page import render_report

    page = render_report(store=leaky_store, neighbors=nn, leakage=lk)
    assert 'id="sec-leakage"' in page and "fig-leakage-curves" in page
    assert 'id="sec-neighbors"' in page and "fig-neighbors" in page


@pytest.mark.torch
def test_cli_leakage_writes_the_dataset(leaky_store, tmp_path):
    from click.testing import CliRunner

    from dmdask.cli import main

    r = CliRunner().invoke(main, ["leakage", "--help"])
    doc, opts = r.output.split("Options:")
    assert r.exit_code == 0 and len(doc.split()) > 12 and "--candidates" in opts
    dm, *_ = _leaky_dm(leaky_store)
    dmp = str(tmp_path / "dm.zarr")
    dm.to_zarr(dmp)
    out = str(tmp_path / "leak.zarr")
    res = CliRunner().invoke(main, ["leakage", leaky_store, dmp, "--candidates", "3",
                                    "--out", out])
    assert res.exit_code == 0, res.output
    assert "recall@1" in res.output and "planted" in res.output
    got = xr.open_zarr(out)
    np.testing.assert_array_equal(got.candidate.values,
                                  leakage(leaky_store, dm, 3).candidate.values)
    res = CliRunner().invoke(main, ["leakage", leaky_store, dmp, "--candidates", "0"])
    assert res.exit_code == 2 and res.output.strip().splitlines() == [
        "dmdask: error: candidates must be >= 1, got 0"]


# ------------------------------------------------------------ bad input


def test_bad_input(tmp_path):
    w = np.random.default_rng(0).normal(size=(3, 40))
    with pytest.raises(InputError, match="candidates must be >= 1"):
        leakage(None, _dm(w), 0)
    with pytest.raises(InputError, match="by must be one of weight, magnitude"):
        leakage(None, _dm(w), 2, by="abs")
    with pytest.raises(InputError, match="needs the run store"):
        leakage(None, _dm(w), 2, representation=True)
    bad = w.copy()
    bad[1, 3] = np.nan
    with pytest.raises(InputError, match="NaN weights for 1 of 3 targets"):
        leakage(None, _dm(bad), 2)
    with pytest.raises(InputError, match=r"planted pairs must be integers of shape \[P, 2\]"):
        leakage(None, _dm(w), 2, planted=[1, 2, 3])
    with pytest.raises(InputError, match="planted pairs outside"):
        leakage(None, _dm(w), 2, planted=[[0, 40]])
    # datamodels of another store
    p = str(tmp_path / "add.zarr")
    dmdask.create_store(p, job="testjobs:Additive", params={"n_train": 30}, n_models=4,
                        alpha=0.5, block_size=4)
    with pytest.raises(InputError, match="fitted on another store"):
        leakage(p, _dm(w), 2)
    # a store whose job plants nothing: no curves, no error
    lk = leakage(p, _dm(np.abs(w[:, :30])), 2)
    assert "recall" not in lk and "candidate" in lk


@pytest.mark.gpu
@pytest.mark.parametrize("by", ["weight", "magnitude"])
def test_leakage_on_cupy_chunks_matches_numpy(by):
    import dask

    rng = np.random.default_rng(3)
    w = np.round(rng.normal(size=(50, 400)), 2)
    w[7] = 0.0
    pairs = np.stack([np.arange(0, 50, 5), rng.integers(0, 400, 10)], axis=1)
    want = leakage(None, _dm(w), 8, by=by, planted=pairs)
    with dask.config.set({"dmdask.array.backend": "cupy"}):
        got = leakage(None, _dm(da.from_array(w, chunks=(16, 100))), 8, by=by, planted=pairs)
    for v in ("candidate", "score", "weight", "pair_target", "pair_candidate", "recall"):
        np.testing.assert_array_equal(got[v].values, want[v].values)


def test_cli_refuses_an_out_that_is_an_input(leaky_store, tmp_path):
    # `--out` over the datamodels (or the store) used to replace them with the result
    from click.testing import CliRunner

    from dmdask.cli import main

    dm, *_ = _leaky_dm(leaky_store)
    dmp = str(tmp_path / "dm.zarr")
    dm.to_zarr(dmp)
    for cmd in (["leakage", leaky_store, dmp, "--candidates", "2"],
                ["neighbors", dmp, "--k", "2"]):
        res = CliRunner().invoke(main, cmd + ["--out", dmp])
        assert res.exit_code == 2, res.output
        assert res.output.strip().splitlines()[-1] == (
            f"dmdask: error: --out {dmp} is the input {dmp}: refusing to overwrite it; "
            "choose another path for the result")
    np.testing.assert_array_equal(xr.open_zarr(dmp).weight.values, dm.weight.values)
    res = CliRunner().invoke(main, ["leakage", leaky_store, dmp, "--out", leaky_store])
    assert res.exit_code == 2 and "is the input" in res.output
    assert dmdask.open_store(leaky_store).sizes["model"] == 8
