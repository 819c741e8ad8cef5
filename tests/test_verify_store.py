"""The protocols on a real job through run stores and dmdask.train: the verifier's models are
``verify`` models of its own store, spot checks retrain the prover's (mask, seed) models, a
rerun after an interruption trains nothing new and decides the same, the prover's store must
match the challenge, and the CLI prints the decision and the trainings of each side."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import dmdask
from dmdask.errors import InputError
from dmdask.store.trainsets import ensure_models, model_margins
from dmdask.verify import protocols, training

RIDGE = "testjobs:RidgeDigits"
N, T = 40, 3
EPS_U, DELTA = 0.5, 0.2   # ε = 0.5·bound²: a few thousand cheap closed-form trainings
TRAIN = {"progress": False}


@pytest.fixture(scope="module", autouse=True)
def _cluster():
    """One real local cluster for the module (each dmdask.train joins it)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as c, \
            Client(c) as client:
        TRAIN["client"] = client
        yield
        TRAIN.pop("client")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    p = str(tmp_path_factory.mktemp("v") / "src.zarr")
    dmdask.create_store(p, job=RIDGE, params={"n_train": N, "n_target": T}, n_models=64,
                        alpha=0.5, block_size=64)
    dmdask.train(p, **TRAIN)
    return p


def _ols_scores(source, target):
    """The prover's honest scores: OLS datamodel of the store's models for one target."""
    ds = dmdask.open_store(source)
    x = ds.mask.values.astype(float)
    y = ds.margin.values[:, target].astype(float)
    coef, *_ = np.linalg.lstsq(np.hstack([np.ones((len(x), 1)), x]), y, rcond=None)
    return coef[1:]


def test_seeded_models_keep_their_seed_and_are_found_again(source, tmp_path):
    p = str(tmp_path / "v.zarr")
    training._job_store(p, source, 7)
    rng = np.random.default_rng(0)
    masks = rng.random((3, N)) < 0.5
    seeds = np.array([5, 6, 2**63 + 3], np.uint64)
    idx = ensure_models(p, masks, kind="verify", runs=1, seeds=seeds)
    ds = dmdask.open_store(p)
    np.testing.assert_array_equal(ds.seed.values[idx[:, 0]], seeds)
    np.testing.assert_array_equal(ensure_models(p, masks, kind="verify", runs=1, seeds=seeds),
                                  idx)
    other = ensure_models(p, masks[:1], kind="verify", runs=1, seeds=np.array([9], np.uint64))
    assert other[0, 0] not in idx
    fresh = ensure_models(p, masks[:1], kind="verify", runs=1)  # no seed: the store's own
    assert dmdask.open_store(p).seed.values[fresh[0, 0]] not in seeds
    with pytest.raises(InputError, match="runs=1"):
        ensure_models(p, masks, kind="verify", runs=2, seeds=seeds)


def _run(source, workdir, scores, protocol, seed=0):
    c, bound = training.scale_of(source, np.array([0]))
    return training.verify_store(source, scores[None], EPS_U * bound ** 2, DELTA,
                                 protocol=protocol, targets=[0], workdir=str(workdir),
                                 seed=seed, train_options=TRAIN)


@pytest.mark.slow
def test_interactive_verification_of_a_real_job_resumes_and_counts(source, tmp_path):
    a = _ols_scores(source, 0)
    v = _run(source, tmp_path / "w", a, "interactive")
    plan = v.plan
    assert v.failed_checks == 0  # deterministic job: bitwise CHECKEQUIV passes
    assert v.verifier_trainings == plan.n_checks + plan.n_mse
    assert v.prover_trainings == plan.n_challenge
    vs = dmdask.open_store(v.extra["verifier_store"])
    n_verify = int((vs.kind.values == "verify").sum())
    # distinct (mask, seed) models: at most what the protocol asked for
    assert 0 < n_verify <= plan.n_checks + plan.n_mse
    assert v.extra["verifier_trained_now"] == n_verify
    # the spot checks were trained with the prover's seeds
    cs = dmdask.open_store(v.extra["challenge_store"])
    assert set(cs.seed.values.tolist()) & set(vs.seed.values.tolist())
    # rerun (as after a kill): nothing new is trained, same decision and estimates
    again = _run(source, tmp_path / "w", a, "interactive")
    assert again.extra["verifier_trained_now"] == 0 and again.extra["prover_trained_now"] == 0
    assert again.accepted == v.accepted
    np.testing.assert_array_equal(again.mse_hat, v.mse_hat)
    np.testing.assert_array_equal(again.b_ge2_hat, v.b_ge2_hat)


