"""Nothing committed is ever lost: growth beside and after training, leases, interrupted
creation, SIGKILLed writers, and a job that cannot train failing at its warm-up."""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr
from killpoints import KILL_AT_WRITE

import dmdask
from dmdask.errors import JobError, StoreError, WriteRefused
from dmdask.store import lease
from dmdask.store.lease import StoreBusy
from dmdask.store.runstore import read_meta
from dmdask.store.sampling import model_seeds, sample_masks

RIDGE = "testjobs:RidgeDigits"
SMALL = {"n_train": 40, "n_target": 12}


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    # in-process workers: a real scheduler and real tasks, without paying for processes
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=":0", silence_logs=40) as c, Client(c) as cl:
        yield cl


def _recompute(path):
    """Margins of every model, trained afresh one at a time from the store's masks."""
    from testjobs import RidgeDigits

    ds = dmdask.open_store(path)
    params = {k: v for k, v in (read_meta(path)["job"]["params"] or {}).items()
              if k in ("n_train", "n_target", "l2")}
    job = RidgeDigits(**params)
    return np.concatenate([job.train_block(ds.mask.values[i:i + 1], ds.seed.values[i:i + 1])
                           for i in range(ds.sizes["model"])])


def _trained_seeds(log) -> collections.Counter:
    with open(log) as f:
        return collections.Counter(int(x) for x in f.read().split())


