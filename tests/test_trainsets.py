"""Training sets trained T times (dmdask.store.trainsets): found again by content, so reruns add
nothing; relabelled sets are distinct sets; margins equal direct training with the job."""

from __future__ import annotations

import numpy as np
import pytest

import dmdask
from dmdask.errors import InputError
from dmdask.store.runstore import read_meta
from dmdask.store.trainsets import ensure_models, model_margins

RIDGE = "testjobs:RidgeDigits"


@pytest.fixture
def store(tmp_path):
    p = str(tmp_path / "s.zarr")
    dmdask.create_store(p, job=RIDGE, params={"n_train": 60, "n_target": 8}, n_models=16,
                        alpha=0.5, block_size=8)
    return p


def test_ensure_models_is_idempotent_and_dedupes(store):
    rng = np.random.default_rng(0)
    masks = rng.random((3, 60)) < 0.7
    masks[2] = masks[0]  # asked twice: one set
    idx = ensure_models(store, masks, kind="counterfactual", runs=2)
    assert idx.shape == (3, 2)
    np.testing.assert_array_equal(idx[0], idx[2])
    assert read_meta(store)["n_models"] == 16 + 4
    again = ensure_models(store, masks[[1, 0]], kind="counterfactual", runs=3)
    np.testing.assert_array_equal(again[:, :2], idx[[1, 0]])  # the old runs first
    assert read_meta(store)["n_models"] == 16 + 4 + 2
    # the same mask as another kind is another set
    ctrl = ensure_models(store, masks[0], kind="control", runs=1)
    assert ctrl[0, 0] not in set(idx.ravel())
    ds = dmdask.open_store(store)
    np.testing.assert_array_equal(ds.mask.values[idx[1]], np.repeat(masks[1:2], 2, 0))


def test_relabelled_sets_train_on_their_labels(store, tmp_path):
    full = np.ones(60, bool)
    ds = dmdask.open_store(store)
    base = ds.train_label.values.astype(np.int64)
    flip = base.copy()
    flip[:5] = (flip[:5] + 1) % 10
    labels = np.stack([base, flip])
    idx = ensure_models(store, np.stack([full, full]), kind="flip", runs=1, labels=labels)
    assert idx[0, 0] != idx[1, 0]
    # found again, also the row that relabels nothing
    np.testing.assert_array_equal(
        ensure_models(store, np.stack([full, full]), kind="flip", runs=1, labels=labels), idx)
    assert np.isnan(model_margins(store, idx)).all()
    dmdask.train(store, workers=1, threads_per_worker=1, progress=False)
    got = model_margins(store, idx)
    from testjobs import RidgeDigits

    job = RidgeDigits(n_train=60, n_target=8)
    want = job.train_block(np.stack([full, full]), np.zeros(2, np.uint64),
                           train_labels=labels)
    np.testing.assert_allclose(got[:, 0], want, rtol=0, atol=1e-5)
    assert not np.allclose(got[0, 0], got[1, 0])


def test_bad_training_sets_are_refused_and_nothing_is_added(store):
    n = read_meta(store)["n_models"]
    with pytest.raises(InputError, match="shape"):
        ensure_models(store, np.ones((2, 59), bool), kind="counterfactual", runs=1)
    with pytest.raises(InputError, match="kind"):
        ensure_models(store, np.ones((1, 60), bool), kind="nope", runs=1)
    with pytest.raises(InputError, match="runs"):
        ensure_models(store, np.ones((1, 60), bool), kind="control", runs=0)
    assert read_meta(store)["n_models"] == n