def test_store_verifier_agrees_with_direct_training(source, tmp_path):
    """The margins the verifier reads are the job's own outputs on those masks."""
    from testjobs import RidgeDigits

    c, _ = training.scale_of(source, np.array([1]))
    p = training._job_store(str(tmp_path / "v.zarr"), source, 3)
    tr = training.StoreTrainer(p, [1], offset=c, train_options=TRAIN)
    masks = np.random.default_rng(1).random((5, N)) < 0.5
    got = tr.train(masks, np.zeros(5, np.uint64), np.arange(N), fresh=True)
    want = RidgeDigits(n_train=N, n_target=T).train_block(masks, np.zeros(5))[:, [1]]
    np.testing.assert_allclose(got + c, want, rtol=1e-6)
    assert tr.trained == 5 and tr.new == 5


def test_a_prover_store_that_does_not_match_the_challenge_is_refused(source, tmp_path):
    plan = protocols.make_plan(0.5, DELTA, 0.5)
    rng = np.random.default_rng(0)
    ch, _ = protocols.challenge(plan, np.arange(N), rng)
    p = training._job_store(str(tmp_path / "c.zarr"), source, 1)
    ensure_models(p, ch.masks[:-1], kind="verify", runs=1, seeds=ch.seeds[:-1])
    with pytest.raises(InputError, match="lacks 1 of the"):
        training.message_from_store(p, ch, [0], np.zeros((1, N)))
    ensure_models(p, ch.masks[-1:], kind="verify", runs=1, seeds=ch.seeds[-1:])
    with pytest.raises(InputError, match="untrained"):
        training.message_from_store(p, ch, [0], np.zeros((1, N)))
    assert np.isnan(model_margins(p, [0])).all()


def test_store_without_a_job_is_refused(tmp_path):
    from dmdask.store.runstore import create_jobless_store

    p = create_jobless_store(str(tmp_path / "nojob.zarr"), N, T, alpha=0.5)
    with pytest.raises(InputError, match="no job"):
        training.verify_store(p, np.zeros((T, N)), 0.1, 0.1, bound=1.0)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "dmdask.cli", *args], capture_output=True,
                          text=True, env=os.environ.copy())


