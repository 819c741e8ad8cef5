"""The run store: round trips, reproducible sampling, compression, the write protocol."""

from __future__ import annotations

import json
import multiprocessing as mp
import os

import dask
import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dmdask
from dmdask.errors import InputError, JobError, StoreError, WriteRefused
from dmdask.store.runstore import block_range, incomplete_blocks, read_meta
from dmdask.store.sampling import model_seeds, sample_masks, subset_size


def _raising_scheduler(*args, **kwargs):
    raise AssertionError("something was computed while it should have stayed lazy")


def _snapshot(path):
    ds = dmdask.open_store(path)
    return {k: ds[k].values.copy() for k in ("mask", "margin", "completed", "seed", "kind",
                                             "alpha", "replicate_of")}


def _assert_same(a, b):
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# --------------------------------------------------------------------------- round trip


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n_train=st.integers(1, 40),
    n_target=st.integers(1, 6),
    block=st.integers(1, 9),
    sampling=st.sampled_from(["fixed", "bernoulli"]),
    adds=st.lists(st.tuples(st.sampled_from(["random", "heldout", "replicate", "custom"]),
                            st.integers(0, 13), st.sampled_from([0.1, 0.5, 0.9])),
                  min_size=1, max_size=4),
    data=st.data(),
)
def test_round_trip_property(tmp_path_factory, n_train, n_target, block, sampling, adds, data):
    path = str(tmp_path_factory.mktemp("rt") / "s.zarr")
    dmdask.create_jobless_store(path, n_train, n_target, block_size=block, seed=7,
                                sampling=sampling, alpha=0.5)
    rng = np.random.default_rng(0)
    exp_mask, exp_kind, exp_alpha, exp_rep = [], [], [], []
    for kind, n, alpha in adds:
        start = len(exp_kind)
        if kind == "replicate":
            if start == 0:
                continue
            rep = rng.integers(0, start, size=n)
            dmdask.add_models(path, "replicate", replicate_of=rep)
            exp_mask += [exp_mask[r] for r in rep]
            exp_alpha += [exp_alpha[r] for r in rep]
            exp_rep += list(rep)
        elif kind == "custom":
            m = rng.random((n, n_train)) < 0.3
            dmdask.add_models(path, "custom", masks=m)
            exp_mask += list(m)
            exp_alpha += [np.nan] * n
            exp_rep += [-1] * n
        else:
            dmdask.add_models(path, kind, n=n, alpha=alpha)
            m = sample_masks(7, np.arange(start, start + n), n_train, alpha, sampling)
            exp_mask += list(m)
            exp_alpha += [alpha] * n
            exp_rep += [-1] * n
        exp_kind += [kind] * (len(exp_alpha) - len(exp_kind))
    n = len(exp_kind)
    meta = read_meta(path)
    assert meta["n_models"] == n
    # write a random subset of whole blocks
    margins = rng.standard_normal((n, n_target)).astype(np.float32)
    written = np.zeros(n, bool)
    for b in range(-(-n // block)):
        if data.draw(st.booleans()):
            s, e = block_range(meta, b)
            dmdask.write_block(path, b, margins[s:e])
            written[s:e] = True
    with dask.config.set(scheduler=_raising_scheduler):
        ds = dmdask.open_store(path)  # lazy: opening computes nothing
    assert ds.sizes == {"model": n, "train": n_train, "target": n_target}
    if n:
        np.testing.assert_array_equal(ds.mask.values, np.array(exp_mask).reshape(n, n_train))
        assert list(ds.kind.values) == exp_kind
        np.testing.assert_array_equal(ds.alpha.values, np.array(exp_alpha, np.float32))
        np.testing.assert_array_equal(ds.replicate_of.values, exp_rep)
        np.testing.assert_array_equal(ds.seed.values, model_seeds(7, np.arange(n)))
        np.testing.assert_array_equal(ds.completed.values, written)
        got = ds.margin.values
        np.testing.assert_array_equal(got[written], margins[written])
        assert np.isnan(got[~written]).all()
    assert incomplete_blocks(path) == sorted({int(i) // block for i in np.nonzero(~written)[0]})


def test_open_store_is_lazy_and_labelled(tmp_path):
    p = dmdask.create_jobless_store(tmp_path / "s", 30, 4, block_size=8, alpha=0.5,
                                    train_label=np.arange(30) % 3, target_label=[0, 1, 2, 0],
                                    target_train_index=[-1, 5, -1, -1])
    dmdask.add_models(p, "random", n=20)
    with dask.config.set(scheduler=_raising_scheduler):
        ds = dmdask.open_store(p)
        assert all(hasattr(ds[v].data, "dask") for v in ("mask", "margin", "kind", "completed"))
    assert ds.mask.data.chunks[0] == (8, 8, 4)
    np.testing.assert_array_equal(ds.train_label.values, np.arange(30) % 3)
    np.testing.assert_array_equal(ds.target_train_index.values, [-1, 5, -1, -1])
    sub = ds.sel(model=(ds.kind == "random").values)
    np.testing.assert_array_equal(sub.model.values, np.arange(20))


# --------------------------------------------------------------------------- sampling


def test_masks_are_a_pure_function_of_seed_and_index(tmp_path):
    a = dmdask.create_jobless_store(tmp_path / "a", 300, 2, block_size=7, seed=11, alpha=0.3)
    dmdask.add_models(a, "random", n=100)
    b = dmdask.create_jobless_store(tmp_path / "b", 300, 2, block_size=64, seed=11, alpha=0.3)
    dmdask.add_models(b, "random", n=40)
    dmdask.add_models(b, "random", n=60)
    ma, mb = dmdask.open_store(a).mask.values, dmdask.open_store(b).mask.values
    np.testing.assert_array_equal(ma, mb)  # bit for bit, whatever the blocks and calls
    np.testing.assert_array_equal(dmdask.open_store(a).seed.values,
                                  dmdask.open_store(b).seed.values)
    c = dmdask.create_jobless_store(tmp_path / "c", 300, 2, block_size=7, seed=12, alpha=0.3)
    dmdask.add_models(c, "random", n=100)
    assert (dmdask.open_store(c).mask.values != ma).mean() > 0.3  # another seed, other masks
    assert len(np.unique(dmdask.open_store(a).seed.values)) == 100


@pytest.mark.parametrize("alpha", [0.1, 0.5, 0.77])
def test_fixed_sampling_has_exact_size_and_uniform_inclusion(alpha):
    n_train = 101
    m = sample_masks(3, np.arange(4000), n_train, alpha, "fixed")
    assert (m.sum(1) == subset_size(alpha, n_train)).all()
    # each example included with probability k/n: a 5-sigma band over 4000 models
    p = subset_size(alpha, n_train) / n_train
    sd = np.sqrt(p * (1 - p) / 4000)
    assert np.abs(m.mean(0) - p).max() < 5 * sd


def test_bernoulli_sampling_is_independent_inclusion():
    m = sample_masks(3, np.arange(4000), 50, 0.3, "bernoulli")
    assert np.abs(m.mean() - 0.3) < 5 * np.sqrt(0.21 / m.size)
    assert m.sum(1).std() > 1.0  # sizes vary, unlike fixed
    c = np.corrcoef(m[:, :10].T)[np.triu_indices(10, 1)]
    assert np.abs(c).max() < 5 / np.sqrt(4000)


@pytest.mark.parametrize("alpha,bound", [(0.5, 1.1), (0.1, 0.75)])
def test_masks_compress_to_about_one_bit(tmp_path, alpha, bound):
    p = dmdask.create_jobless_store(tmp_path / "s", 1000, 3, block_size=256)
    dmdask.add_models(p, "random", n=2048, alpha=alpha)
    bits = dmdask.store_info(p)["mask_bits_per_entry"]
    assert bits <= bound
    codecs = json.load(open(os.path.join(p, "mask", "zarr.json")))["codecs"]
    blosc = [c for c in codecs if c["name"] == "blosc"][0]["configuration"]
    assert blosc["cname"] == "zstd" and blosc["shuffle"] == "bitshuffle"


# --------------------------------------------------------------------------- write protocol


@pytest.fixture
def store10(tmp_path):
    p = dmdask.create_jobless_store(tmp_path / "s", 20, 3, block_size=4, alpha=0.5)
    dmdask.add_models(p, "random", n=10)  # blocks: 0..3, 4..7, 8..9
    dmdask.write_block(p, 0, np.full((4, 3), 1.5, np.float32))
    return p


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda p: dmdask.write_block(p, 1, np.zeros((4, 3), np.float32), start=5), "misaligned"),
        (lambda p: dmdask.write_block(p, 1, np.zeros((3, 3), np.float32)), "partial"),
        (lambda p: dmdask.write_block(p, 2, np.zeros((4, 3), np.float32)), "shape"),
        (lambda p: dmdask.write_block(p, 1, np.zeros((4, 2), np.float32)), "shape"),
        (lambda p: dmdask.write_block(p, 1, np.zeros((4, 3), np.float64)), "float64"),
        (lambda p: dmdask.write_block(p, 1, np.full((4, 3), np.nan, np.float32)), "NaN"),
        (lambda p: dmdask.write_block(p, 1, np.array([[np.inf] * 3] * 4, np.float32)), "inf"),
        (lambda p: dmdask.write_block(p, 3, np.zeros((4, 3), np.float32)), "does not exist"),
        (lambda p: dmdask.write_block(p, 1, np.zeros((4, 3), np.float32),
                                      job={"path": "x:Y", "params": {}}), "job"),
    ],
)
def test_bad_writes_are_refused_and_harmless(store10, call, message):
    before = _snapshot(store10)
    with pytest.raises(WriteRefused) as e:
        call(store10)
    assert message in str(e.value) and str(store10) in str(e.value)
    assert "block" in str(e.value)
    _assert_same(before, _snapshot(store10))


def test_nan_refusal_names_the_models(store10):
    bad = np.zeros((4, 3), np.float32)
    bad[2, 1] = np.nan
    with pytest.raises(WriteRefused, match=r"block 1: 1 margins are NaN or inf \(models 6\)"):
        dmdask.write_block(store10, 1, bad)


def _write_blocks(path, blocks, n_target):
    import dmdask as d

    for b in blocks:
        s, e = block_range(read_meta(path), b)
        d.write_block(path, b, np.full((e - s, n_target), float(b), np.float32))


def test_concurrent_processes_writing_separate_blocks(tmp_path):
    p = str(tmp_path / "s")
    dmdask.create_jobless_store(p, 50, 5, block_size=3, alpha=0.5)
    dmdask.add_models(p, "random", n=100)  # 34 blocks, the last partial
    nb = 34
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_write_blocks, args=(p, list(range(i, nb, 4)), 5))
             for i in range(4)]
    for pr in procs:
        pr.start()
    for pr in procs:
        pr.join(60)
        assert pr.exitcode == 0
    ds = dmdask.open_store(p)
    assert ds.completed.values.all()
    np.testing.assert_array_equal(ds.margin.values[:, 0], np.arange(100) // 3)
    assert zarr.open_group(p).attrs["dmdask"]["n_models"] == 100


def test_killed_add_models_is_invisible_and_overwritten(tmp_path):
    p = dmdask.create_jobless_store(tmp_path / "s", 10, 2, block_size=4, alpha=0.5)
    dmdask.add_models(p, "random", n=6)
    g = zarr.open_group(p, mode="r+")
    for name in ("mask", "kind", "margin", "completed", "seed", "alpha", "replicate_of"):
        g[name].resize((9,) + g[name].shape[1:])  # an add that died before committing
    g["kind"][6:9] = 1
    assert dmdask.open_store(p).sizes["model"] == 6
    dmdask.add_models(p, "heldout", n=5)
    ds = dmdask.open_store(p)
    assert list(ds.kind.values) == ["random"] * 6 + ["heldout"] * 5


# --------------------------------------------------------------------------- refusals


def test_schema_version_and_foreign_groups_are_refused(tmp_path):
    p = dmdask.create_jobless_store(tmp_path / "s", 5, 2)
    g = zarr.open_group(p, mode="r+")
    meta = dict(g.attrs["dmdask"])
    meta["schema_version"] = 99
    g.attrs["dmdask"] = meta
    with pytest.raises(StoreError, match="schema version 99"):
        dmdask.open_store(p)
    zarr.open_group(str(tmp_path / "plain"), mode="w")
    with pytest.raises(StoreError, match="not a dmdask run store"):
        dmdask.open_store(tmp_path / "plain")
    with pytest.raises(StoreError, match="no such run store"):
        dmdask.open_store(tmp_path / "missing")


def test_add_models_validates_its_input(tmp_path):
    p = dmdask.create_jobless_store(tmp_path / "s", 5, 2, alpha=0.5)
    with pytest.raises(InputError, match="shape"):
        dmdask.add_models(p, "custom", masks=np.zeros((2, 4), bool))
    with pytest.raises(InputError, match="0/1"):
        dmdask.add_models(p, "custom", masks=np.full((2, 5), 2))
    with pytest.raises(InputError, match="replicate_of"):
        dmdask.add_models(p, "replicate", replicate_of=[0])
    with pytest.raises(InputError, match="kind"):
        dmdask.add_models(p, "bogus", n=1)
    with pytest.raises(InputError, match="alpha"):
        dmdask.add_models(p, "random", n=1, alpha=1.5)
    assert read_meta(p)["n_models"] == 0


def test_train_label_overrides_are_stored(tmp_path):
    p = dmdask.create_jobless_store(tmp_path / "s", 6, 2, block_size=2, alpha=0.5)
    dmdask.add_models(p, "random", n=3)
    flipped = np.array([[1, 0, 1, 0, 1, 0]] * 2)
    dmdask.add_models(p, "flip", replicate_of=[0, 1], train_labels=flipped)
    g = zarr.open_group(p)
    np.testing.assert_array_equal(g["train_label_override"][:3], -1)
    np.testing.assert_array_equal(g["train_label_override"][3:], flipped)


def test_jobs_are_checked_before_construction(tmp_path):
    marker = tmp_path / "boom"
    for bad, msg in [("os:system", "not a job class"), ("subprocess:Popen", "not a job"),
                     ("testjobs:Boom", "not a job"), ("nosuchmodule:X", "cannot import"),
                     ("os.path", "module:Class"), ("testjobs:Missing", "no attribute")]:
        with pytest.raises(JobError, match=msg):
            dmdask.create_store(tmp_path / "s", bad, 4, params={"path": str(marker)})
    assert not marker.exists() and not (tmp_path / "s").exists()
    with pytest.raises(JobError, match="do not fit its constructor"):
        dmdask.create_store(tmp_path / "s", "testjobs:RidgeDigits", 4, params={"nope": 1})


def test_create_store_is_idempotent_and_refuses_another_job(tmp_path):
    p = dmdask.create_store(tmp_path / "s", "testjobs:RidgeDigits", 8, 0.5, params={"n_train": 30})
    before = _snapshot(p)
    assert dmdask.create_store(p, "testjobs:RidgeDigits", 8, 0.5, params={"n_train": 30}) == p
    _assert_same(before, _snapshot(p))
    with pytest.raises(StoreError, match="already exists"):
        dmdask.create_store(p, "testjobs:RidgeDigits", 8, 0.5, params={"n_train": 31})
    _assert_same(before, _snapshot(p))


def test_missing_margins_are_recorded_only_when_allowed(store10):
    m = np.zeros((4, 3), np.float32)
    m[1, 2] = np.nan
    with pytest.raises(WriteRefused, match="NaN"):
        dmdask.write_block(store10, 1, m)
    dmdask.write_block(store10, 1, m, allow_missing=True)
    ds = dmdask.open_store(store10)
    assert ds.completed.values[4:8].all() and np.isnan(ds.margin.values[5, 2])
    m[0, 0] = np.inf
    with pytest.raises(WriteRefused, match="inf"):
        dmdask.write_block(store10, 1, m, allow_missing=True)
