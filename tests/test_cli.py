"""The `dmdask` command line: help, refusals as one line, and the commands end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import dmdask
from dmdask.cli import main

COMMANDS = ["init", "add", "train", "info", "fit", "import", "export", "quickstart", "evaluate",
            "compare", "sample-complexity", "lemma", "report", "counterfactual", "support",
            "mislabel", "select", "neighbors", "values", "alpha-sim", "loo", "import-datamodels",
            "export-scores", "leakage", "cluster", "embed", "faithfulness"]
# every registered command, so a new one cannot skip the --help check below
ALL_COMMANDS = sorted(set(COMMANDS) | set(main.commands))


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "dmdask.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("cmd", ALL_COMMANDS)
def test_every_command_explains_itself(cmd):
    r = CliRunner().invoke(main, [cmd, "--help"])
    assert r.exit_code == 0
    doc = r.output.split("Options:")[0]
    assert len(doc.split()) > 12  # a real explanation, not just a usage line
    for opt in r.output.split("Options:")[1].splitlines():
        if opt.strip().startswith("--") and "--help" not in opt and "/--no-" not in opt:
            assert len(opt.split()) >= 2, opt  # every option says something


def test_top_level_help_lists_commands():
    r = CliRunner().invoke(main, ["--help"])
    assert r.exit_code == 0 and all(c in r.output for c in COMMANDS)


def test_refusals_are_one_line_without_traceback(tmp_path):
    p = tmp_path / "s"
    r = run("init", p, "--job", "testjobs:RidgeDigits", "-n", 8)
    assert r.returncode == 0, r.stderr
    cases = [
        ("init", p, "--job", "testjobs:RidgeDigits", "-n", 8, "--seed", 5),  # other seed
        ("init", tmp_path / "t", "--job", "os:getcwd"),                       # not a job
        ("init", tmp_path / "t", "--job", "testjobs:RidgeDigits", "--alpha", 1.5),
        ("add", p, "--kind", "replicate", "--of", "0:99"),                   # no such models
        ("info", tmp_path),                                                  # not a store
    ]
    for args in cases:
        r = run(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("dmdask: error: "), (args, r.stderr)
        assert "Traceback" not in r.stderr


def test_init_add_train_info(tmp_path):
    p = tmp_path / "s"
    r = CliRunner().invoke(main, ["init", str(p), "--job", "testjobs:RidgeDigits", "-n", "20",
                                  "--param", "n_train=60", "--block-size", "8"])
    assert r.exit_code == 0, r.output
    assert "20 models (20 to train) x 60 training examples x 40 targets" in r.output
    r = CliRunner().invoke(main, ["add", str(p), "--kind", "heldout", "-n", "6"])
    assert r.exit_code == 0 and "added 6 heldout models (indices 20..25)" in r.output
    r = CliRunner().invoke(main, ["add", str(p), "--kind", "replicate", "--of", "heldout",
                                  "--times", "2"])
    assert r.exit_code == 0 and "added 12 replicate models" in r.output
    r = run("train", p, "--workers", "1", "--no-progress")
    assert r.returncode == 0 and "trained 38 models" in r.stdout, r.stderr
    assert "dashboard: http" in r.stderr
    r = CliRunner().invoke(main, ["info", str(p), "--json"])
    info = json.loads(r.output)
    assert info["kinds"]["replicate"] == {"models": 12, "done": 12, "pending": 0, "alphas": [0.5]}
    assert info["pending"] == 0 and info["n_models"] == 38
    ds = dmdask.open_store(p)
    rep = ds.sel(model=(ds.kind == "replicate").values)
    np.testing.assert_array_equal(rep.mask.values, ds.mask.values[np.repeat(np.arange(20, 26), 2)])
    r = CliRunner().invoke(main, ["info", str(p)])
    assert "stored bits per entry" in r.output and "heldout" in r.output


_KILLED_AFTER_HELDOUT = """
import os, signal, sys
import dmdask.store.runstore as rs
from dmdask.cli import main
orig = rs.add_models
def add_then_die(path, kind, **kw):
    out = orig(path, kind, **kw)
    if kind == "heldout":
        os.kill(os.getpid(), signal.SIGKILL)
    return out
