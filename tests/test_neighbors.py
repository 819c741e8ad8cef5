"""Datamodel nearest neighbours (dmdask.similarity): top positive/negative weights per target
against a brute-force sort, out of core on a dask array chunked along both axes, a planted
group recovered, and the representation baseline beside them."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from dmdask.errors import InputError
from dmdask.similarity import neighbors


def _dm(w, labels=None):
    T, N = w.shape
    coords = {"target": np.arange(T), "train": np.arange(N)}
    if labels is not None:
        coords["train_label"] = ("train", labels)
    return xr.Dataset({"weight": (("target", "train"), w), "bias": ("target", np.zeros(T))},
                      coords=coords)


def _brute(w, k, sign):
    out_i = np.full((w.shape[0], k), -1)
    out_w = np.full((w.shape[0], k), np.nan)
    for t, row in enumerate(w):
        cand = [j for j in range(row.size) if sign * row[j] > 0]
        cand.sort(key=lambda j: (-sign * row[j], j))
        for r, j in enumerate(cand[:k]):
            out_i[t, r], out_w[t, r] = j, row[j]
    return out_i, out_w


@pytest.mark.parametrize("k", [1, 5, 40])
def test_equals_a_brute_force_sort_with_ties_and_padding(k):
    rng = np.random.default_rng(k)
    w = np.round(rng.normal(size=(7, 30)), 1)  # ties
    w[rng.random(w.shape) < 0.4] = 0.0
    w[2] = 0.0  # a target with no neighbours at all
    lab = np.arange(30) % 4
    # chunked along both axes: the training axis is rechunked whole per target block
    dm = _dm(da.from_array(w, chunks=(3, 7)), lab)
    nn = neighbors(dm, k)
    for sign, name in ((1, "positive"), (-1, "negative")):
        bi, bw = _brute(w, k, sign)
        np.testing.assert_array_equal(nn[name].values, bi)
        np.testing.assert_array_equal(nn[f"{name}_weight"].values, bw)
        np.testing.assert_array_equal(nn[f"{name}_label"].values, np.where(bi >= 0, lab[bi], -1))
    np.testing.assert_array_equal(nn.n_positive.values, (w > 0).sum(1))
    assert (nn.positive.values[2] == -1).all()


def test_a_planted_group_is_recovered():
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.01, size=(5, 200))
    group = rng.choice(200, size=8, replace=False)
    w[3, group] = rng.uniform(0.5, 1.0, size=8)
    nn = neighbors(_dm(w), 8)
    assert set(nn.positive.values[3]) == set(group)


def test_bad_input():
    with pytest.raises(InputError, match="k must be"):
        neighbors(_dm(np.ones((2, 3))), 0)
    with pytest.raises(InputError, match="store"):
        neighbors(_dm(np.ones((2, 3))), 2, representation=True)
    with pytest.raises(InputError, match="weight"):
        neighbors(xr.Dataset({"bias": ("target", [0.0])}), 2)


@pytest.mark.torch
def test_representation_baseline_side_by_side(tmp_path):
    import dmdask

    p = str(tmp_path / "s.zarr")
    dmdask.create_store(p, job="jobs.digits:DigitsLogistic", n_models=8, alpha=0.5,
                        block_size=8)
    rng = np.random.default_rng(1)
    tg = np.array([0, 7, 300])
    ds = dmdask.open_store(p)
    dm = _dm(rng.normal(size=(3, 1297)), ds.train_label.values).assign_coords(target=tg)
    nn = neighbors(dm, 5, store=p, representation=True)
    # the digits job's "penultimate layer" is the input: nearest = smallest pixel distance
    from jobs.digits import DigitsLogistic

    job = DigitsLogistic()
    x, xt = job.split.x_train, job.x_target[tg]
    d = np.linalg.norm(xt[:, None, :] - x[None], axis=2)
    np.testing.assert_allclose(nn.nearest_distance.values, np.sort(d, axis=1)[:, :5], rtol=1e-6)
    np.testing.assert_array_equal(nn.nearest_label.values, ds.train_label.values[nn.nearest.values])


@pytest.mark.gpu
def test_top_k_on_cupy_chunks_matches_numpy():
    import dask

    rng = np.random.default_rng(2)
    w = np.round(rng.normal(size=(50, 400)), 2)
    want = neighbors(_dm(w), 12)
    with dask.config.set({"dmdask.array.backend": "cupy"}):
        got = neighbors(_dm(da.from_array(w, chunks=(16, 100))), 12)
    for v in ("positive", "positive_weight", "negative", "negative_weight"):
        np.testing.assert_array_equal(got[v].values, want[v].values)
