"""Training on real dask.distributed clusters: jobs outside the package, refusals, and
surviving SIGKILL of a worker or of the whole `dmdask train` process group."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import zarr

import dmdask
from dmdask.errors import DmdaskError, JobError
from dmdask.store.runstore import read_meta

RIDGE = "testjobs:RidgeDigits"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepend_path(p: str) -> None:
    if p not in sys.path:
        sys.path.insert(0, p)


def _done(path) -> int:
    n = read_meta(path)["n_models"]
    return int(zarr.open_group(str(path))["completed"][:n].sum())


def _assert_identical(a, b):
    da, db = dmdask.open_store(a), dmdask.open_store(b)
    for v in ("mask", "seed", "kind", "alpha", "completed", "replicate_of", "margin"):
        np.testing.assert_array_equal(da[v].values, db[v].values, err_msg=v)
    assert da.completed.values.all()


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0", silence_logs=40) as c, Client(c) as client:
        yield client


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cluster):
    """An uninterrupted run of the store the kill tests interrupt."""
    p = dmdask.create_store(tmp_path_factory.mktemp("ref") / "s", RIDGE, 96, 0.5,
                            params={"delay": 0.0}, block_size=8)
    dmdask.train(p, client=cluster, progress=False)
    return p


def test_external_job_module_end_to_end(tmp_path, monkeypatch, cluster):
    mod = tmp_path / "extjobs"
    mod.mkdir()
    (mod / "my_lab_job.py").write_text(textwrap.dedent("""
        import numpy as np

        class NearestMean:
            '''Nearest class mean on digits: trained on the masked examples only.'''
            def __init__(self, n_train=120):
                from sklearn.datasets import load_digits
                d = load_digits()
                self.x, self.y = d.data[:n_train] / 16, d.target[:n_train]
                self.xt, self.yt = d.data[-30:] / 16, d.target[-30:]
            def describe(self):
                return {"train_label": self.y, "target_label": self.yt,
                        "target_train_index": np.full(30, -1)}
            def train_block(self, masks, seeds, train_labels=None):
                out = []
                for m in masks:
                    mu = np.stack([self.x[m & (self.y == c)].mean(0) if (m & (self.y == c)).any()
                                   else np.zeros(64) for c in range(10)])
                    z = -((self.xt[:, None, :] - mu[None]) ** 2).sum(-1)
                    zc = z[np.arange(30), self.yt].copy()
                    z[np.arange(30), self.yt] = -np.inf
                    out.append(zc - z.max(1))
                return np.array(out, np.float32)
    """))
    monkeypatch.syspath_prepend(str(mod))
    cluster.run(_prepend_path, str(mod))  # the workers import it like any module
    p = dmdask.create_store(tmp_path / "s", "my_lab_job:NearestMean", 40, 0.5, block_size=16)
    rep = dmdask.train(p, client=cluster, progress=False)
    assert rep.models == 40 and rep.blocks == 3
    ds = dmdask.open_store(p)
    assert ds.completed.values.all() and np.isfinite(ds.margin.values).all()
    import my_lab_job

    job = my_lab_job.NearestMean()
    masks = ds.mask.values[:5]
    np.testing.assert_array_equal(ds.margin.values[:5], job.train_block(masks, ds.seed.values[:5]))
    assert dmdask.train(p, client=cluster, progress=False).models == 0  # nothing left


def test_nan_margins_are_refused_and_other_blocks_land(tmp_path, cluster):
    p = dmdask.create_store(tmp_path / "s", RIDGE, 24, 0.5, params={"nan_models": 1},
                            block_size=8)
    with pytest.raises(DmdaskError, match=r"3 of 3 blocks failed.*NaN or inf"):
        dmdask.train(p, client=cluster, progress=False, retries=0)
    ds = dmdask.open_store(p)
    assert not ds.completed.values.any() and np.isnan(ds.margin.values).all()


def test_edited_store_naming_a_non_job_is_refused_unconstructed(tmp_path):
    p = dmdask.create_store(tmp_path / "s", RIDGE, 8, 0.5, block_size=8)
    marker = tmp_path / "constructed"
    g = zarr.open_group(str(p), mode="r+")
    meta = dict(g.attrs["dmdask"])
    meta["job"] = {"path": "testjobs:Boom", "params": {"path": str(marker)}}
    g.attrs["dmdask"] = meta
    r = subprocess.run([sys.executable, "-m", "dmdask.cli", "train", str(p), "--workers", "1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "testjobs:Boom" in r.stderr and "is not a job" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not marker.exists()
    with pytest.raises(JobError):
        dmdask.train(p, progress=False)
    assert not marker.exists()


def test_jobless_store_cannot_be_trained(tmp_path):
    p = dmdask.create_jobless_store(tmp_path / "s", 5, 2, alpha=0.5)
    dmdask.add_models(p, "random", n=3)
    with pytest.raises(DmdaskError, match="no job.*3 incomplete models"):
        dmdask.train(p, progress=False)


@pytest.mark.slow
def test_sigkill_a_worker_mid_training(tmp_path, reference, cluster):
    p = dmdask.create_store(tmp_path / "s", RIDGE, 96, 0.5, params={"delay": 0.0},
                            block_size=8)
    # Same store and models, but trained through a job instance that sleeps: the delay is a
    # constructor parameter, so use a separate cluster whose workers we may kill.
    from distributed import Client, LocalCluster

    g = zarr.open_group(str(p), mode="r+")
    meta = dict(g.attrs["dmdask"])
    meta["job"] = {"path": RIDGE, "params": {"delay": 0.4}}
    g.attrs["dmdask"] = meta  # the delay changes timing only; margins are identical
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0", silence_logs=50) as lc, Client(lc) as client:
        result = {}
        t = threading.Thread(
            target=lambda: result.update(r=dmdask.train(p, client=client, progress=False)))
        t.start()
        deadline = time.time() + 60
        while _done(p) < 16 and time.time() < deadline:
            time.sleep(0.05)
        pids = list(client.run(os.getpid).values())
        os.kill(pids[0], signal.SIGKILL)  # the nanny restarts it; its task is rescheduled
        t.join(180)
        assert not t.is_alive()
    assert 0 < result["r"].models <= 96
    assert _done(p) == 96
    meta["job"] = {"path": RIDGE, "params": {"delay": 0.0}}
    g.attrs["dmdask"] = meta
    _assert_identical(p, reference)


@pytest.mark.slow
def test_sigkill_the_train_process_group_then_rerun(tmp_path, reference):
    p = dmdask.create_store(tmp_path / "s", RIDGE, 96, 0.5, params={"delay": 0.0},
                            block_size=8)
    g = zarr.open_group(str(p), mode="r+")
    meta = dict(g.attrs["dmdask"])
    slow = dict(meta, job={"path": RIDGE, "params": {"delay": 0.5}})
    g.attrs["dmdask"] = slow
    cmd = [sys.executable, "-m", "dmdask.cli", "train", str(p), "--workers", "2", "--no-progress"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 90
    while _done(p) < 16 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # coordinator, nannies and workers at once
    proc.wait(30)
    done = _done(p)
    assert 0 < done < 96, done
    ds = dmdask.open_store(p)  # readable as it is: completed rows whole, the rest NaN
    comp = ds.completed.values
    assert np.isfinite(ds.margin.values[comp]).all() and np.isnan(ds.margin.values[~comp]).all()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"trained {96 - done} models" in r.stdout
    g.attrs["dmdask"] = meta
    _assert_identical(p, reference)


@pytest.mark.slow
@pytest.mark.cluster
def test_dask_scheduler_and_workers_as_separate_commands(tmp_path, reference):
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ)
    bindir = os.path.dirname(sys.executable)
    dask_cmd = os.path.join(bindir, "dask")
    procs = [subprocess.Popen([dask_cmd, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-address", ":0"], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for _ in range(2):
            procs.append(subprocess.Popen(
                [dask_cmd, "worker", addr, "--nthreads", "1", "--nworkers", "1",
                 "--no-dashboard"], env=env, start_new_session=True,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(addr, timeout="30s") as c:
            c.wait_for_workers(2, timeout=60)
        p = dmdask.create_store(tmp_path / "s", RIDGE, 96, 0.5, params={"delay": 0.0},
                                block_size=8)
        r = subprocess.run([sys.executable, "-m", "dmdask.cli", "train", str(p), "--scheduler",
                            addr, "--no-progress"], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert "trained 96 models in 12 blocks" in r.stdout
        with Client(addr) as c:
            assert len(c.scheduler_info()["workers"]) == 2
        _assert_identical(p, reference)
    finally:
        for pr in procs:
            try:
                os.killpg(pr.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pr in procs:
            pr.wait(30)


def test_unreachable_scheduler_is_one_line(tmp_path):
    p = dmdask.create_store(tmp_path / "s", RIDGE, 8, 0.5, block_size=8)
    import dask
    from cli_inprocess import invoke

    with dask.config.set({"dmdask.train.connect-timeout": "2s"}):  # a refusal: in process
        r = invoke("train", p, "--scheduler", f"tcp://127.0.0.1:{_free_port()}")
    assert r.exit_code == 2 and "cannot reach dask scheduler" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
