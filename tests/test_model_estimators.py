"""Model-based estimators (dmdask.analysis.estimators.model) against independent implementations:
NumPy transcriptions of REFERENCE §2.6 on the very models the estimators train, dattri
(influence functions, TracInCP, TRAK), and leave-one-out retraining of the convex
DigitsLogistic (influence ≈ LOO; every estimator correlates positively with LOO effects)."""

from __future__ import annotations

import numpy as np
import pytest

import dmdask
from dmdask.analysis import estimators
from dmdask.analysis.estimators import model as M
from dmdask.errors import DmdaskError, InputError, JobError
from dmdask.store.sampling import model_seeds

pytestmark = pytest.mark.torch

MLP = {"hidden": 16, "epochs": 3}
TG = np.arange(0, 500, 25)  # 20 targets keep the references cheap


@pytest.fixture(scope="module")
def mlp_store(tmp_path_factory):
    """A DigitsMLP store (small net) with 3 trained random models."""
    from jobs.digits import DigitsMLP

    p = str(tmp_path_factory.mktemp("m") / "mlp.zarr")
    dmdask.create_store(p, "jobs.digits:DigitsMLP", 3, 0.5, params=MLP, block_size=3)
    ds = dmdask.open_store(p)
    margins = DigitsMLP(**MLP).train_block(ds["mask"].values, ds["seed"].values)
    dmdask.store.write_block(p, 0, margins)
    return p


@pytest.fixture(scope="module")
def logistic_store(tmp_path_factory):
    p = str(tmp_path_factory.mktemp("l") / "log.zarr")
    # l2 = 0.1: low leverage, so the influence function is close to LOO (REFERENCE §5.3:
    # it misses the factor 1/(1 − ℓ''h), slope 1.19 at the job's default l2 = 1e-3)
    dmdask.create_store(p, "jobs.digits:DigitsLogistic", 0, 0.5, params={"l2": 0.1})
    return p


def _np(t):
    return t.detach().double().numpy()


def _trained(ds, **kw):
    job = M.load_job(ds, "test")
    return job, M.train_models(ds, job, **kw)


def _last_layer_np(p, h, y):
    """Closed-form last-layer quantities of z = h W2ᵀ + b2: per-example CE gradients
    [(p − e_y) ⊗ [h; 1]] and the mean CE Hessian Σ (diag p − ppᵀ) ⊗ [h; 1][h; 1]ᵀ / n."""
    a = np.hstack([h, np.ones((h.shape[0], 1))])
    z = a @ np.hstack([p["W2"], p["b2"][:, None]]).T
    pr = np.exp(z - z.max(1, keepdims=True))
    pr /= pr.sum(1, keepdims=True)
    r = pr.copy()
    r[np.arange(len(y)), y] -= 1.0
    g = np.einsum("nc,nk->nck", r, a)
    S = np.einsum("nc,cd->ncd", pr, np.eye(pr.shape[1])) - np.einsum("nc,nd->ncd", pr, pr)
    H = np.einsum("ncd,nk,nl->ckdl", S, a, a) / len(y)
    C, K = r.shape[1], a.shape[1]
    # the estimator's parameter order: W2 [C, H] row-major, then b2 [C]
    cell = np.arange(C * K).reshape(C, K)
    idx = np.concatenate([cell[:, :-1].ravel(), cell[:, -1]])
    return g.reshape(len(y), C * K)[:, idx], H.reshape(C * K, C * K)[np.ix_(idx, idx)]


