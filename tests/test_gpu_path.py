"""The CuPy path end to end (issue 6 §2): statistics pass, both solvers, evaluation on
CuPy-backed dask arrays, selected by ``dmdask.array.backend = "cupy"``, with the chunk-type
guard (:func:`dmdask.backend.expect_chunks`) proving that no NumPy chunk comes out of an
array computation; results agree with the CPU path. Also: the Gram of 0/1 masks is exact
with fp16/bf16 inputs (fp32 accumulation, or small enough row blocks).

Skipped without CuPy and a CUDA device (``gpu`` marker, ``tests/conftest.py``). Run on a GPU
with ``python -m pytest -m gpu tests/test_gpu_path.py`` (see ``benchmarks/gpu/README.md``).
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest

import dmdask
from dmdask.analysis.evaluate import evaluate
from dmdask.backend import ChunkTypeError, expect_chunks, is_cupy, to_numpy
from dmdask.fit.solve.base import PathOptions, Split
from dmdask.fit.stats import compute_stats

pytestmark = pytest.mark.gpu

GPU = {"dmdask.array.backend": "cupy"}
FIT = dict(n_lambdas=10, tol=1e-8, selection="holdout")  # tol < 1e-7: float64 GEMMs on both


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A jobless store (Bernoulli masks, so no fixed-size gauge direction): 600 random
    models, 40 held-out models with one replicate each, 40 training examples, 10 targets
    with a planted sparse linear signal plus noise."""
    p = tmp_path_factory.mktemp("gpu") / "s.zarr"
    rng = np.random.default_rng(6)
    N, T, block = 40, 10, 128
    dmdask.create_jobless_store(p, N, T, block_size=block, alpha=0.5, seed=6,
                                sampling="bernoulli")
    dmdask.add_models(p, "random", n=600)
    h = dmdask.add_models(p, "heldout", n=40)
    dmdask.add_models(p, "replicate", replicate_of=h)
    X = dmdask.open_store(p)["mask"].values.astype(np.float64)
    W = rng.normal(size=(T, N)) * (rng.random((T, N)) < 0.25)
    Y = (X @ W.T + 1 + 0.5 * rng.normal(size=(X.shape[0], T))).astype(np.float32)
    for blk in range(-(-X.shape[0] // block)):
        dmdask.write_block(p, blk, Y[blk * block: (blk + 1) * block])
    return str(p)


def test_guard_trips_on_a_numpy_chunk_on_the_gpu():
    """Positive control on the real device type: a ``cupy.asnumpy`` inside the graph fails."""
    import cupy

    x = da.ones((256, 64), chunks=(64, 64)).map_blocks(cupy.asarray,
                                                      meta=cupy.empty((0, 0))).rechunk((128, 64))
    with expect_chunks("cupy") as g:
        r = (x * 2).sum(axis=0).compute()
    assert is_cupy(r) and g.n_tasks > 0
    with pytest.raises(ChunkTypeError, match="fallback"), expect_chunks("cupy"):
        x.map_blocks(cupy.asnumpy, meta=np.empty((0, 0))).sum(axis=0).compute()
    with pytest.raises(ChunkTypeError, match="never reached"), expect_chunks("cupy"):
        da.ones((256, 64), chunks=(64, 64)).sum(axis=0).compute()


def test_statistics_pass_on_cupy(store):
    ds = dmdask.open_store(store)
    X, Y = ds.mask.data, ds.margin.data
    n = X.shape[0]
    bounds = [0, 100, n]
    cpu = compute_stats(X, Y, bounds, row_block_size=128)
    with dask.config.set(GPU), expect_chunks("cupy") as g:
        gpu = compute_stats(X, Y, bounds, row_block_size=128)
    assert g.n_tasks > 0
    for c, s in zip(cpu, gpu, strict=True):
        for f in ("G", "s", "C", "sy", "syy"):
            assert is_cupy(getattr(s, f)), f
        assert s.n == c.n
        np.testing.assert_array_equal(to_numpy(s.G), c.G)  # integer counts: exact
        np.testing.assert_array_equal(to_numpy(s.s), c.s)
        np.testing.assert_allclose(to_numpy(s.C), c.C, rtol=1e-10, atol=1e-8)
        np.testing.assert_allclose(to_numpy(s.syy), c.syy, rtol=1e-12)


def test_statistics_pass_on_cupy_with_a_distributed_client(store):
    """The worker-plugin half of the guard, on threads of one process sharing the GPU."""
    from distributed import Client, LocalCluster

    ds = dmdask.open_store(store)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=":0") as cluster, Client(cluster) as client, \
            dask.config.set(GPU), expect_chunks("cupy", client=client) as g:
        (st,) = compute_stats(ds.mask.data, ds.margin.data, row_block_size=128, client=client)
    assert g.n_tasks > 0 and is_cupy(st.G)


@pytest.mark.parametrize("solver", ["gram", "saga"])
def test_fit_datamodels_on_cupy_matches_cpu(store, solver):
    """The Gram solver (in several target blocks, so through dask) and streaming SAGA on the
    CuPy backend give the CPU's weights (same λ chosen, weights to 1e-4 relative)."""
    ds = dmdask.open_store(store)
    with dask.config.set({"dmdask.solve.target-block-size": 4}):
        cpu = dmdask.fit_datamodels(ds, solver=solver, **FIT)
        with dask.config.set(GPU), expect_chunks("cupy") as g:
            gpu = dmdask.fit_datamodels(ds, solver=solver, **FIT)
    assert g.n_tasks > 0
    assert gpu.attrs["solvers_used"].split() == [solver]
    np.testing.assert_allclose(gpu["lam"], cpu["lam"], rtol=1e-6)
    assert rel(gpu["weight"], cpu["weight"]) < 1e-4
    np.testing.assert_allclose(gpu["bias"], cpu["bias"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gpu["val_mse"], cpu["val_mse"], rtol=1e-4)


def test_gram_solver_from_cupy_statistics_stays_on_the_device(store):
    """solve_from_stats on CuPy statistics: one block in-process (no dask), the arrays it
    works on are CuPy (checked through the weights' agreement and the block's namespace)."""
    from dmdask.fit.solve.gram import solve_from_stats
    from dmdask.fit.stats import group_bounds_for

    ds = dmdask.open_store(store)
    X, Y = ds.mask.data[:600], ds.margin.data[:600]
    split = Split("holdout", val_fraction=0.1)
    bounds = group_bounds_for(600, split)
    opts = PathOptions(n_lambdas=8, tol=1e-8)
    cpu = solve_from_stats(compute_stats(X, Y, bounds), split, opts)
    with dask.config.set(GPU), expect_chunks("cupy"):
        groups = compute_stats(X, Y, bounds)
    assert all(is_cupy(gr.G) for gr in groups)
    gpu = solve_from_stats(groups, split, opts)
    assert isinstance(gpu.weight, np.ndarray)  # results come back to the host
    assert rel(gpu.weight, cpu.weight) < 1e-4


def test_evaluate_on_cupy_matches_cpu(store):
    ds = dmdask.open_store(store)
    dm = dmdask.fit_datamodels(ds, solver="gram", n_lambdas=8, selection="holdout")
    for calibrate in ("auto", True):
        cpu = evaluate(ds, dm, calibrate=calibrate)
        with dask.config.set(GPU), expect_chunks("cupy") as g:
            gpu = evaluate(ds, dm, calibrate=calibrate)
        assert g.n_tasks > 0
        for k in ("mse_mean", "r2_mean", "lds_mean", "pearson_mean", "auc_mean", "opt_mean"):
            assert gpu.attrs[k] == pytest.approx(cpu.attrs[k], rel=1e-9, abs=1e-12), k
        np.testing.assert_allclose(gpu["calib_slope"], cpu["calib_slope"], rtol=1e-9)


# ------------------------------------------------------------------ half-precision Gram
def _masks(n, d, seed=0):
    return (np.random.default_rng(seed).random((n, d)) < 0.5)


def test_fp16_gram_of_masks_is_exact_in_row_blocks_cupy():
    """CuPy fp16 GEMM, fp16 output: every partial sum is an integer ≤ rows ≤ 2048, which fp16
    holds exactly (11 significant bits), whatever the accumulation precision."""
    import cupy

    X = _masks(8192, 300)
    exact = X.astype(np.int64).T @ X.astype(np.int64)
    Xd = cupy.asarray(X)
    G = cupy.zeros((300, 300), cupy.float32)
    for a in range(0, X.shape[0], 2048):
        xb = Xd[a:a + 2048].astype(cupy.float16)
        G += (xb.T @ xb).astype(cupy.float32)
    np.testing.assert_array_equal(cupy.asnumpy(G).astype(np.int64), exact)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_gram_of_masks_is_exact_torch(dtype):
    """torch on the GPU, 0/1 inputs in bf16/fp16 (exact: 0 and 1 are representable).

    * half output: exact for row blocks ≤ 256 (bf16, 8 significant bits) / ≤ 2048 (fp16);
      a bf16 output over 4096 rows is *not* exact (counts ~2048 round): the block limit
      is real;
    * fp32 output with fp32 accumulation (``torch.mm(..., out_dtype=torch.float32)``): exact
      for any block of < 2^24 rows, here 8192."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    dt = getattr(torch, dtype)
    X = _masks(8192, 256, seed=1)
    exact = torch.as_tensor(X.astype(np.int64).T @ X.astype(np.int64))
    Xd = torch.as_tensor(X, device="cuda").to(dt)
    block = 256 if dtype == "bfloat16" else 2048
    G = torch.zeros((256, 256), dtype=torch.float32, device="cuda")
    for a in range(0, X.shape[0], block):
        xb = Xd[a:a + block]
        G += (xb.T @ xb).float()
    assert torch.equal(G.cpu().long(), exact)
    if dtype == "bfloat16":
        xb = Xd[:4096]
        assert not torch.equal((xb.T @ xb).float().cpu().long(),
                               torch.as_tensor(X[:4096].astype(np.int64).T
                                               @ X[:4096].astype(np.int64)))
    prev = (torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction,
            torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction)
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    try:
        try:
            G32 = torch.mm(Xd.T.contiguous(), Xd, out_dtype=torch.float32)
        except (TypeError, RuntimeError) as e:
            pytest.skip(f"torch.mm(out_dtype=float32) unavailable for {dtype}: {e}")
        assert G32.dtype == torch.float32
        assert torch.equal(G32.cpu().long(), exact)
    finally:
        (torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction,
         torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction) = prev
