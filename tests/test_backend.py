"""The array backend and its chunk-type guard (``dmdask.backend.expect_chunks``), on the CPU.

The guard is what proves "no code path silently falls back to NumPy" on the GPU
(``tests/test_gpu_path.py``). Here it is exercised honestly without a GPU: a NumPy *subclass*
(``numpy.ma.MaskedArray``) stands in for the device array type, so a plain-NumPy chunk is the
"wrong" type, exactly as a NumPy chunk is on the CuPy path.
"""

from __future__ import annotations

import os
import subprocess
import sys

import dask
import dask.array as da
import numpy as np
import pytest

import dmdask
from dmdask.backend import (
    ChunkTypeError,
    backend_name,
    check_chunks,
    dask_to_backend,
    expect_chunks,
    get_namespace,
    to_numpy,
)
from dmdask.errors import DmdaskError
from dmdask.fit.stats import compute_stats

DEV = np.ma.MaskedArray  # the stand-in "device" array type
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def to_dev(x):
    return x.map_blocks(np.ma.asarray, meta=np.ma.empty((0,) * x.ndim, x.dtype))


def test_backend_setting_and_namespace():
    assert backend_name() == "numpy"
    with dask.config.set({"dmdask.array.backend": "tpu"}), pytest.raises(DmdaskError):
        backend_name()
    x = da.ones((4, 3), chunks=2)
    assert dask_to_backend(x) is x
    assert get_namespace(np.ones(2)) is np and isinstance(to_numpy([1, 2]), np.ndarray)


def test_guard_passes_when_chunks_reach_the_expected_type():
    x = da.ones((100, 40), chunks=(25, 40))
    with expect_chunks(DEV) as g:
        r = (to_dev(x) * 2).sum(axis=0).compute()
    assert isinstance(r, DEV) and g.n_tasks > 0


def test_guard_names_the_key_of_a_fallback():
    """A task that turns a device chunk into a plain ndarray fails at once, naming itself."""
    x = to_dev(da.ones((100, 40), chunks=(25, 40))).rechunk((50, 40))
    y = x.map_blocks(np.asarray, meta=np.empty((0, 0)))
    with pytest.raises(ChunkTypeError, match="fallback") as e, expect_chunks(DEV):
        y.sum(axis=0).compute()
    msg = str(e.value)
    assert "numpy.ndarray" in msg and "numpy.ma.MaskedArray" in msg
    assert "rechunk-merge" in msg  # the key of the offending (fused) task


def test_guard_names_the_key_of_a_computation_never_moved():
    x = da.ones((100, 40), chunks=(25, 40))
    with pytest.raises(ChunkTypeError, match="never reached") as e, expect_chunks(DEV):
        (x * 2).sum(axis=0).compute()
    assert "'sum-" in str(e.value) or "('sum-" in str(e.value)


def test_guard_ignores_reads_tiny_values_metadata_and_allowed_names(tmp_path):
    x = da.ones((100, 40), chunks=(25, 40))
    da.to_zarr(x, str(tmp_path / "a.zarr"))
    z = da.from_zarr(str(tmp_path / "a.zarr"))
    with expect_chunks(DEV):
        z[::2].compute()  # host I/O: reading and slicing only
        float(to_dev(z).sum().compute())  # per-chunk partial sums are 1-element arrays
        da.from_array(np.array(["a", "b"] * 50), chunks=10).compute()  # strings: metadata
    with expect_chunks(DEV, allow=("sum",)):
        (x * 2).sum(axis=0).compute()


def test_guard_looks_inside_result_objects(tiny_store):
    """The statistics pass returns SufficientStats objects: their fields are checked."""
    ds = dmdask.open_store(tiny_store)
    with pytest.raises(ChunkTypeError, match="_accumulate"), expect_chunks(DEV):
        compute_stats(ds.mask.data, ds.margin.data, row_block_size=64)


def test_result_objects_holding_a_module_are_not_arrays():
    """Solver objects hold their array module (``xp``); numpy itself has .shape/.dtype/.ndim
    attributes but is no array."""
    class Holder:
        def __init__(self):
            self.xp = np
            self.Q = np.ma.asarray(np.ones((3, 3)))

    check_chunks(Holder(), DEV)
    with pytest.raises(ChunkTypeError):
        check_chunks((Holder(), np.ones(4)), DEV)


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    p = tmp_path_factory.mktemp("backend") / "s.zarr"
    rng = np.random.default_rng(0)
    N, T, block = 12, 3, 64
    dmdask.create_jobless_store(p, N, T, block_size=block, alpha=0.5, seed=0)
    dmdask.add_models(p, "random", n=300)
    h = dmdask.add_models(p, "heldout", n=30)
    dmdask.add_models(p, "replicate", replicate_of=h)
    X = dmdask.open_store(p)["mask"].values.astype(np.float64)
    W = rng.normal(size=(T, N))
    Y = (X @ W.T + 1 + 0.5 * rng.normal(size=(X.shape[0], T))).astype(np.float32)
    for blk in range(-(-X.shape[0] // block)):
        dmdask.write_block(p, blk, Y[blk * block: (blk + 1) * block])
    return str(p)


def test_expecting_numpy_passes_on_the_cpu_pipeline(tiny_store):
    """On the NumPy backend the whole pipeline is NumPy: statistics pass, both solvers (the
    Gram solver through dask in several target blocks), evaluation with calibration."""
    from dmdask.analysis.evaluate import evaluate

    ds = dmdask.open_store(tiny_store)
    n = ds.sizes["model"]
    with expect_chunks("numpy") as g:
        st = compute_stats(ds.mask.data, ds.margin.data, [0, 30, n], row_block_size=64)
        with dask.config.set({"dmdask.solve.target-block-size": 2}):
            dm = dmdask.fit_datamodels(ds, n_lambdas=6, solver="gram", selection="holdout")
        dmdask.fit_datamodels(ds, n_lambdas=6, solver="saga")
        ev = evaluate(ds, dm, calibrate=True)
    assert g.n_tasks > 100 and len(st) == 2 and ev.attrs["calibrated"] == 1
    check_chunks(st[0], "numpy", what="statistics")
    with pytest.raises(ChunkTypeError, match="statistics holds numpy.ndarray"):
        check_chunks(st[0], DEV, what="statistics")


def test_guard_on_a_distributed_client():
    from distributed import Client, LocalCluster

    x = da.ones((100, 40), chunks=(25, 40))
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        with expect_chunks(DEV, client=client) as g:
            (to_dev(x) * 2).sum(axis=0).compute()
        assert g.n_tasks > 0
        with pytest.raises(ChunkTypeError, match="sum"), expect_chunks(DEV):  # default client
            (x * 2).sum(axis=0).compute()
        dev = to_dev(x).rechunk((50, 40))
        with pytest.raises(ChunkTypeError, match="fallback"), expect_chunks(DEV):
            dev.map_blocks(np.asarray, meta=np.empty((0, 0))).sum(axis=0).compute()


def test_bench_fit_gpu_smoke_runs_on_the_cpu():
    """``benchmarks/bench_fit_gpu.py --smoke``: the whole benchmark pipeline at a tiny shape on
    the NumPy backend (statistics pass, Gram path, selection, refit, SAGA, CPU reference)."""
    r = subprocess.run([sys.executable, "benchmarks/bench_fit_gpu.py", "--smoke"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    out = r.stdout
    for stage in ("statistics pass", "Gram path", "SAGA", "TFLOP/s"):
        assert stage in out, out
    assert "not recorded" in out  # results are recorded only on a GPU
