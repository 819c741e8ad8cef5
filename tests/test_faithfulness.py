"""Faithfulness of principal components (dmdask.similarity.faithfulness, App. J.1), trained
through the run store on a real dask.distributed cluster with the exactly additive learner
(tests/testjobs.py Additive: margin = b + mask·W), where removing a set R changes a target's
margin by exactly Σ_{j∈R} W_tj — so the removal sets, directions, groups and signs can be
checked exactly."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import dmdask
from dmdask.errors import InputError
from dmdask.similarity import faithfulness, pca
from dmdask.similarity.faithfulness import removal_sets

PARAMS = {"n_train": 60, "n_target": 16, "noise": 0.0, "zeros": 10, "seed": 3}


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=":0", silence_logs=40) as c, Client(c) as cl:
        yield cl


@pytest.fixture(scope="module")
def additive(tmp_path_factory):
    from testjobs import Additive

    p = str(tmp_path_factory.mktemp("faith") / "a.zarr")
    dmdask.create_store(p, job="testjobs:Additive", params=PARAMS, n_models=32, alpha=0.5,
                        block_size=32)
    j = Additive(**PARAMS)
    W = j.weights()
    dm = xr.Dataset({"weight": (("target", "train"), W), "bias": ("target", j.bias())},
                    coords={"target": np.arange(W.shape[0]), "train": np.arange(W.shape[1])})
    return p, dm, W


def test_removal_sets_are_the_extreme_coordinates():
    v = np.array([0.3, -1.0, 0.3, 2.0, -1.0, 0.0])
    s = removal_sets(v, 3)
    np.testing.assert_array_equal(s["positive"], [3, 0, 2])  # ties: the lower index first
    np.testing.assert_array_equal(s["negative"], [1, 4, 5])


def test_effects_equal_the_sum_of_removed_weights_exactly(additive, client):
    p, dm, W = additive
    emb = pca(dm, 3, n_power_iter=4)
    n = 4
    f = faithfulness(p, dm, emb, components=(0, 2), k=(3, 10), runs=2, control_runs=2,
                     n_targets=n, client=client, progress=False)
    assert dict(f.sizes) == {"component": 2, "direction": 2, "k": 2, "group": 3, "run": 2,
                             "rank": 10, "member": n, "target": 16}
    V, Z = emb.components.values, emb.projection.values
    for ci, c in enumerate((0, 2)):
        top = np.argsort(-Z[:, c], kind="stable")[:n]
        bottom = np.argsort(Z[:, c], kind="stable")[:n]
        np.testing.assert_array_equal(f.top_targets.values[ci], top)
        np.testing.assert_array_equal(f.bottom_targets.values[ci], bottom)
        for di, sign in enumerate((1, -1)):
            order = np.argsort(-sign * V[c], kind="stable")
            for ki, k in enumerate((3, 10)):
                R = order[:k]
                np.testing.assert_array_equal(np.sort(f.removed.values[ci, di, :k]), np.sort(R))
                drop = W[:, R].sum(axis=1)  # control − removed, per target
                want = [drop[top].mean(), drop[bottom].mean(), drop.mean()]
                np.testing.assert_allclose(f.effect.values[ci, di, ki], want, atol=2e-5)
    # noiseless runs: identical replicates, standard errors zero
    np.testing.assert_allclose(f.effect_se.values, 0.0, atol=1e-6)
    assert (f.n_runs.values == 2).all()
    # a rerun finds every set again: nothing is trained twice
    again = faithfulness(p, dm, emb, components=(0, 2), k=(3, 10), runs=2, control_runs=2,
                         n_targets=n, client=client, progress=False)
    assert again.attrs["models_trained"] == 0
    np.testing.assert_array_equal(again.models.values, f.models.values)


def test_bad_input(additive):
    p, dm, W = additive
    emb = pca(dm, 2)
    with pytest.raises(InputError, match=r"components \[2\] outside \[0, 1\]"):
        faithfulness(p, dm, emb, components=(0, 2), k=(3,), runs=1)
    with pytest.raises(InputError, match=r"k \[60\] outside \[1, 59\]"):
        faithfulness(p, dm, emb, k=(60,), runs=1)
    with pytest.raises(InputError, match=r"n_targets must be in \[1, 16\]"):
        faithfulness(p, dm, emb, k=(3,), runs=1, n_targets=17)
    with pytest.raises(InputError, match="lacks components"):
        faithfulness(p, dm, emb.drop_vars("components"), k=(3,), runs=1)


@pytest.mark.viz
def test_report_section_draws_effects_against_k(additive, client):
    from dmdask.report.embeddings import sec_faithfulness

    p, dm, W = additive
    emb = pca(dm, 2)
    f = faithfulness(p, dm, emb, components=(0,), k=(2, 5), runs=1, control_runs=1,
                     n_targets=3, client=client, progress=False)
    html = sec_faithfulness(f)
    assert 'id="fig-faithfulness"' in html and "data:image/png;base64," in html
    assert "No faithfulness given" in sec_faithfulness(None)