# ------------------------------------------------------------------ hooks
def test_hooks_reproduce_train_block():
    """train_params/train_checkpoints train the very models train_block trains, and
    features/head give their logits (to float32 rounding: one model's 2-D matmuls sum in
    another order than train_block's batched ones)."""
    import torch

    from jobs._common import margins_from_logits
    from jobs.digits import DigitsLogistic, DigitsMLP

    rng = np.random.default_rng(1)
    masks = rng.random((3, 1297)) < 0.5
    seeds = np.arange(3, dtype=np.uint64)
    for job in (DigitsMLP(**MLP), DigitsLogistic()):
        ref = job.train_block(masks, seeds)
        params = job.train_params(masks, seeds)
        x = job.model_inputs()["x_target"]
        for b in range(3):
            p = {k: v[b] for k, v in params.items()}
            z = job.head(p, job.features(p, x)).detach().numpy()
            got = margins_from_logits(z[None], job.y_target)[0]
            np.testing.assert_allclose(got, ref[b], rtol=1e-5, atol=1e-5)
    job = DigitsMLP(**MLP)
    ck, lr = job.train_checkpoints(masks, seeds)
    final = job.train_params(masks, seeds)
    assert len(ck) == MLP["epochs"] and lr.shape == (3, MLP["epochs"]) and (lr > 0).all()
    for k in final:
        assert torch.equal(ck[-1][k], final[k])
        assert not torch.equal(ck[0][k], final[k])
    # the lr of an epoch is the mean of the one-cycle schedule over its steps
    from jobs._batched_mlp import lr_factor

    k = -(-int(masks[0].sum()) // job.batch_size)
    sched = job.lr * lr_factor(np.arange(k * job.epochs) / (k * job.epochs), job.warmup)
    np.testing.assert_allclose(lr[0], sched.reshape(job.epochs, k).mean(1), rtol=1e-6)


# ------------------------------------------------------------------ references
def test_representation_similarity_reference(mlp_store):
    ds = dmdask.open_store(mlp_store)
    job, tr = _trained(ds, models="full", n_models=2, seed=3)
    inp = job.model_inputs()
    ref = 0
    for b in range(2):
        p = {k: _np(v[b]) for k, v in tr["params"].items()}

        def feats(x, p=p):
            return np.maximum(x @ p["W1"][:-1] + p["W1"][-1], 0)

        htr, htg = feats(_np(inp["x_train"])), feats(_np(inp["x_target"])[TG])
        ref = ref - np.sqrt(((htg[:, None] - htr[None]) ** 2).sum(-1)) / 2
    sc = estimators.compute(ds, "representation_similarity", n_models=2, seed=3, targets=TG)
    np.testing.assert_allclose(sc.values, ref, rtol=1e-9, atol=1e-9)
    assert sc.attrs["n_models"] == 2 and sc.attrs["seed"] == 3 and sc.attrs["models"] == "full"
    cos = estimators.compute(ds, "representation_similarity", seed=3, targets=TG, metric="cosine")
    assert np.abs(cos.values).max() <= 1 + 1e-12


def test_influence_last_layer_reference_and_dattri(mlp_store):
    """Closed-form NumPy last-layer IF and dattri's IFAttributorExplicit agree with ours."""
    pytest.importorskip("dattri")
    import torch
    from dattri.algorithm.influence_function import IFAttributorExplicit
    from dattri.task import AttributionTask
    from torch.utils.data import DataLoader, TensorDataset

    ds = dmdask.open_store(mlp_store)
    damping = 1e-2
    sc = estimators.compute(ds, "influence_last_layer", targets=TG, damping=damping,
                            penalty=False, seed=1)
    job, tr = _trained(ds, models="full", n_models=1, seed=1)
    p = {k: _np(v[0]) for k, v in tr["params"].items()}
    inp = job.model_inputs()
    xtr, ytr = _np(inp["x_train"]), inp["y_train"].numpy()
    xtg, ytg = _np(inp["x_target"])[TG], inp["y_target"].numpy()[TG]

    def feats(x):
        return np.maximum(x @ p["W1"][:-1] + p["W1"][-1], 0)

    gtr, H = _last_layer_np(p, feats(xtr), ytr)
    gtg, _ = _last_layer_np(p, feats(xtg), ytg)
    ref = gtg @ np.linalg.solve(H + damping * np.eye(len(H)), gtr.T)
    np.testing.assert_allclose(sc.values, ref, rtol=1e-7, atol=1e-9 * np.abs(ref).max())

    # dattri (independent implementation: torch.func Hessian of the loss it is given)
    pt = M._one(tr["params"], 0, torch.float64)
    mod = M._Functional.build(job, pt)

    def loss(params, data):
        x, y = data
        return torch.nn.functional.cross_entropy(torch.func.functional_call(mod, params, x), y)

    att = IFAttributorExplicit(AttributionTask(loss_func=loss, model=mod,
                                               checkpoints=mod.state_dict()),
                               layer_name=["W2", "b2"], regularization=damping)
    xtr_t = inp["x_train"].double()
    full = DataLoader(TensorDataset(xtr_t, inp["y_train"]), batch_size=len(xtr_t))
    att.cache(full)  # one batch: dattri sums per-batch inverse-HVPs
    test = DataLoader(TensorDataset(inp["x_target"].double()[TG], inp["y_target"][TG]),
                      batch_size=len(TG))
    d = att.attribute(full, test).T.detach().numpy()
    np.testing.assert_allclose(sc.values, d, rtol=1e-6, atol=1e-7 * np.abs(d).max())


def test_tracincp_matches_dattri(mlp_store):
    pytest.importorskip("dattri")
    import torch
    from dattri.algorithm.tracin import TracInAttributor
    from dattri.task import AttributionTask
    from torch.utils.data import DataLoader, TensorDataset

    ds = dmdask.open_store(mlp_store)
    sc = estimators.compute(ds, "tracincp", targets=TG, seed=2)
    job, tr = _trained(ds, models="full", n_models=1, seed=2, checkpoints=True)
    ck = [M._one(c, 0, torch.float64) for c in tr["checkpoints"]]
    mod = M._Functional.build(job, ck[-1])

    def loss(params, data):
        x, y = data
        return torch.nn.functional.cross_entropy(torch.func.functional_call(mod, params, x), y)

    att = TracInAttributor(AttributionTask(loss_func=loss, model=mod, checkpoints=ck),
                           weight_list=torch.tensor(tr["lr"][0]), normalized_grad=False)
    att.projector_kwargs = None  # dattri projects to 512 dims unless told not to
    inp = job.model_inputs()
    d = att.attribute(
        DataLoader(TensorDataset(inp["x_train"].double(), inp["y_train"]), batch_size=700),
        DataLoader(TensorDataset(inp["x_target"].double()[TG], inp["y_target"][TG]),
                   batch_size=len(TG))).T.detach().numpy()
    np.testing.assert_allclose(sc.values, d, rtol=1e-6, atol=1e-7 * np.abs(d).max())
    # a subset of the checkpoints, and the last layer alone
    last = estimators.compute(ds, "tracincp", targets=TG, seed=2, epochs=[-1], layers="last")
    assert last.attrs["epochs"] == str(MLP["epochs"] - 1) and last.attrs["layers"] == "last"
    assert not np.allclose(last.values, sc.values)


def _trak_reference(job, tr, tpos, proj_dim, seed, lambda_reg=0.0):
    """REFERENCE §2.6 transcribed in NumPy (float64) on the same models, with traker's
    projection matrices (BasicProjector, per model id)."""
    import torch
    from trak.projectors import BasicProjector

    inp = job.model_inputs()
    xtr, ytr = inp["x_train"].float(), inp["y_train"]
    xtg, ytg = inp["x_target"].float()[tpos], inp["y_target"][tpos]
    Mm = tr["masks"].shape[0]
    acc, Q = 0.0, 0.0
    for b in range(Mm):
        p = M._one(tr["params"], b, torch.float64)
        names = tuple(p)
        g = _np(M._flat_grads(job, p, names, xtr.double(), ytr, "margin"))
        gt = _np(M._flat_grads(job, p, names, xtg.double(), ytg, "margin"))
        P = g.shape[1]
        proj = BasicProjector(grad_dim=P, proj_dim=proj_dim, seed=seed, proj_type="normal",
                              device="cpu", dtype=torch.float32,
                              block_size=min(proj_dim, 512), model_id=b)
        R = _np(proj.project(torch.eye(P), model_id=b))  # [P, k]
        phi, phit = g @ R / np.sqrt(P), gt @ R / np.sqrt(P)
        inv = np.linalg.inv(phi.T @ phi + lambda_reg * np.eye(proj_dim))
        inv /= np.abs(inv).mean()
        acc = acc + phi @ inv @ phit.T / Mm  # [N, T]
        z = _np(job.head(p, job.features(p, xtr.double())))
        pr = np.exp(z - z.max(1, keepdims=True))
        pr /= pr.sum(1, keepdims=True)
        Q = Q + (1 - pr[np.arange(len(ytr)), ytr.numpy()]) / Mm
    return (acc * Q[:, None]).T


def test_trak_matches_transcription(mlp_store):
    pytest.importorskip("trak")
    ds = dmdask.open_store(mlp_store)
    sc = estimators.compute(ds, "trak", n_models=2, seed=4, proj_dim=64, targets=TG)
    job, tr = _trained(ds, models="subsets", n_models=2, seed=4)
    ref = _trak_reference(job, tr, TG, 64, 4)
    assert np.corrcoef(sc.values.ravel(), ref.ravel())[0, 1] > 0.9999
    np.testing.assert_allclose(sc.values, ref, rtol=0, atol=2e-3 * np.abs(ref).max())
    assert sc.attrs["n_models"] == 2 and sc.attrs["proj_dim"] == 64
    assert sc.attrs["alpha"] == 0.5 and sc.attrs["models"] == "subsets"


def test_trak_matches_dattri_one_model(mlp_store):
    """dattri's TRAKAttributor (no c normalisation; same BasicProjector seeds) gives the
    same scores up to the positive factor c for one model."""
    pytest.importorskip("dattri")
    pytest.importorskip("trak")
    import torch
    from dattri.algorithm.trak import TRAKAttributor
    from dattri.task import AttributionTask
    from torch.utils.data import DataLoader, TensorDataset

    ds = dmdask.open_store(mlp_store)
    sc = estimators.compute(ds, "trak", n_models=1, seed=0, proj_dim=64, targets=TG,
                            models="full")
    job, tr = _trained(ds, models="full", n_models=1, seed=0)
    p = M._one(tr["params"], 0, torch.float32)
    mod = M._Functional.build(job, p)

    def f(params, data):
        x, y = data
        z = torch.func.functional_call(mod, params, x.unsqueeze(0))[0]
        hit = torch.arange(z.shape[0]) == y
        return torch.where(hit, z, 0.0).sum() - torch.logsumexp(torch.where(hit, -torch.inf, z), 0)

    def prob(params, data):
        x, y = data
        z = torch.func.functional_call(mod, params, x.unsqueeze(0))[0]
        return torch.where(torch.arange(z.shape[0]) == y, torch.softmax(z, 0), 0.0).sum()

    att = TRAKAttributor(AttributionTask(loss_func=f, model=mod, checkpoints=[mod.state_dict()]),
                         correct_probability_func=prob, device="cpu",
                         projector_kwargs={"proj_dim": 64, "proj_seed": 0,
                                           "proj_type": "normal", "proj_max_batch_size": 64})
    inp = job.model_inputs()
    att.cache(DataLoader(TensorDataset(inp["x_train"], inp["y_train"]), batch_size=64))
    d = att.attribute(DataLoader(TensorDataset(inp["x_target"][TG], inp["y_target"][TG]),
                                 batch_size=len(TG))).T.detach().numpy()
    r = np.corrcoef(sc.values.ravel(), d.ravel())[0, 1]
    assert r > 0.999, r


# ------------------------------------------------------------------ convex job: LOO
@pytest.mark.slow
def test_influence_and_signs_vs_loo_logistic(logistic_store):
    """DigitsLogistic (convex, solved to 1e-10): the exact influence with the job's L2
    penalty and no damping predicts leave-one-out retraining, and every estimator that
    applies (IF, TRAK, representation similarity) correlates positively with the exact LOO
    effects on the margins (REFERENCE §2 checks)."""
    from jobs.digits import DigitsLogistic

    pytest.importorskip("trak")
    ds = dmdask.open_store(logistic_store)
    job = DigitsLogistic(l2=0.1)
    rng = np.random.default_rng(0)
    loo = np.sort(rng.choice(1297, 24, replace=False))
    masks = np.ones((1 + loo.size, 1297), bool)
    masks[np.arange(1, 1 + loo.size), loo] = False
    W = job.fit(masks)
    Z = job.logits(W)  # [1 + L, T, 10]
    y = job.y_target
    lse = np.log(np.exp(Z - Z.max(-1, keepdims=True)).sum(-1)) + Z.max(-1)
    ce = lse - np.take_along_axis(Z, np.broadcast_to(y[None, :, None], Z.shape[:2] + (1,)),
                                  -1)[..., 0]
    dloss = (ce[1:] - ce[0]).T  # [T, L]: loss without j minus with
    from jobs._common import margins_from_logits

    mg = margins_from_logits(Z.astype(np.float64), y).astype(np.float64)
    dmargin = (mg[0] - mg[1:]).T  # [T, L]: presence effect on the margin

    sc = estimators.compute(ds, "influence_last_layer", damping=0.0)
    assert sc.attrs["penalty"] is True
    tau = sc.values[:, loo] / 1297  # removing j raises the loss by ≈ τ_j / n (+ a shift)

    def centred(a):
        return (a - a.mean(1, keepdims=True)).ravel()

    r = np.corrcoef(centred(tau), centred(dloss))[0, 1]
    slope = np.polyfit(centred(tau), centred(dloss), 1)[0]
    assert r > 0.9999 and 1.0 < slope < 1.03, (r, slope)

    for name, kw in (("influence_last_layer", {}), ("trak", {"n_models": 5, "proj_dim": 256}),
                     ("representation_similarity", {})):
        s = estimators.compute(ds, name, **kw).values[:, loo]
        r = np.corrcoef(centred(s), centred(dmargin))[0, 1]
        assert r > 0.05, (name, r)


# ------------------------------------------------------------------ options and errors
def test_determinism_and_store_models(mlp_store):
    pytest.importorskip("trak")
    ds = dmdask.open_store(mlp_store)
    a = estimators.compute(ds, "influence_last_layer", targets=TG, seed=5)
    b = estimators.compute(ds, "influence_last_layer", targets=TG, seed=5)
    c = estimators.compute(ds, "influence_last_layer", targets=TG, seed=6)
    np.testing.assert_array_equal(a.values, b.values)
    assert not np.allclose(a.values, c.values)
    t1 = estimators.compute(ds, "trak", n_models=2, proj_dim=32, targets=TG, seed=1)
    t2 = estimators.compute(ds, "trak", n_models=2, proj_dim=32, targets=TG, seed=1)
    np.testing.assert_array_equal(t1.values, t2.values)
    # models="store": the store's own models, which reproduce its margins
    job, tr = _trained(ds, models="store", n_models=3, seed=0)
    np.testing.assert_array_equal(tr["masks"], ds["mask"].values)
    np.testing.assert_array_equal(tr["seeds"], ds["seed"].values)
    _, full = _trained(ds, models="full", n_models=2, seed=9)
    np.testing.assert_array_equal(full["seeds"], model_seeds(9, np.arange(2)))
    assert full["masks"].all()
    with pytest.raises(InputError, match="n_models=4"):
        estimators.compute(ds, "representation_similarity", models="store", n_models=4)


def test_errors(mlp_store, logistic_store, tmp_path):
    pytest.importorskip("trak")
    ds = dmdask.open_store(mlp_store)
    with pytest.raises(InputError, match="models"):
        estimators.compute(ds, "representation_similarity", models="nope")
    with pytest.raises(InputError, match="metric"):
        estimators.compute(ds, "representation_similarity", metric="nope")
    with pytest.raises(InputError, match="unknown option"):
        estimators.compute(ds, "influence_last_layer", lam=1.0)
    with pytest.raises(InputError, match="proj_dim"):
        estimators.compute(ds, "trak", proj_dim=5000)
    with pytest.raises(InputError, match="epochs"):
        estimators.compute(ds, "tracincp", epochs=[7])
    # a convex job has no checkpoints: TracInCP says which hook is missing
    with pytest.raises(JobError, match="train_checkpoints"):
        estimators.compute(logistic_store, "tracincp")
    # a job without any model hooks, and a store without a job
    p = str(tmp_path / "ridge.zarr")
    dmdask.create_store(p, "testjobs:RidgeDigits", 0, 0.5)
    for name in estimators.MODEL_BASED:
        if estimators.ESTIMATORS[name].hooks is not None:
            continue  # needs other hooks, or none (tests/test_loo.py, tests/test_values.py)
        with pytest.raises(JobError, match="lacks the model hook"):
            estimators.compute(p, name)
    q = str(tmp_path / "jobless.zarr")
    dmdask.store.create_jobless_store(q, 10, 3)
    with pytest.raises(DmdaskError, match="no job"):
        estimators.compute(q, "trak")


# ------------------------------------------------------------------ TRAK's projection dimension
@pytest.fixture(scope="module")
def mlp_heldout_store(tmp_path_factory):
    """A DigitsMLP store (small net) with 24 trained random and 6 trained held-out models."""
    from jobs.digits import DigitsMLP

    p = str(tmp_path_factory.mktemp("mh") / "mlp.zarr")
    dmdask.create_store(p, "jobs.digits:DigitsMLP", 24, 0.5, params=MLP, block_size=30)
    dmdask.add_models(p, "heldout", n=6)
    ds = dmdask.open_store(p)
    margins = DigitsMLP(**MLP).train_block(ds["mask"].values, ds["seed"].values)
    dmdask.store.write_block(p, 0, margins)
    return p


def test_trak_proj_dim_chosen_on_fitting_models_only(mlp_heldout_store):
    """``proj_dim="auto"`` (the default) picks, among the documented candidates, the one
    whose scores have the highest LDS on the store's fitting models — computed here
    independently with scipy from each candidate's own scores — and no change to the
    held-out models' margins changes the choice or the scores."""
    pytest.importorskip("trak")
    import dask
    from scipy import stats

    # the default candidates: powers of two to 2048, those above n_train/2 dropped
    assert M.trak_proj_dims(1297) == [32, 64, 128, 256, 512]
    assert M.trak_proj_dims(1297, lambda_reg=0.1)[-1] == 2048
    ds = dmdask.open_store(mlp_heldout_store)
    kw = {"n_models": 2, "seed": 3, "targets": TG, "select_models": 24}
    with dask.config.set({"dmdask.estimators.trak-proj-dims": [16, 64]}):  # cheap
        sc = estimators.compute(ds, "trak", **kw)
        cands = M.trak_proj_dims(ds.sizes["train"])
    assert cands == [16, 64]
    assert sc.attrs["proj_dim_candidates"] == "16,64"
    rows = np.flatnonzero(ds["kind"].values == "random")
    X = ds["mask"].values[rows].astype(np.float64)
    Y = ds["margin"].values[rows][:, TG].astype(np.float64)
    crit, each = [], {}
    for k in cands:
        each[k] = estimators.compute(ds, "trak", proj_dim=k, **kw)
        z = X @ each[k].values.T
        crit.append(np.nanmean([stats.spearmanr(z[:, t], Y[:, t])[0] for t in range(TG.size)]))
    want = cands[int(np.argmax(crit))]
    assert sc.attrs["proj_dim"] == want and "auto" in sc.attrs["proj_dim_rule"]
    np.testing.assert_allclose([float(c) for c in sc.attrs["proj_dim_fitting_lds"].split(",")],
                               crit, atol=1e-6)
    np.testing.assert_array_equal(sc.values, each[want].values)
    # held-out margins replaced by their negation plus noise: nothing changes
    held = (ds["kind"] == "heldout").values
    noise = np.random.default_rng(0).normal(size=ds["margin"].shape).astype(np.float32)
    ds2 = ds.copy()
    ds2["margin"] = ds["margin"].copy(data=np.where(held[:, None], -ds["margin"].values + noise,
                                                    ds["margin"].values))
    with dask.config.set({"dmdask.estimators.trak-proj-dims": [16, 64]}):
        sc2 = estimators.compute(ds2, "trak", **kw)
    assert sc2.attrs["proj_dim"] == want
    assert sc2.attrs["proj_dim_fitting_lds"] == sc.attrs["proj_dim_fitting_lds"]
    np.testing.assert_array_equal(sc2.values, sc.values)