rs.add_models = add_then_die
main(sys.argv[1:])
"""


def _kinds(store):
    return {k: v["models"] for k, v in dmdask.store_info(store)["kinds"].items()}


def test_quickstart_on_a_small_job(tmp_path):
    args = ("quickstart", "--dir", tmp_path / "q", "-n", 64, "--job", "testjobs:RidgeDigits",
            "--heldout", 12, "--replicates", 1, "--workers", 1, "--no-progress")
    # killed between adding the held-out models and adding their replicates
    k = subprocess.run([sys.executable, "-c", _KILLED_AFTER_HELDOUT, *map(str, args)],
                       capture_output=True, text=True, timeout=300)
    assert k.returncode == -9, k.stderr
    assert _kinds(tmp_path / "q" / "runs.zarr") == {"random": 64, "heldout": 12}
    r = run(*args)
    assert r.returncode == 0, r.stderr
    ds = dmdask.open_store(tmp_path / "q" / "runs.zarr")
    info = dmdask.store_info(tmp_path / "q" / "runs.zarr")
    assert info["pending"] == 0
    kinds = {k: v["models"] for k, v in info["kinds"].items()}
    assert {k: kinds[k] for k in ("random", "heldout", "replicate")} == {
        "random": 64, "heldout": 12, "replicate": 12}
    assert kinds["control"] == 10 and kinds["counterfactual"] > 0 and kinds["selected"] > 0
    assert ds.completed.values.all()
    for stage in range(1, 9):
        assert f"[{stage}/8]" in r.stdout
    # the job has no train_logits hook: the mislabel search says so and the rest goes on
    assert "mislabel skipped" in r.stdout and "train_logits" in r.stdout
    for out in ("datamodels.zarr", "evaluation.zarr", "comparison.zarr",
                "sample_complexity.zarr", "counterfactuals.zarr", "support.zarr",
                "selection.zarr", "neighbors.zarr", "leakage.zarr", "embeddings.zarr",
                "clusters.zarr", "report.html"):
        assert (tmp_path / "q" / out).exists(), out
    assert str((tmp_path / "q" / "report.html").resolve()) in r.stdout
    assert "| lasso |" not in r.stdout and "lasso" in r.stdout.split("[4/8]")[1]
    n = dmdask.store_info(tmp_path / "q" / "runs.zarr")["n_models"]
    r2 = run(*args)
    assert r2.returncode == 0 and "trained" not in r2.stdout.split("[2/")[0]  # resumed, no work
    assert dmdask.store_info(tmp_path / "q" / "runs.zarr")["n_models"] == n  # nothing re-added
    assert "0 models trained" in r2.stdout.split("[6/8]")[1]  # counterfactuals found again


class _Killed(BaseException):
    """Stands for the SIGKILL of a quickstart at one of its additions."""


@pytest.mark.parametrize("killed_after", [None, "create", "heldout", "replicate"])
def test_quickstart_store_step_adds_exactly_what_is_missing(tmp_path, monkeypatch, killed_after):
    import dmdask.store.runstore as rs
    from dmdask.cli.commands import _quickstart_store

    store = str(tmp_path / "runs.zarr")
    job, n, h, r = "testjobs:RidgeDigits", 10, 3, 2
    if killed_after is not None:
        def die_after(name, orig):
            def call(*a, **kw):
                out = orig(*a, **kw)
                if name == killed_after or (name == "add_models" and a[1] == killed_after):
                    raise _Killed
                return out
            return call

        with monkeypatch.context() as m:
            m.setattr(rs, "create_store", die_after("create", rs.create_store))
            m.setattr(rs, "add_models", die_after("add_models", rs.add_models))
            with pytest.raises(_Killed):
                _quickstart_store(store, job, n, h, r)
    _quickstart_store(store, job, n, h, r)
    ds = dmdask.open_store(store)
    kinds = ds.kind.values
    assert _kinds(store) == {"random": n, "heldout": h, "replicate": h * r}
    held = ds.model.values[kinds == "heldout"]
    rep = ds.replicate_of.values[kinds == "replicate"]
    assert sorted(rep.tolist()) == sorted(held.tolist() * r)  # r of each held-out model
    masks = ds.mask.values
    np.testing.assert_array_equal(masks[kinds == "replicate"], masks[rep])
    assert _quickstart_store(store, job, n, h, r) == {}  # complete: a rerun adds nothing
    # asked for more replicates later, it adds exactly the missing ones
    assert _quickstart_store(store, job, n, h, r + 1) == {"replicate": h}
    assert _kinds(store)["replicate"] == h * (r + 1)


@pytest.mark.slow
@pytest.mark.torch
def test_quickstart_default_job(tmp_path):
    # the whole pipeline on the default job (model-based estimators included); the curves
    # are left out here (test_quickstart_on_a_small_job and test_sample_complexity cover them)
    r = run("quickstart", "--dir", tmp_path / "q", "-n", 512, "--heldout", 40, "--replicates",
            1, "--no-curves", "--no-progress", timeout=900)
    assert r.returncode == 0, r.stderr
    assert "trak" in r.stdout.split("[4/8]")[1] and "--no-curves" in r.stdout
    page = (tmp_path / "q" / "report.html").read_text()
    for fig in ("fig-counterfactuals", "fig-support", "fig-mislabel", "fig-selection",
                "fig-neighbors", "fig-leakage-pairs", "fig-embeddings-spectrum",
                "fig-embeddings-extremes", "fig-clusters-purity", "fig-clusters-images"):
        assert f'id="{fig}"' in page, fig
    assert not (tmp_path / "q" / "sample_complexity.zarr").exists()
    ds = dmdask.open_store(tmp_path / "q" / "runs.zarr")
    assert ds.attrs["dmdask"]["job"]["path"] == "jobs.digits:DigitsMLP"
    rnd = ds.sel(model=(ds.kind == "random").values)
    assert rnd.completed.values.all() and rnd.sizes["model"] == 512
    acc = (rnd.margin.values > 0).mean()
    assert acc > 0.9  # half-data digits MLPs classify most test digits correctly


def test_fit_command_writes_datamodels(tmp_path):
    import xarray as xr

    p = dmdask.create_store(tmp_path / "s", "testjobs:RidgeDigits", 240, 0.5,
                            params={"n_train": 60}, block_size=32)
    dmdask.train(p, workers=1, progress=False)
    out = tmp_path / "dm.zarr"
    r = CliRunner().invoke(main, ["fit", str(p), "--out", str(out), "--selection", "holdout",
                                  "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "val MSE" in r.output and "nonzero weights per target" in r.output
    dm = xr.open_zarr(out, consolidated=False)
    assert dm.weight.shape == (40, 60) and dm.attrs["selection"] == "holdout"
    ds = dmdask.open_store(p)
    pred = ds.mask.values.astype(np.float32) @ dm.weight.values.T + dm.bias.values
    resid = ds.margin.values - pred
    assert (resid**2).mean() < ds.margin.values.var(axis=0).mean()  # explains some variance
    r = run("fit", p, "--out", out)
    assert r.returncode == 2 and "already exists" in r.stderr and "Traceback" not in r.stderr


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from test_evaluate import make_store

    p = tmp_path_factory.mktemp("cli") / "s.zarr"
    make_store(p, N=20, T=4, n_fit=600, n_held=30, R=2, noise=0.4, block=100)
    return p


def test_evaluate_command(planted, tmp_path):
    import xarray as xr

    dm = tmp_path / "dm.zarr"
    assert CliRunner().invoke(main, ["fit", str(planted), "--out", str(dm),
                                     "--no-progress"]).exit_code == 0
    r = CliRunner().invoke(main, ["evaluate", str(planted), str(dm), "--out",
                                  str(tmp_path / "ev.zarr")])
    assert r.exit_code == 0, r.output
    ev = dmdask.evaluate(planted, xr.open_zarr(dm, consolidated=False))
    assert f"{ev.attrs['lds_mean']: .4f}" in r.output and "OPT" in r.output
    saved = xr.open_zarr(tmp_path / "ev.zarr", consolidated=False)
    np.testing.assert_allclose(saved.lds.values, ev.lds.values)
    # a plain [train, target] array: the layout is detected, no bias -> calibrated
    np.save(tmp_path / "s.npy", xr.open_zarr(dm, consolidated=False).weight.values.T)
    r = CliRunner().invoke(main, ["evaluate", str(planted), str(tmp_path / "s.npy"), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["calibrated"] == 1
    np.testing.assert_allclose(out["lds_mean"], ev.attrs["lds_mean"], rtol=1e-6)
    r = run("evaluate", planted, tmp_path / "missing.npy")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_compare_sample_complexity_lemma_commands(planted, tmp_path):
    import xarray as xr

    r = CliRunner().invoke(main, ["compare", str(planted), "--row", "dom_margin",
                                  "--row", "ols:300", "--out", str(tmp_path / "c.zarr"),
                                  "--no-progress"])
    assert r.exit_code == 0, r.output
    c = xr.open_zarr(tmp_path / "c.zarr", consolidated=False)
    assert c.estimator.values.tolist() == ["dom_margin", "ols"]
    assert c.n_models.values.tolist() == [600, 300]
    assert "dom_margin" in r.output and f"{float(c.lds[1]):.3f}" in r.output
    r = CliRunner().invoke(main, ["sample-complexity", str(planted), "--sizes", "150,600",
                                  "--estimator", "ols", "--out", str(tmp_path / "sc.zarr"),
                                  "--no-progress"])
    assert r.exit_code == 0, r.output
    sc = xr.open_zarr(tmp_path / "sc.zarr", consolidated=False)
    assert sc.n_models.values.tolist() == [150, 600]
    assert f"{float(sc.opt):.4f}" in r.output
    r = CliRunner().invoke(main, ["lemma", str(planted), "--sizes", "200,600"])
    assert r.exit_code == 0, r.output
    assert "c = 0.950000" in r.output  # (N - 1)/N with N = 20
    r = run("compare", planted, "--row", "nope")
    assert r.returncode == 2 and "unknown estimator" in r.stderr


def test_a_result_never_overwrites_a_run_store_or_datamodels(tmp_path):
    import xarray as xr

    from dmdask.cli.commands import _save_result
    from dmdask.errors import DmdaskError

    p = dmdask.create_store(tmp_path / "s", "testjobs:RidgeDigits", 8, 0.5,
                            params={"n_train": 20})
    dm = tmp_path / "dm.zarr"
    xr.Dataset({"weight": (("target", "train"), np.ones((2, 3)))},
               attrs={"dmdask_datamodels": 1}).to_zarr(dm)
    result = xr.Dataset({"x": ("a", np.arange(3))})
    for target, what in ((p, "run store"), (dm, "fitted datamodels")):
        with pytest.raises(DmdaskError, match=what):
            _save_result(result, str(target))
    assert dmdask.store_info(p)["n_models"] == 8  # untouched
    assert "weight" in xr.open_zarr(dm)
    _save_result(result, str(tmp_path / "r.zarr"))
    _save_result(result, str(tmp_path / "r.zarr"))  # a result may be recomputed in place