def _python(code: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


# --------------------------------------------------------------------------- item 1: growth


def test_growth_after_training_never_retrains_committed_rows(tmp_path, client):
    log = str(tmp_path / "trained")
    p = dmdask.create_store(tmp_path / "s", RIDGE, 10, 0.5, params={**SMALL, "log": log},
                            block_size=4)  # blocks 0..3, 4..7, 8..9 (partial)
    dmdask.train(p, client=client, progress=False)
    before = dmdask.open_store(p).margin.values.copy()
    new = dmdask.add_models(p, "heldout", n=3)  # rows 10, 11 join block 2; 12 opens block 3
    np.testing.assert_array_equal(new, [10, 11, 12])
    ds = dmdask.open_store(p)
    np.testing.assert_array_equal(ds.completed.values, [True] * 10 + [False] * 3)
    assert np.isnan(ds.margin.values[10:]).all()
    rep = dmdask.train(p, client=client, progress=False)
    assert rep.models == 3
    ds = dmdask.open_store(p)
    assert ds.completed.values.all()
    np.testing.assert_array_equal(ds.margin.values[:10], before)  # bit for bit
    np.testing.assert_array_equal(ds.margin.values, _recompute(p))
    seeds = _trained_seeds(log)
    # the warm-up trains one model per worker; apart from it, every model exactly once
    warm = {int(s) for s in ds.seed.values[[0, 10]]}
    counts = {s: c - (s in warm) for s, c in seeds.items()}
    assert counts == {int(s): 1 for s in ds.seed.values}


_TRAINER = """
import sys
from distributed import Client, LocalCluster
import dmdask
with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0",
                  silence_logs=40) as c, Client(c) as client:
    print("ready", flush=True)
    r = dmdask.train(sys.argv[1], client=client, progress=False)
    print("trained", r.models, flush=True)
"""


def test_growth_beside_a_running_training(tmp_path, client):
    log = str(tmp_path / "trained")
    p = dmdask.create_store(tmp_path / "s", RIDGE, 22, 0.5,
                            params={**SMALL, "log": log, "delay": 0.3}, block_size=4)
    proc = subprocess.Popen([sys.executable, "-c", _TRAINER, p], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        sizes = [1, 2, 3, 1, 3, 2, 1, 1, 2, 3] * 3  # rarely a multiple of the block
        for i, n in enumerate(sizes):
            kind = "heldout" if i % 2 else "random"
            dmdask.add_models(p, kind, n=n)
            time.sleep(0.02)
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
    n = 22 + sum(sizes)
    ds = dmdask.open_store(p)
    assert ds.sizes["model"] == n
    done = ds.completed.values
    assert done[:22].all()  # what was there when the training started
    margins = ds.margin.values
    assert np.isfinite(margins[done]).all() and np.isnan(margins[~done]).all()
    expect = _recompute(p)
    np.testing.assert_array_equal(margins[done], expect[done])
    # the masks are the store's own sampling, untouched by the interleaving
    np.testing.assert_array_equal(ds.seed.values, model_seeds(0, np.arange(n)))
    dmdask.train(p, client=client, progress=False)  # the rest, then nothing is trained twice
    ds = dmdask.open_store(p)
    assert ds.completed.values.all()
    np.testing.assert_array_equal(ds.margin.values, expect)
    seeds = _trained_seeds(log)
    assert set(seeds) == {int(s) for s in ds.seed.values}
    # one warm-up model per training (one worker each), and every model exactly once
    assert sum(seeds.values()) - n == 2, seeds


# --------------------------------------------------------------------------- leases


def test_a_second_training_is_refused_until_the_first_dies(tmp_path, client):
    p = dmdask.create_store(tmp_path / "s", RIDGE, 8, 0.5, params={**SMALL, "delay": 30.0},
                            block_size=4)
    proc = subprocess.Popen([sys.executable, "-c", _TRAINER, p], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        deadline = time.time() + 60
        while lease.read_lease(p, "train") is None and time.time() < deadline:
            time.sleep(0.05)
        with pytest.raises(StoreBusy, match=rf"another training is running: training \(pid "
                                            rf"{proc.pid} on {socket.gethostname()}"):
            dmdask.train(p, client=client, progress=False)
        dmdask.add_models(p, "heldout", n=1)  # growth is not refused
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    # a holder killed on this host frees the store at once: no waiting for the timeout
    with dask_config({"dmdask.store.lease-timeout": "1h"}):
        meta = read_meta(p)
        g = zarr.open_group(p, mode="r+")
        g.attrs["dmdask"] = {**meta, "job": {**meta["job"],
                                             "params": {**meta["job"]["params"], "delay": 0.0}}}
        assert dmdask.train(p, client=client, progress=False).models == 9


def dask_config(d):
    import dask

    return dask.config.set(d)


def test_leases_of_other_hosts_expire_with_their_heartbeat(tmp_path):
    p = dmdask.create_jobless_store(tmp_path / "s", 5, 2, alpha=0.5)
    with lease.hold(p, "grow", "probe", refuse="x"):
        pass
    path = os.path.join(p, lease.LEASE_DIR, "grow.lease.json")
    other = {"pid": 1, "host": "elsewhere.invalid", "what": "adding models", "token": "t",
             "started_at": "then"}
    with open(path, "w") as f:
        json.dump({**other, "heartbeat": time.time()}, f)
    with pytest.raises(StoreBusy, match="cannot add models: adding models .*elsewhere.invalid"):
        dmdask.add_models(p, "random", n=2)
    assert read_meta(p)["n_models"] == 0
    with open(path, "w") as f:
        json.dump({**other, "heartbeat": time.time() - 61}, f)  # older than lease-timeout
    dmdask.add_models(p, "random", n=2)
    assert read_meta(p)["n_models"] == 2
    assert not os.path.exists(path)  # released
    # the lease lives in a Zarr group of its own: the store still opens without a warning
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        import xarray as xr

        xr.open_zarr(p, consolidated=False).close()
        dmdask.open_store(p)


# --------------------------------------------------------------------------- item 2: creation

def _create_killed(path, kill_at, count_file):
    """A process that creates the store and SIGKILLs itself at its kill_at-th zarr write
    (0: never); it writes how many writes it made to count_file."""
    ns = {}
    exec(KILL_AT_WRITE.replace("KILL_AT", str(int(kill_at))), ns)  # patches zarr here only
    dmdask.create_store(path, RIDGE, 10, 0.3, seed=5, block_size=4,
                        params={"n_train": 40, "n_target": 12})
    Path(count_file).write_text(str(ns["calls"][0]))


def _create(path, kill_at):
    """Run _create_killed in a process of its own (forked from a server that has imported
    dmdask, see _writers); its exit code, and the writes it counted when it finished."""
    ctx = _writers()
    count = Path(f"{path}.count")
    w = ctx.Process(target=_create_killed, args=(str(path), kill_at, str(count)))
    w.start()
    w.join(120)
    return w.exitcode, int(count.read_text()) if count.exists() else None


@pytest.mark.slow
def test_interrupted_create_store_is_finished_by_a_rerun(tmp_path):
    code, writes = _create(tmp_path / "ref", 0)
    assert code == 0 and writes
    ref = dmdask.open_store(tmp_path / "ref")
    args = dict(params={"n_train": 40, "n_target": 12}, seed=5, block_size=4)
    # kill points: while the arrays are made, right after the store appears at its path,
    # amid the masks, and at the commit of the models (the last write)
    points = sorted({1, writes // 3, writes // 2, writes - 8, writes - 1, writes})
    for k in points:
        p = tmp_path / f"k{k}"
        code, _ = _create(p, k)
        assert code == -signal.SIGKILL, (k, code)
        if p.exists():
            assert read_meta(p)["n_models"] in (0, 10)  # nothing half committed
            for other, what in [(dict(n_models=12), "n_models 10 (not 12)"),
                                (dict(alpha=0.5), "alpha 0.3 (not 0.5)"),
                                (dict(seed=6), "seed 5 (not 6)"),
                                (dict(sampling="bernoulli"), "sampling 'fixed'"),
                                (dict(block_size=8), "block_size 4 (not 8)"),
                                (dict(params={"n_train": 41, "n_target": 12}), "params")]:
                kw = {"n_models": 10, "alpha": 0.3, **args, **other}
                with pytest.raises(StoreError, match=re.escape(what)):
                    dmdask.create_store(p, RIDGE, **kw)
        assert dmdask.create_store(p, RIDGE, 10, 0.3, **args) == str(p)
        ds = dmdask.open_store(p)
        assert ds.sizes["model"] == 10, k
        for v in ("mask", "seed", "kind", "alpha", "completed"):
            np.testing.assert_array_equal(ds[v].values, ref[v].values, err_msg=f"{v} at {k}")
        assert not list(tmp_path.glob(f"k{k}.creating-*")), k  # the draft is gone
    np.testing.assert_array_equal(ref.mask.values, sample_masks(5, np.arange(10), 40, 0.3))


def test_create_store_rerun_with_other_arguments_is_refused(tmp_path):
    args = dict(params={"n_train": 40, "n_target": 12}, seed=5, block_size=4)
    p = dmdask.create_store(tmp_path / "s", RIDGE, 10, 0.3, **args)
    dmdask.add_models(p, "heldout", n=3)  # grown since: a rerun neither refuses nor adds
    assert dmdask.create_store(p, RIDGE, 10, 0.3, **args) == p
    assert read_meta(p)["n_models"] == 13
    with pytest.raises(StoreError, match=r"n_models 10 \(not 11\), alpha 0.3 \(not 0.5\)"):
        dmdask.create_store(p, RIDGE, 11, 0.5, **args)
    with pytest.raises(StoreError, match="no job"):
        dmdask.create_store(dmdask.create_jobless_store(tmp_path / "j", 40, 12), RIDGE, 10,
                            0.3, **args)


# --------------------------------------------------------------------------- item 3: torn chunks

def _block(g, b):
    x = np.random.default_rng([g, b]).standard_normal((64, 4096)).astype(np.float32)
    x[:, 0] = g
    return x


def _write_generations(p, first, last, ready):
    """A writer process: generations first..last of all four blocks, block by block."""
    ready.set()
    for g in range(first, last + 1):
        for b in range(4):
            dmdask.write_block(p, b, _block(g, b), overwrite=True)


def _writers():
    """Writer processes forked from a server that has imported dmdask once: each is a whole
    process of its own to SIGKILL, without an interpreter start-up and imports each time."""
    import multiprocessing as mp

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["dmdask", "numpy"])
    return ctx


@pytest.mark.slow
def test_sigkilled_block_writes_leave_whole_chunks(tmp_path):
    p = dmdask.create_jobless_store(tmp_path / "s", 8, 4096, block_size=64, alpha=0.5)
    dmdask.add_models(p, "random", n=256)  # four blocks of 1 MiB incompressible chunks
    rng = np.random.default_rng(0)
    ctx = _writers()
    g = 1
    for _ in range(12):
        ready = ctx.Event()
        w = ctx.Process(target=_write_generations, args=(p, g, g + 1000, ready))
        w.start()
        assert ready.wait(60)
        time.sleep(rng.uniform(0.05, 1.0))
        os.kill(w.pid, signal.SIGKILL)
        w.join(30)
        assert w.exitcode == -signal.SIGKILL
        ds = dmdask.open_store(p)  # opens
        m, done = ds.margin.values, ds.completed.values
        for b in range(4):
            chunk = m[64 * b:64 * (b + 1)]
            if np.isnan(chunk).all():
                assert not done[64 * b:64 * (b + 1)].any()
                continue
            gen = int(chunk[0, 0])  # the chunk is wholly one generation's block
            np.testing.assert_array_equal(chunk, _block(gen, b), err_msg=f"block {b}")
            assert 1 <= gen < g + 1001
        seen = [int(m[64 * b, 0]) for b in range(4) if not np.isnan(m[64 * b, 0])]
        g = max(seen + [g]) + 1
    ready = ctx.Event()  # kept referenced until the writer has it
    w = ctx.Process(target=_write_generations, args=(p, g, g, ready))
    w.start()
    w.join(120)
    assert w.exitcode == 0
    ds = dmdask.open_store(p)
    assert ds.completed.values.all()
    np.testing.assert_array_equal(ds.margin.values,
                                  np.concatenate([_block(g, b) for b in range(4)]))


# --------------------------------------------------------------------------- killed chunk writes

_KILLED_MID_CHUNK = """
import contextlib, os, signal, sys
import numpy as np
import zarr.storage._local as local
import dmdask
orig = local._atomic_write
@contextlib.contextmanager
def killed_before_rename(path, mode, exclusive=False):
    with orig(path, mode, exclusive) as f:
        yield f
        if "margin" in str(path):  # the chunk is in its temporary file, not yet renamed
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
local._atomic_write = killed_before_rename
p, b, rows, cols = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
dmdask.write_block(p, b, np.random.default_rng(b).standard_normal((rows, cols), np.float32))
"""


def _killed_margin_write(p, block, rows, cols) -> list[str]:
    """SIGKILL a write_block between zarr writing the margin chunk and renaming it; return
    the temporary files it left."""
    r = subprocess.run([sys.executable, "-c", _KILLED_MID_CHUNK, p, str(block), str(rows),
                        str(cols)], capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr
    left = [str(f) for f in (Path(p) / "margin").rglob("*.partial")]
    assert left, "the killed write left no temporary file (has zarr changed how it writes?)"
    return left


def _age_past_the_lease_timeout(files):
    t = time.time() - lease._seconds("store.lease-timeout", "60s") - 1
    for f in files:
        os.utime(f, (t, t))


def test_killed_chunk_writes_are_not_counted_and_are_cleaned_by_the_next_growth(tmp_path):
    p = dmdask.create_jobless_store(tmp_path / "s", 8, 500, block_size=4, alpha=0.5)
    dmdask.add_models(p, "random", n=8)
    dmdask.write_block(p, 0, np.zeros((4, 500), np.float32))
    before = dmdask.store_info(p)
    left = _killed_margin_write(p, 1, 4, 500)
    assert sum(os.path.getsize(f) for f in left) > 4000  # 2,000 random float32s
    after = dmdask.store_info(p)
    assert after["bytes"] == before["bytes"] and after["bytes_total"] == before["bytes_total"]
    assert after["done"] == 4  # nothing of the killed write is committed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dmdask.open_store(p)
    dmdask.add_models(p, "heldout", n=1)  # a fresh temporary file may be a write in flight
    assert all(os.path.exists(f) for f in left)
    _age_past_the_lease_timeout(left)  # a dead write's
    dmdask.add_models(p, "heldout", n=1)
    assert not any(os.path.exists(f) for f in left)
    rerun = np.random.default_rng(1).standard_normal((4, 500), np.float32)
    dmdask.write_block(p, 1, rerun)  # a rerun of the write finishes it
    ds = dmdask.open_store(p)
    assert ds.completed.values[:8].all()
    np.testing.assert_array_equal(ds.margin.values[4:8], rerun)


def test_training_cleans_stale_temporary_files(tmp_path, client):
    p = dmdask.create_store(tmp_path / "s", RIDGE, 8, 0.5, params=SMALL, block_size=4)
    left = _killed_margin_write(p, 1, 4, SMALL["n_target"])
    _age_past_the_lease_timeout(left)
    assert dmdask.train(p, client=client, progress=False).models == 8
    assert not any(os.path.exists(f) for f in left)
    np.testing.assert_array_equal(dmdask.open_store(p).margin.values, _recompute(p))


# --------------------------------------------------------------------------- write_block


def test_write_block_never_rewrites_completed_rows_unless_told(tmp_path):
    p = dmdask.create_jobless_store(tmp_path / "s", 6, 3, block_size=4, alpha=0.5)
    dmdask.add_models(p, "random", n=6)  # blocks 0..3, 4..5
    first = np.arange(12, dtype=np.float32).reshape(4, 3)
    dmdask.write_block(p, 0, first)
    dmdask.write_block(p, 1, np.ones((2, 3), np.float32))
    with pytest.raises(WriteRefused) as e:
        dmdask.write_block(p, 0, np.zeros((4, 3), np.float32))
    msg = str(e.value)
    assert f"{p} block 0: models 0, 1, 2, 3 are already completed" in msg
    assert "overwrite=True" in msg and "\n" not in msg
    np.testing.assert_array_equal(dmdask.open_store(p).margin.values[:4], first)
    # a grown partial block: its committed rows are protected, the new ones are not written
    dmdask.add_models(p, "heldout", n=2)  # rows 6, 7 join block 1
    with pytest.raises(WriteRefused, match=r"block 1: models 4, 5 are already completed"):
        dmdask.write_block(p, 1, np.full((4, 3), 7, np.float32))
    ds = dmdask.open_store(p)
    np.testing.assert_array_equal(ds.completed.values, [True] * 6 + [False] * 2)
    assert np.isnan(ds.margin.values[6:]).all()
    dmdask.write_block(p, 0, np.zeros((4, 3), np.float32), overwrite=True)  # when told
    dmdask.write_block(p, 1, np.full((4, 3), 7, np.float32), overwrite=True)
    ds = dmdask.open_store(p)
    assert ds.completed.values.all()
    np.testing.assert_array_equal(ds.margin.values[:4], 0)
    np.testing.assert_array_equal(ds.margin.values[4:], 7)


# --------------------------------------------------------------------------- item 5: warm-up


def test_a_job_that_cannot_train_fails_at_its_warm_up(tmp_path, client):
    p = dmdask.create_store(tmp_path / "s", "testjobs:BrokenRidge", 8, 0.5, params=SMALL,
                            block_size=4)
    with pytest.raises(JobError) as e:
        dmdask.train(p, client=client, progress=False, retries=0)
    msg = str(e.value)
    assert "testjobs:BrokenRidge failed its warm-up training" in msg
    assert "RuntimeError: learner bug: matrices do not align" in msg
    assert "\n" not in msg and p in msg
    assert lease.read_lease(p, "train") is None  # released on the way out