@pytest.mark.slow
def test_cli_verify_prints_the_decision_and_both_sides_trainings(source, tmp_path):
    a = _ols_scores(source, 0)
    f = str(tmp_path / "a.npy")
    np.save(f, a)
    _, bound = training.scale_of(source, np.array([0]))
    eps = bound ** 2  # the coarsest ε: the CLI's plumbing, not the statistics, is tested here
    args = ["verify", "--store", source, "--scores", f, "--targets", "0", "--epsilon", str(eps),
            "--delta", str(DELTA), "--workdir", str(tmp_path / "w"), "--no-progress",
            # the module's running cluster: no LocalCluster start-up per command
            "--scheduler", TRAIN["client"].scheduler.address]
    r = _cli(*args, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["decision"] in ("accept", "abort")
    assert out["verifier_trainings"] == out["plan"]["n_checks"] + out["plan"]["n_mse"]
    assert out["prover_trainings"] == out["plan"]["n_challenge"]
    # the same command again (as after a kill): every model is found trained, nothing new
    r = _cli(*args)
    assert r.returncode == 0, r.stderr
    assert "verifier trainings" in r.stdout and "prover trainings" in r.stdout
    assert f"{out['verifier_trainings']} (0 trained now)" in r.stdout
    assert out["decision"] in r.stdout


def test_non_interactive_verification_trains_everything_on_the_verifier_side(source, tmp_path):
    a = _ols_scores(source, 1)
    c, bound = training.scale_of(source, np.array([1]))
    v = training.verify_store(source, a[None], bound ** 2, DELTA, protocol="non-interactive",
                              targets=[1], workdir=str(tmp_path / "w"), train_options=TRAIN)
    assert v.verifier_trainings == v.plan.n_challenge + v.plan.n_mse
    assert v.prover_trainings == 0 and "challenge_store" not in v.extra
    vs = dmdask.open_store(v.extra["verifier_store"])
    assert v.extra["verifier_trained_now"] == int((vs.kind.values == "verify").sum()) > 0
    assert np.isfinite(v.b_ge2_hat).all() and np.isfinite(v.mse_hat).all()


@pytest.mark.parametrize("args,match", [
    (["--epsilon", "0", "--delta", "0.1"], "epsilon"),
    (["--epsilon", "0.1", "--delta", "1"], "delta"),
    (["--epsilon", "0.1", "--delta", "0.1", "--scores", "BAD"], "scores have shape"),
])
def test_cli_refuses_bad_input_in_one_line(source, tmp_path, args, match):
    f = str(tmp_path / "a.npy")
    np.save(f, np.zeros(N))
    bad = str(tmp_path / "bad.npy")
    np.save(bad, np.zeros(N + 1))
    args = [bad if x == "BAD" else x for x in args]
    if "--scores" not in args:
        args += ["--scores", f]
    # the click command in process: a refusal needs no interpreter start-up of its own
    # (tests/test_counterfactual.py checks a refusal's whole stderr through a real process)
    from cli_inprocess import invoke

    r = invoke("verify", "--store", source, "--targets", "0", "--bound", "1",
               "--workdir", tmp_path / "w", *args)
    assert r.exit_code == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], r.stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.viz
def test_report_section_lists_each_verdict(tmp_path):
    from dmdask.report import write_report
    from dmdask.verify.learners import make_learner

    lrn = make_learner("mixed", 50, 0.3, seed=1)
    w, _ = lrn.optimal()
    plan = protocols.make_plan(0.4, 0.1, 0.3)
    good = protocols.non_interactive(lrn, w, plan, seed=0)
    bad = protocols.non_interactive(lrn, 0 * w + 3.0, plan, seed=0)
    page = write_report(tmp_path / "r.html", store=None,
                        verification=[good, json.loads(json.dumps(bad.to_dict()))]).read_text()
    sec = page[page.index('id="sec-verification"'):]
    assert sec.count("<tr>") == 3  # header + one row per verdict (one target each)
    assert "accept" in sec and "abort" in sec
    assert str(good.verifier_trainings) in sec
    plain = write_report(tmp_path / "p.html", store=None).read_text()
    assert "sec-verification" not in plain


def test_scores_load_from_npy_or_a_datamodels_result(tmp_path):
    import xarray as xr

    from dmdask.outputs import write_zarr

    w = np.arange(2 * N, dtype=np.float32).reshape(2, N)
    p = str(tmp_path / "dm.zarr")
    write_zarr(xr.Dataset({"weight": (("target", "train"), w), "bias": ("target", [0, 1])},
                          coords={"target": [4, 7]}), p)
    a, targets = training.load_scores(p, N)
    np.testing.assert_array_equal(a, w)
    assert targets.tolist() == [4, 7]
    f = str(tmp_path / "a.npy")
    np.save(f, w[0])
    a, targets = training.load_scores(f, N)
    assert a.shape == (1, N) and targets is None
    with pytest.raises(InputError, match=r"expected \(targets, 41\)"):
        training.load_scores(f, N + 1)
    with pytest.raises(InputError, match="no such scores"):
        training.load_scores(str(tmp_path / "nope.npy"), N)
