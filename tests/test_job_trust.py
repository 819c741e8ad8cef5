"""A store never makes dmdask import code nobody chose (issue 15, item 4).

The job modules here leave a marker file behind when imported, so "was it imported?" is
observed, not inferred. Each test gets its own dask config directory (the trust file lives
there), so "another machine" is a directory where no store was created.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import uuid
import warnings

import dask
import numpy as np
import pytest
import yaml
import zarr
from click.testing import CliRunner

import dmdask
from dmdask.cli import main
from dmdask.errors import JobError
from dmdask.store import jobspec
from dmdask.store.jobspec import UntrustedJobError

RIDGE = "testjobs:RidgeDigits"
PARAMS = {"n_train": 40, "n_target": 12}


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """A fresh dask config directory: a machine on which no store was created yet."""
    cfg = tmp_path / "dask-config"
    cfg.mkdir()
    monkeypatch.setenv("DASK_CONFIG", str(cfg))
    return cfg


@pytest.fixture
def evil(tmp_path, monkeypatch):
    """A job module (unique name) whose import writes a marker file; its job is RidgeDigits
    under another name, so it describes the same dataset and trains the same margins."""
    src = tmp_path / "mods"
    pkg = f"evil_{uuid.uuid4().hex[:8]}"
    (src / pkg).mkdir(parents=True)
    marker = tmp_path / "imported"
    (src / pkg / "__init__.py").write_text("")
    (src / pkg / "job.py").write_text(textwrap.dedent(f"""
        import os
        with open({str(marker)!r}, "a") as f:
            f.write(f"{{os.getpid()}}\\n")
        from testjobs import RidgeDigits as Job
    """))
    monkeypatch.syspath_prepend(str(src))
    # workers and `dmdask` subprocesses started by the test find it like any module
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(src), os.environ["PYTHONPATH"]]))
    yield f"{pkg}.job", marker
    for m in (pkg, f"{pkg}.job"):
        sys.modules.pop(m, None)


@pytest.fixture(scope="module")
def cluster():
    """One worker process, started before any test's trust exists: its config and trust file
    (the session's) never list a test's module, so it can only learn trust from the tasks."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=":0", silence_logs=40) as c, Client(c) as client:
        yield client


def _on_workers(client, src) -> None:
    client.run(lambda: sys.path.insert(0, src) if src not in sys.path else None)


def _received_store(path, job_path: str) -> str:
    """A store as received from elsewhere: made here with RidgeDigits, then its job spec
    edited to name ``job_path`` (same dataset, so the fingerprint still matches)."""
    p = dmdask.create_store(path, RIDGE, 16, 0.5, params=PARAMS, block_size=8)
    g = zarr.open_group(str(p), mode="r+")
    meta = dict(g.attrs["dmdask"])
    meta["job"] = {"path": job_path, "params": PARAMS}
    g.attrs["dmdask"] = meta
    return p


def _recorded(cfg) -> list[str]:
    with open(cfg / jobspec.TRUST_FILE_NAME) as f:
        return yaml.safe_load(f)["dmdask"]["jobs"]["recorded"]


def _one_line(msg: str) -> str:
    lines = msg.strip().splitlines()
    assert len(lines) == 1, msg
    return lines[0]


def test_untrusted_job_module_is_refused_before_import(tmp_path, machine, evil):
    module, marker = evil
    p = _received_store(tmp_path / "s", f"{module}:Job")
    # the Python API: train, the model-based estimators' job, compare's default rows
    with pytest.raises(UntrustedJobError) as e:
        dmdask.train(p, progress=False)
    line = _one_line(str(e.value))
    assert module in line and f"--trust-job {module}" in line and "dmdask.jobs.trusted" in line
    from dmdask.analysis.compare import _job_supports
    from dmdask.analysis.estimators.model import load_job

    ds = dmdask.open_store(p)
    with pytest.raises(UntrustedJobError):
        load_job(ds, "trak")
    with pytest.warns(UserWarning, match="not trusted"):
        assert not _job_supports(ds, "trak")
    # the command line: one line, exit 2, nothing trained
    r = CliRunner().invoke(main, ["train", str(p), "--workers", "1", "--no-progress"])
    assert r.exit_code == 2
    assert f"--trust-job {module}" in _one_line(r.stderr)
    assert not marker.exists() and module not in sys.modules
    assert not dmdask.open_store(p).completed.values.any()


@pytest.mark.cluster
def test_trust_job_imports_trains_and_is_remembered(tmp_path, machine, evil):
    module, marker = evil
    p = _received_store(tmp_path / "s", f"{module}:Job")
    r = CliRunner().invoke(main, ["train", str(p), "--workers", "1", "--no-progress",
                                  "--trust-job", module.split(".")[0]])
    assert r.exit_code == 0, r.output
    assert len(set(marker.read_text().split())) == 2  # imported by coordinator and worker
    ds = dmdask.open_store(p)
    assert ds.completed.values.all()
    from testjobs import RidgeDigits

    expect = RidgeDigits(**PARAMS).train_block(ds.mask.values, ds.seed.values)
    np.testing.assert_array_equal(ds.margin.values, expect)
    # remembered on this machine (in its dask config, not in the store)
    assert _recorded(machine) == ["testjobs", module.split(".")[0]]
    jobspec.resolve_job_class(f"{module}:Job")


def test_setting_trusts_a_package_and_its_submodules(machine, evil):
    module, marker = evil
    pkg = module.split(".")[0]
    with dask.config.set({"dmdask.jobs.trusted": [f"{pkg}.other"]}):  # a sibling: not covered
        with pytest.raises(UntrustedJobError):
            jobspec.resolve_job_class(f"{module}:Job")
    assert not marker.exists()
    with dask.config.set({"dmdask.jobs.trusted": [pkg]}):
        assert jobspec.resolve_job_class(f"{module}:Job").__name__ == "RidgeDigits"
    assert marker.exists()
    assert not (machine / jobspec.TRUST_FILE_NAME).exists()  # a setting records nothing


def test_prefix_semantics():
    assert jobspec.is_trusted("jobs.digits", ["jobs"])
    assert jobspec.is_trusted("pkg.sub.mod", ["pkg.sub"])
    assert not jobspec.is_trusted("jobsx", ["jobs"])          # a prefix of the name, not a package
    assert not jobspec.is_trusted("pkg", ["pkg.sub"])         # a parent is not covered
    assert not jobspec.is_trusted("pkg.other", ["pkg.sub"])


def test_bundled_jobs_need_no_trust(machine):
    assert jobspec.resolve_job_class("jobs.digits:DigitsLogistic").__name__ == "DigitsLogistic"
    assert not (machine / jobspec.TRUST_FILE_NAME).exists()


def test_creating_a_store_records_trust_on_this_machine_only(tmp_path, machine, evil,
                                                             monkeypatch):
    module, marker = evil
    p = dmdask.create_store(tmp_path / "s", f"{module}:Job", 8, 0.5, params=PARAMS)
    assert marker.exists() and _recorded(machine) == [module]
    # the store carries no trust: nothing in its metadata names a trust list
    attrs = json.dumps(dict(zarr.open_group(str(p)).attrs))
    assert "trust" not in attrs and "recorded" not in attrs
    assert jobspec.resolve_job_class(f"{module}:Job")
    other = tmp_path / "other-machine"
    other.mkdir()
    monkeypatch.setenv("DASK_CONFIG", str(other))
    # refused even though this process imported it before: the check is on the name
    with pytest.raises(UntrustedJobError, match=module):
        dmdask.train(p, progress=False)
    # CLI init --trust-job records more modules, and the job's own
    r = CliRunner().invoke(main, ["init", str(tmp_path / "t"), "--job", RIDGE, "-n", "0",
                                  "--param", "n_train=30", "--trust-job", "lab.jobs"])
    assert r.exit_code == 0, r.output
    assert _recorded(other) == ["lab.jobs", "testjobs"]


@pytest.mark.cluster
def test_workers_use_the_trust_the_coordinator_checked(tmp_path, machine, evil, cluster):
    """The worker's config and trust file do not list the module, yet it builds the job: the
    coordinator, which checked the trust, tells it."""
    module, marker = evil
    _on_workers(cluster, str(tmp_path / "mods"))
    p = _received_store(tmp_path / "s", f"{module}:Job")
    worker_trust = next(iter(cluster.run(jobspec.trusted_modules).values()))
    assert not jobspec.is_trusted(module, worker_trust)
    with dask.config.set({"dmdask.jobs.trusted": [module]}):
        rep = dmdask.train(p, client=cluster, progress=False)
    pids = set(marker.read_text().split())
    assert rep.models == 16 and dmdask.open_store(p).completed.values.all()
    assert len(pids) == 2  # imported by the coordinator and by the worker
    assert _recorded(machine) == ["testjobs"]  # a setting records nothing


def test_bad_trust_settings_are_one_line(tmp_path, machine):
    with dask.config.set({"dmdask.jobs.trusted": ["not-a-module"]}):
        with pytest.raises(JobError, match="setting dmdask.jobs.trusted: 'not-a-module'"):
            jobspec.resolve_job_class(RIDGE)
    # an environment variable gives a string: comma-separated modules
    with dask.config.set({"dmdask.jobs.trusted": "a.b, testjobs"}):
        assert jobspec.is_trusted("testjobs", jobspec.trusted_modules())
    (machine / jobspec.TRUST_FILE_NAME).write_text("dmdask: [unclosed\n")
    with pytest.raises(JobError, match="trust file .* cannot be read"):
        jobspec.resolve_job_class(RIDGE)


def test_unwritable_trust_file_warns_and_the_store_is_still_made(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with dask.config.set({"dmdask.jobs.trust-file": str(blocker / "trust.yaml")}):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            p = dmdask.create_store(tmp_path / "s", RIDGE, 4, 0.5, params=PARAMS)
    assert any("could not record trust" in str(x.message) for x in w)
    assert dmdask.open_store(p).sizes["model"] == 4
