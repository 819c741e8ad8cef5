"""The streaming solver is out of core: its peak memory does not grow with models × targets.

Two run stores on disk with the same targets and 4× the models; each solve runs in a fresh
process (peak RSS of that process alone, reset just before the solve where Linux allows)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import dmdask
from dmdask.store.runstore import create_jobless_store, write_block

D, T, BLOCK = 32, 512, 1000
ROW_BLOCK = 2048  # dmdask.solve.row-block-size: what bounds a task's rows

_CHILD = textwrap.dedent("""
    import json, sys
    import dask
    import dmdask
    from dmdask.fit.solve.base import PathOptions
    from dmdask.fit.solve.saga import saga_path

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(x.split()[1]) for x in f if x.startswith(key + ":"))

    ds = dmdask.open_store(sys.argv[1])
    X, Y = ds.mask.data, ds.margin.data
    try:  # reset the high-water mark: the peak then belongs to the solve
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    before = status("VmRSS")
    with dask.config.set({"dmdask.solve.row-block-size": int(sys.argv[2])}):
        # two λ and one epoch per solve: the passes, the statistics and the state of a full
        # fit, without waiting for convergence (memory does not depend on it)
        res = saga_path(X, Y, options=PathOptions(n_lambdas=2, max_iter=1))
    assert res.weight.shape == (Y.shape[1], X.shape[1])
    print(json.dumps({"growth_kb": status("VmHWM") - before}))
""")


def _store(path, n, seed):
    create_jobless_store(path, D, T, block_size=BLOCK, seed=seed)
    dmdask.add_models(path, "random", n=n, alpha=0.5)
    X = dmdask.open_store(path).mask
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(D, T)) * (rng.random((D, T)) < 0.2)
    for blk in range(-(-n // BLOCK)):
        x = X[blk * BLOCK:(blk + 1) * BLOCK].values
        y = x @ W + rng.normal(size=(len(x), T))
        write_block(path, blk, y.astype(np.float32))


def _growth_mb(path) -> float:
    r = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(ROW_BLOCK)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])["growth_kb"] / 1024


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_peak_memory_does_not_grow_with_models_times_targets(tmp_path):
    n = 2500
    small, large = tmp_path / "small.zarr", tmp_path / "large.zarr"
    _store(small, n, seed=0)
    _store(large, 4 * n, seed=1)
    g_small, g_large = _growth_mb(small), _growth_mb(large)
    # one models × targets float64 array of the 3n extra models: what an in-memory solver's
    # peak grows by for each such array it holds (the margins, the row weights, a SAGA
    # table, ...); an out-of-core one stays well under one such array
    nt_mb = 3 * n * T * 8 / 2**20
    assert g_large - g_small < 0.5 * nt_mb, (g_small, g_large, nt_mb)
