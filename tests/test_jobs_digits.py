"""The digits jobs: real training on the real (bundled) data.

What is checked: the split and description; the job interface through ``dmdask.jobspec``;
that the margins are correct-class margins of models trained on exactly the masked examples
(the logistic job against an independent scikit-learn fit; the MLP through label flips);
determinism independent of block composition; accuracy; and degenerate masks.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from functools import cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from dmdask.errors import JobError  # noqa: E402
from dmdask.store.jobspec import (  # noqa: E402
    construct_job,
    fingerprint,
    resolve_job_class,
    validate_description,
)
from jobs.digits import (  # noqa: E402
    DigitsLogistic,
    DigitsMLP,
    load_split,
    margins_from_logits,
    stratified_split,
)

pytestmark = pytest.mark.torch

N_TRAIN, N_TEST = 1297, 500


def half_masks(B, seed, n=N_TRAIN, alpha=0.5):
    """Fixed-size masks: each row selects round(alpha * n) examples uniformly."""
    rng = np.random.default_rng(seed)
    k = int(round(alpha * n))
    masks = np.zeros((B, n), bool)
    for b in range(B):
        masks[b, rng.choice(n, k, replace=False)] = True
    return masks


def seeds_for(B, seed=0):
    return np.random.default_rng(seed).integers(0, 2**63, B, dtype=np.uint64)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Run this module with one torch thread (restored afterwards): the checks are about
    numbers, not speed, and two OpenMP threads slow small-block training down 10-100x when
    other processes share the two cores. test_mlp_same_margins_in_a_large_block runs with
    two threads on purpose."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def mlp():
    return DigitsMLP()


@pytest.fixture(scope="module")
def logistic():
    return DigitsLogistic()


# --- data and description ----------------------------------------------------------------------


def test_split_is_fixed_disjoint_and_stratified():
    from sklearn.datasets import load_digits

    s = load_split()
    assert s.train_id.size == N_TRAIN and s.test_id.size == N_TEST
    assert np.all(np.diff(s.train_id) > 0) and np.all(np.diff(s.test_id) > 0)
    assert np.intersect1d(s.train_id, s.test_id).size == 0
    assert np.array_equal(np.union1d(s.train_id, s.test_id), np.arange(1797))
    # 500 of 1797 per class, within one example
    y = load_digits().target
    per_class = np.bincount(y[s.test_id], minlength=10)
    expected = 500 * np.bincount(y) / y.size
    assert np.all(np.abs(per_class - expected) < 1) and per_class.sum() == N_TEST
    # deterministic: recomputing gives the same split, and it is pinned (a moved split would
    # silently change the dataset of every existing run store)
    train2, test2 = stratified_split(y, N_TEST, 0)
    assert np.array_equal(train2, s.train_id) and np.array_equal(test2, s.test_id)
    assert hashlib.sha256(s.test_id.astype("<i8").tobytes()).hexdigest()[:16] == "0d2cd5139449936b"
    assert not np.array_equal(stratified_split(y, N_TEST, 1)[1], s.test_id)
    # features: pixels / 16, centred with the training mean
    assert np.allclose(s.x, load_digits().data / 16 - (load_digits().data[s.train_id] / 16).mean(0))
    assert np.abs(s.x_train.mean(0)).max() < 1e-12
    assert load_split() is s  # cached per process


@pytest.mark.parametrize("cls", [DigitsMLP, DigitsLogistic])
def test_describe(cls):
    from sklearn.datasets import load_digits

    y = load_digits().target
    desc = cls().describe()
    norm = validate_description(desc)
    for key in ("train_label", "target_label", "target_train_index", "train_id", "target_id"):
        assert desc[key].dtype == np.int64, key
    assert desc["train_label"].shape == (N_TRAIN,) and desc["target_label"].shape == (N_TEST,)
    assert np.array_equal(desc["train_label"], y[desc["train_id"]])
    assert np.array_equal(desc["target_label"], y[desc["target_id"]])
    assert np.all(desc["target_train_index"] == -1)
    assert np.intersect1d(desc["train_id"], desc["target_id"]).size == 0

    k = 7
    d7 = cls(train_targets=k).describe()
    assert d7["target_label"].shape == (N_TEST + k,)
    assert np.array_equal(d7["target_id"][:N_TEST], desc["target_id"])
    assert np.array_equal(d7["target_train_index"][N_TEST:], np.arange(k))
    assert np.all(d7["target_train_index"][:N_TEST] == -1)
    tti = d7["target_train_index"][N_TEST:]
    assert np.array_equal(d7["target_id"][N_TEST:], d7["train_id"][tti])
    assert np.array_equal(d7["target_label"][N_TEST:], d7["train_label"][tti])
    assert fingerprint(validate_description(d7)) != fingerprint(norm)
    assert fingerprint(validate_description(cls().describe())) == fingerprint(norm)
    with pytest.raises(ValueError):
        cls(train_targets=N_TRAIN + 1)


def test_import_is_cheap():
    code = ("import sys, jobs, jobs.digits; "
            "assert 'torch' not in sys.modules and 'sklearn' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# --- interface ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["jobs.digits:DigitsMLP", "jobs.digits:DigitsLogistic"])
def test_jobspec_interface(path):
    cls = resolve_job_class(path)
    assert isinstance(cls.preferred_block_size, int) and cls.preferred_block_size > 0
    job = construct_job(path, {"train_targets": 3})
    masks = half_masks(3, 0)
    out = job.train_block(masks, seeds_for(3))
    assert out.dtype == np.float32 and out.shape == (3, N_TEST + 3)
    assert np.isfinite(out).all()
    with pytest.raises(JobError):
        construct_job(path, {"no_such_param": 1})


def test_bad_arguments_are_refused(mlp):
    with pytest.raises(ValueError):
        mlp.train_block(np.ones((2, N_TRAIN - 1), bool), seeds_for(2))
    with pytest.raises(ValueError):
        mlp.train_block(np.ones((2, N_TRAIN), bool), seeds_for(3))
    with pytest.raises(ValueError):
        mlp.train_block(np.ones((1, N_TRAIN), bool), seeds_for(1),
                        train_labels=np.full((1, N_TRAIN), 10))


def test_margins_from_logits():
    logits = np.array([[[3.0, 1.0, 2.0], [0.0, 5.0, 5.0], [1.0, 2.0, 4.0]]])
    m = margins_from_logits(logits, np.array([0, 1, 0]))
    assert m.dtype == np.float32
    assert np.array_equal(m, [[1.0, 0.0, -3.0]])


# --- the logistic job: an independent fit ---------------------------------------------------------


def sklearn_fit(x, y, l2):
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    # one BLAS thread: small problems, and multi-threaded BLAS slows down ~30x when other
    # processes share the cores
    with threadpool_limits(limits=1):
        return LogisticRegression(C=1.0 / (l2 * len(y)), solver="newton-cholesky", tol=1e-12,
                                  max_iter=1000).fit(x, y)


def test_logistic_equals_sklearn_on_the_masked_rows(logistic):
    s = load_split()
    rng = np.random.default_rng(3)
    masks = np.vstack([half_masks(1, 1), rng.random((1, N_TRAIN)) < 0.3])
    W, info = logistic.fit(masks, return_info=True)
    assert info["grad_norm"].max() <= 1e-8
    margins = logistic.train_block(masks, seeds_for(2))
    for b in range(2):
        ref = sklearn_fit(s.x_train[masks[b]], s.y_train[masks[b]], logistic.l2)
        assert np.abs(ref.coef_ - W[b, :64].T).max() < 1e-6
        icpt = ref.intercept_ - ref.intercept_.mean()
        assert np.abs(icpt - W[b, 64]).max() < 1e-6
        ref_margin = margins_from_logits(ref.decision_function(s.x_test)[None], s.y_test)[0]
        assert np.abs(ref_margin - margins[b]).max() < 1e-4
        # the sign of the margin is correctness
        correct = ref.predict(s.x_test) == s.y_test
        assert np.array_equal(margins[b] > 0, correct)
    # and an unmasked fit would differ: the mask matters
    ref_all = sklearn_fit(s.x_train, s.y_train, logistic.l2)
    assert np.abs(ref_all.coef_ - W[0, :64].T).max() > 1e-2


def test_logistic_is_deterministic_across_blocks(logistic):
    masks = half_masks(5, 11)
    masks[4] = np.random.default_rng(0).random(N_TRAIN) < 0.8  # a Bernoulli row, larger
    full = logistic.train_block(masks, seeds_for(5))
    alone = logistic.train_block(masks[[2]], seeds_for(1, 99))  # other seed: ignored
    again = logistic.train_block(masks[[4, 0, 2]], seeds_for(3, 5))
    assert np.abs(alone[0] - full[2]).max() <= 1e-6
    assert np.abs(again - full[[4, 0, 2]]).max() <= 1e-6


def test_logistic_label_flips(logistic):
    s = load_split()
    mask = half_masks(1, 4)[0]
    labels = np.tile(s.y_train, (3, 1))
    out_idx = np.flatnonzero(~mask)[:200]
    in_idx = np.flatnonzero(mask)[:100]
    labels[1, out_idx] = (labels[1, out_idx] + 3) % 10  # flips outside the mask
    labels[2, in_idx] = (labels[2, in_idx] + 3) % 10  # flips inside the mask
    out = logistic.train_block(np.tile(mask, (3, 1)), seeds_for(3), train_labels=labels)
    assert np.abs(out[1] - out[0]).max() <= 1e-6
    assert np.abs(out[2] - out[0]).max() > 0.1
    # flipped training labels still score against the true target labels
    ref = sklearn_fit(s.x_train[mask], labels[2, mask], logistic.l2)
    ref_margin = margins_from_logits(ref.decision_function(s.x_test)[None], s.y_test)[0]
    assert np.abs(ref_margin - out[2]).max() < 1e-4


def test_logistic_degenerate_rows(logistic):
    s = load_split()
    masks = np.zeros((4, N_TRAIN), bool)
    masks[1, 5] = True  # a single example
    masks[2, [5, 6]] = True
    masks[3] = np.random.default_rng(2).random(N_TRAIN) < 0.05  # Bernoulli, tiny
    out = logistic.train_block(masks, seeds_for(4))
    assert np.isfinite(out).all()
    assert np.array_equal(out[0], np.zeros(N_TEST, np.float32))  # no data: W = 0
    # one example: every target is predicted as that example's class
    assert np.array_equal(out[1] > 0, s.y_test == s.y_train[5])


def test_logistic_full_data_accuracy(logistic):
    out = logistic.train_block(np.ones((1, N_TRAIN), bool), seeds_for(1))
    assert (out > 0).mean() >= 0.95


# --- the MLP job ----------------------------------------------------------------------------------


def test_mlp_same_model_same_margins_in_any_block():
    """A model's margins are bit-for-bit the same whatever else is in its block.

    Holds because every tensor a model touches has a shape independent of its neighbours and
    MKL's batched GEMM computes each matrix of the batch the same way (see jobs._batched_mlp).
    """
    job = DigitsMLP(epochs=3)
    rng = np.random.default_rng(5)
    masks = half_masks(6, 5)
    masks[3] = rng.random(N_TRAIN) < 0.9  # Bernoulli rows of different sizes: more steps
    masks[4] = rng.random(N_TRAIN) < 0.1
    masks[5] = False
    seeds = seeds_for(6, 5)
    full = job.train_block(masks, seeds)
    for order in ([2], [4, 2], [5, 3, 1, 0], [0, 0, 1], [3, 4, 5, 0, 1, 2]):
        out = job.train_block(masks[order], seeds[order])
        assert np.array_equal(out, full[order]), order
    other = masks[[1, 1, 1]]
    out = job.train_block(np.vstack([other, masks[[2]]]), np.r_[seeds_for(3, 77), seeds[[2]]])
    assert np.array_equal(out[3], full[2])
    # the seed matters
    assert not np.array_equal(job.train_block(masks[[0]], seeds[[1]])[0], full[0])


def test_mlp_same_margins_in_a_large_block():
    """Large blocks (where MKL may parallelise over the batch instead of inside each product)
    and a different torch thread count give the same bits too on the machines we tried."""
    job = DigitsMLP(epochs=2, threads=2)
    masks = half_masks(300, 12)
    seeds = seeds_for(300, 12)
    big = job.train_block(masks, seeds)
    pick = [0, 137, 299]
    assert np.array_equal(job.train_block(masks[pick], seeds[pick]), big[pick])
    one_thread = DigitsMLP(epochs=2, threads=1).train_block(masks[pick[::-1]], seeds[pick[::-1]])
    assert np.array_equal(one_thread, big[pick[::-1]])


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_mlp_block_composition_property(data):
    """Any block containing a model gives that model the same margins (small, fast MLPs).

    (This found that ``torch.softmax`` over dim 1 rounds differently by block position for
    some batch sizes; jobs._batched_mlp spells the softmax out instead.)"""
    job = _tiny_mlp(data.draw(st.sampled_from([7, 16, 20, 32]), label="batch_size"))
    B = data.draw(st.integers(1, 6), label="B")
    rows = []
    for _ in range(B):
        kind = data.draw(st.sampled_from(["empty", "few", "bernoulli"]))
        seed = data.draw(st.integers(0, 2**32 - 1))
        rng = np.random.default_rng(seed)
        if kind == "empty":
            row = np.zeros(N_TRAIN, bool)
        elif kind == "few":
            row = np.zeros(N_TRAIN, bool)
            row[rng.choice(N_TRAIN, data.draw(st.integers(1, 5)), replace=False)] = True
        else:
            row = rng.random(N_TRAIN) < data.draw(st.floats(0.01, 0.99))
        rows.append(row)
    masks = np.array(rows)
    seeds = np.array(data.draw(st.lists(st.integers(0, 2**64 - 1), min_size=B, max_size=B)),
                     np.uint64)
    out = job.train_block(masks, seeds)
    assert out.shape == (B, N_TEST) and np.isfinite(out).all()
    order = data.draw(st.permutations(range(B)))
    assert np.array_equal(job.train_block(masks[order], seeds[order]), out[order])
    b = data.draw(st.integers(0, B - 1))
    assert np.array_equal(job.train_block(masks[[b]], seeds[[b]])[0], out[b])


@cache
def _tiny_mlp(batch_size):
    return DigitsMLP(hidden=8, epochs=2, batch_size=batch_size)


def test_mlp_margins_are_correct_class_margins():
    job = DigitsMLP(epochs=2)
    masks, seeds = half_masks(2, 13), seeds_for(2, 13)
    logits = job.train_logits(masks, seeds)
    assert logits.shape == (2, N_TEST, 10)
    y = job.describe()["target_label"]
    expect = np.empty((2, N_TEST))
    for b in range(2):
        for i in range(N_TEST):
            z = logits[b, i].astype(np.float64)
            expect[b, i] = z[y[i]] - np.delete(z, y[i]).max()
    out = job.train_block(masks, seeds)
    assert np.allclose(out, expect, atol=1e-5)
    assert np.array_equal(out > 0, logits.argmax(axis=2) == y)


def test_mlp_trains_on_exactly_the_masked_examples():
    job = DigitsMLP(epochs=3)
    s = load_split()
    mask = half_masks(1, 6)[0]
    labels = np.tile(s.y_train, (4, 1))
    out_idx = np.flatnonzero(~mask)
    in_idx = np.flatnonzero(mask)
    labels[1, out_idx] = (labels[1, out_idx] + 1) % 10  # every label outside the mask
    labels[2, in_idx[:50]] = (labels[2, in_idx[:50]] + 1) % 10  # 50 inside the mask
    labels[3] = (labels[3] + 1) % 10  # all labels shifted
    seed = seeds_for(1, 6)
    out = job.train_block(np.tile(mask, (4, 1)), np.repeat(seed, 4), train_labels=labels)
    assert np.array_equal(out[1], out[0])
    assert np.abs(out[2] - out[0]).max() > 0.1
    # margins are still measured against the true labels: trained on y + 1, a model is
    # confidently wrong on almost every target
    assert (out[0] > 0).mean() > 0.9
    assert (out[3] > 0).mean() < 0.1


def test_mlp_degenerate_and_bernoulli_rows(mlp):
    rng = np.random.default_rng(8)
    masks = np.zeros((6, N_TRAIN), bool)
    masks[1, 17] = True
    masks[2, [3, 900]] = True
    masks[3] = rng.random(N_TRAIN) < 0.02
    masks[4] = rng.random(N_TRAIN) < 0.5
    masks[5] = rng.random(N_TRAIN) < 0.95
    seeds = seeds_for(6, 8)
    out = mlp.train_block(masks, seeds)
    assert out.shape == (6, N_TEST) and np.isfinite(out).all()
    # no data: the untrained model from the seed's init (same as training for 0 epochs)
    init = DigitsMLP(epochs=0).train_block(masks[[0]], seeds[[0]])
    assert np.array_equal(out[0], init[0])
    assert (out[4] > 0).mean() > 0.94 and (out[5] > 0).mean() > 0.95
    # one example of class c: the model learns to predict c
    c = load_split().y_train[17]
    assert ((out[1] > 0) == (load_split().y_test == c)).mean() > 0.9


def test_mlp_accuracy_full_data(mlp):
    out = mlp.train_block(np.ones((4, N_TRAIN), bool), seeds_for(4, 9))
    acc = (out > 0).mean(axis=1)
    assert acc.min() >= 0.95, acc


def test_mlp_accuracy_half_data(mlp):
    out = mlp.train_block(half_masks(32, 10), seeds_for(32, 10))
    acc = (out > 0).mean(axis=1)
    assert acc.mean() >= 0.96, acc.mean()
    assert acc.min() >= 0.93


def test_threads_parameter_is_scoped():
    before = torch.get_num_threads()
    job = DigitsMLP(epochs=1, threads=2)
    job.train_block(half_masks(2, 0), seeds_for(2))
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError):
        DigitsMLP(threads=0)
