"""fit_datamodels(out=PATH): written block by block, lazy, resumable after SIGKILL (bit-identical
to an uninterrupted fit), refusing a rerun with other options (issue 18, item 1)."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr
from killpoints import KILL_AT_WRITE

import dmdask
from dmdask.errors import InputError
from dmdask.fit.datamodels import fit_datamodels
from dmdask.fit.output import FitOutput, open_fit
from dmdask.store.runstore import create_jobless_store, open_store, write_block

N_TRAIN, N_TARGET, B, BLOCK = 30, 10, 64, 3  # 4 target blocks (the last one short)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Targets that share rows (the Gram route) and a planted sparse model."""
    path = str(tmp_path_factory.mktemp("fitres") / "run.zarr")
    create_jobless_store(path, N_TRAIN, N_TARGET, block_size=B, seed=1)
    dmdask.add_models(path, "random", n=6 * B, alpha=0.5)
    ds = open_store(path)
    X = ds.mask.values.astype(np.float64)
    rng = np.random.default_rng(1)
    W = np.zeros((N_TRAIN, N_TARGET))
    W[:4] = rng.standard_normal((4, N_TARGET))
    Y = (X @ W + 0.3 * rng.standard_normal((X.shape[0], N_TARGET)) + 1.0).astype(np.float32)
    for b in range(X.shape[0] // B):
        write_block(path, b, Y[b * B:(b + 1) * B])
    return path


def _same(a: xr.Dataset, b: xr.Dataset) -> None:
    """Bit-identical variables and coordinates; attributes equal but for the run time."""
    assert sorted(a.variables) == sorted(b.variables)
    for k in a.variables:
        x, y = a[k].values, b[k].values
        assert x.dtype == y.dtype and x.shape == y.shape, k
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), k
    strip = ("seconds", "phase_seconds")
    assert {k: v for k, v in a.attrs.items() if k not in strip} == \
        {k: v for k, v in b.attrs.items() if k not in strip}


def test_out_is_lazy_and_equals_in_memory_fit(store, tmp_path):
    out = tmp_path / "dm.zarr"
    kw = dict(selection="holdout", tol=1e-9)
    mem = fit_datamodels(store, **kw)
    dm = fit_datamodels(store, out=out, block_targets=BLOCK, **kw)
    # lazy: dask arrays, one chunk per block of targets
    assert dm["weight"].chunks[0] == (3, 3, 3, 1)
    assert type(dm["weight"].data).__module__.startswith("dask")
    # the same fit: the same selection and λ grid; weights to the solver's tolerance (the
    # blocks' XᵀY columns come from GEMMs of other shapes: float64 rounding differs)
    np.testing.assert_array_equal(dm["target"].values, mem["target"].values)
    np.testing.assert_allclose(dm["lambdas"].values, mem["lambdas"].values, rtol=1e-9)
    np.testing.assert_array_equal(dm["lam"].values, mem["lam"].values)
    scale = np.abs(mem["weight"].values).max()
    np.testing.assert_allclose(dm["weight"].values, mem["weight"].values, rtol=0,
                               atol=1e-4 * scale)
    np.testing.assert_allclose(dm["bias"].values, mem["bias"].values, rtol=1e-4)
    np.testing.assert_array_equal(dm["n_models"].values, mem["n_models"].values)
    for k in ("alpha", "selection", "n_models", "model_sha1", "store_fingerprint"):
        assert dm.attrs[k] == mem.attrs[k]
    # a rerun of the same fit finds every block written: it returns the same output
    _same(fit_datamodels(store, out=out, block_targets=BLOCK, **kw), dm)


def test_rerun_with_other_options_is_refused_naming_them(store, tmp_path):
    out = tmp_path / "dm.zarr"
    fit_datamodels(store, out=out, block_targets=BLOCK, selection="holdout", n_lambdas=8)
    before = sorted(os.listdir(out))
    with pytest.raises(InputError, match=r"n_lambdas: 8 in the output, 12 now"):
        fit_datamodels(store, out=out, block_targets=BLOCK, selection="holdout", n_lambdas=12)
    with pytest.raises(InputError, match=r"block_targets: 3 in the output, 4 now"):
        fit_datamodels(store, out=out, block_targets=4, selection="holdout", n_lambdas=8)
    with pytest.raises(InputError, match=r"targets_sha1"):
        fit_datamodels(store, out=out, block_targets=BLOCK, selection="holdout", n_lambdas=8,
                       targets=[0, 1, 2])
    assert sorted(os.listdir(out)) == before  # nothing written


_KILLED_FIT = KILL_AT_WRITE.replace("KILL_AT", "int(sys.argv[3])") + """
import json
keys = []
_counted = zarr.storage.LocalStore.set
async def recording_set(self, key, value):
    keys.append(key)
    return await _counted(self, key, value)
zarr.storage.LocalStore.set = recording_set
from dmdask.fit.datamodels import fit_datamodels
fit_datamodels(sys.argv[1], out=sys.argv[2], block_targets=3, selection="holdout",
               n_lambdas=10)
print("KEYS", json.dumps(keys))
"""


def _run(store, out, kill_at):
    return subprocess.run([sys.executable, "-c", _KILLED_FIT, store, str(out), str(kill_at)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


def test_killed_fit_resumes_bit_identical(store, tmp_path):
    whole = tmp_path / "whole.zarr"
    r = _run(store, whole, 0)  # kill at write 0: never
    assert r.returncode == 0, r.stderr
    keys = json.loads(r.stdout.split("KEYS")[-1])
    ref = open_fit(whole).load()
    mark = {b: keys.index(f"block_done/c/{b}") + 1 for b in range(4)}  # writes count from 1
    # during creation; just before block 1's commit mark (its data written); just
    # before the last mark; at the write of the finished attributes
    points = [2, mark[1], mark[3], len(keys) - 1]
    assert keys[-2:] == ["zarr.json", "zarr.json"]  # finishing: attributes, then consolidated
    committed = []
    for k in points:
        out = tmp_path / f"killed{k}.zarr"
        r = _run(store, out, k)
        assert r.returncode == -signal.SIGKILL, (k, r.stderr[-2000:])
        if os.path.exists(out):
            with pytest.raises(InputError):  # an unfinished output is not read as finished
                open_fit(out)
            committed.append(int(FitOutput(str(out)).done().sum()))
        # resume in this process: only the blocks not committed are computed again
        res = fit_datamodels(store, out=out, block_targets=3, selection="holdout",
                             n_lambdas=10)
        _same(res.load(), ref)
    # what each kill left committed: the resumes computed only the rest
    assert committed == [1, 3, 4], committed
