"""evaluate / compare / calibration read a lazily opened score matrix by blocks of targets
(issue 18, item 1): under a dask callback that fails on any task result of the full
[targets, train] size, a blockwise datamodels Zarr and a TRAK memmap evaluate to the same
result as the whole matrix in memory, and the check catches a deliberate ``.values``."""

from __future__ import annotations

import dask
import numpy as np
import pytest
import xarray as xr
from dask.callbacks import Callback
from sklearn.metrics import roc_auc_score

import dmdask
from dmdask.analysis.compare import compare
from dmdask.analysis.evaluate import evaluate, evaluation_runs
from dmdask.analysis.scores import load_scores
from dmdask.fit.datamodels import fit_datamodels
from dmdask.store.runstore import create_jobless_store, open_store, write_block

N_TRAIN, N_TARGET, B = 24, 10, 64
FIT_BLOCK, EVAL_BLOCK = 3, 4  # fit chunks (3, 3, 3, 1); evaluation blocks of 4 targets


class FullSizeGuard(Callback):
    """Records every dask task whose result (or a part of a tuple/list result) is an array of
    shape [T, d] or [d, T]; on leaving a block that raised nothing, fails if there was one."""

    def __init__(self, n_target: int, n_train: int):
        super().__init__()
        self.shapes = {(n_target, n_train), (n_train, n_target)}
        self.seen: list[tuple] = []

    def _posttask(self, key, result, dsk, state, worker_id):
        stack = [result]
        while stack:
            r = stack.pop()
            if isinstance(r, (tuple, list)):
                stack.extend(r)
            elif tuple(getattr(r, "shape", ())) in self.shapes:
                self.seen.append((key, tuple(r.shape)))

    def __exit__(self, exc_type, *args):
        super().__exit__(exc_type, *args)
        if exc_type is None and self.seen:
            raise AssertionError(f"full-size arrays were made: {self.seen[:3]}")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A planted additive store with held-out models and replicates, and its blockwise fit."""
    root = tmp_path_factory.mktemp("lazyev")
    path = str(root / "run.zarr")
    create_jobless_store(path, N_TRAIN, N_TARGET, block_size=B, seed=3, alpha=0.5)
    dmdask.add_models(path, "random", n=5 * B)
    held = dmdask.add_models(path, "heldout", n=40)
    dmdask.add_models(path, "replicate", replicate_of=np.repeat(held, 1))
    ds = open_store(path)
    X = ds.mask.values.astype(np.float64)
    rng = np.random.default_rng(3)
    W = np.zeros((N_TRAIN, N_TARGET))
    W[:6] = rng.standard_normal((6, N_TARGET))
    Y = (X @ W + 0.3 * rng.standard_normal((X.shape[0], N_TARGET)) + 1.0).astype(np.float32)
    for b in range(-(-X.shape[0] // B)):
        write_block(path, b, Y[b * B:(b + 1) * B])
    out = str(root / "dm.zarr")
    fit_datamodels(path, out=out, block_targets=FIT_BLOCK, selection="holdout", tol=1e-9)
    return path, out


def _assert_same(a: xr.Dataset, b: xr.Dataset) -> None:
    assert sorted(a.data_vars) == sorted(b.data_vars)
    for k in a.data_vars:
        np.testing.assert_allclose(a[k].values, b[k].values, rtol=1e-10, atol=1e-12,
                                   err_msg=k)
    for k, v in a.attrs.items():
        if isinstance(v, float):
            np.testing.assert_allclose(v, b.attrs[k], rtol=1e-10, atol=1e-12, err_msg=k)
        elif k != "scores_source":
            assert v == b.attrs[k], k


def test_lazy_zarr_evaluates_by_blocks_equal_to_in_memory(setup):
    path, out = setup
    ds = open_store(path)
    dm = xr.open_zarr(out, consolidated=False)
    assert isinstance(dm["weight"].data, dask.array.Array)
    # the whole matrix in memory: the path evaluate took before (one block of every target)
    mem = evaluate(ds, dm.load())
    for calibrate in ("auto", True):
        ref = evaluate(ds, dm.load(), calibrate=calibrate)
        with dask.config.set({"dmdask.evaluate.block-targets": EVAL_BLOCK}), \
                FullSizeGuard(N_TARGET, N_TRAIN) as guard:
            lazy = evaluate(ds, xr.open_zarr(out, consolidated=False), calibrate=calibrate)
        assert guard.seen == []
        _assert_same(lazy, ref)
    # an independent reference for the predictions: mask @ weightᵀ + bias on every held-out
    # run, against its margin
    subsets, runs, group = evaluation_runs(ds)
    w, b = dm["weight"].values.astype(np.float64), dm["bias"].values.astype(np.float64)
    g = ds.mask.values[subsets].astype(np.float64) @ w.T + b
    y = ds.margin.values[runs].astype(np.float64)
    np.testing.assert_allclose(mem["mse"].values, ((g[group] - y) ** 2).mean(0), rtol=1e-10)
    # the pooled AUC (kept over every (run, target) pair) against scikit-learn's
    np.testing.assert_allclose(mem.attrs["auc_pooled"],
                               roc_auc_score((y > 0).ravel(), g[group].ravel()), rtol=1e-12)


def test_guard_catches_a_deliberate_values(setup):
    path, out = setup
    ds = open_store(path)
    with pytest.raises(AssertionError, match="full-size arrays"), \
            FullSizeGuard(N_TARGET, N_TRAIN):
        load_scores(xr.open_zarr(out, consolidated=False), ds=ds).values  # noqa: B018
    # and a block as large as every target (the old single read) is caught too
    with pytest.raises(AssertionError, match="full-size arrays"), \
            dask.config.set({"dmdask.evaluate.block-targets": N_TARGET}), \
            FullSizeGuard(N_TARGET, N_TRAIN):
        evaluate(ds, xr.open_zarr(out, consolidated=False))


def test_trak_memmap_and_compare_read_by_blocks(setup, tmp_path):
    path, out = setup
    ds = open_store(path)
    dm = xr.open_zarr(out, consolidated=False).load()
    # TRAK's layout [n_train, n_targets] float32, as TRAK writes it (open_memmap)
    mm = tmp_path / "scores" / "exp.mmap"
    mm.parent.mkdir()
    arr = np.lib.format.open_memmap(mm, mode="w+", dtype=np.float32,
                                    shape=(N_TRAIN, N_TARGET))
    arr[:] = dm["weight"].values.T
    arr.flush()
    del arr
    ref = evaluate(ds, str(mm))  # one block of every target
    with dask.config.set({"dmdask.evaluate.block-targets": EVAL_BLOCK}):
        sc = load_scores(str(mm), ds=ds)
        assert isinstance(sc.data, dask.array.Array)
        assert sc.data.chunks[0] == (4, 4, 2)
        with FullSizeGuard(N_TARGET, N_TRAIN) as guard:
            lazy = evaluate(ds, str(mm))
            cmp = compare(ds, [("lasso", int(dm.attrs["n_models"]), "margin")], datamodels=out)
        assert guard.seen == []
    _assert_same(lazy, ref)
    assert lazy.attrs["calibrated"] == 1  # no bias: calibrated block by block
    # compare's lasso row reused the lazy datamodels: equal to evaluating them in memory
    ev = evaluate(ds, dm, calibration_models=int(dm.attrs["n_models"]))
    np.testing.assert_allclose(cmp["spearman_target"].values[0], ev["spearman"].values,
                               rtol=1e-10)
    np.testing.assert_allclose(cmp["mse_target"].values[0], ev["mse"].values, rtol=1e-10)
