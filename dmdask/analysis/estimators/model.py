"""Model-based estimators: attributions from trained models of the store's job
(REFERENCE §2.6): representation similarity, influence functions on the last layer
(Koh & Liang), TracInCP and TRAK. Formulas, options and costs: ``docs/estimators.md``.

They need a store made with a job (``create_store``) whose class has the optional *model
hooks* of :mod:`dmdask.store.jobspec` (``model_inputs``, ``train_params``, ``features``, ``head``,
``last_layer``; TracInCP also ``train_checkpoints``). The job is constructed from the store's
metadata and checked against the store's fingerprint, then trains ``n_models`` models:

* ``models="full"``: on the full training set, seeds ``model_seeds(seed, 0..M-1)``
  (default for representation similarity, influence functions and TracInCP, as App. F.2);
* ``models="subsets"``: on fresh α-subsets ``sample_masks(seed, 0..M-1, N, alpha)`` in the
  store's sampling scheme, α the store's unless ``alpha=`` (default for TRAK, as the TRAK
  paper's ensembles);
* ``models="store"``: the store's first ``n_models`` completed random models (their masks
  and seeds: the very models whose margins the store holds).

Every function returns ``make_scores(...)`` ``(target, train)`` scores without a bias
(``dmdask.evaluate`` calibrates them), sign τ > 0 = presence raises the target's output;
``attrs`` record ``n_models``, ``models``, ``seed`` and the estimator's options. Per-model
work runs in float64 (except TRAK, which runs in ``traker``'s float32), and scores are the
mean over models.
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
from typing import Any

import numpy as np
import xarray as xr

from ... import config, optional
from ...errors import InputError, JobError
from ...store import jobspec
from ..scores import make_scores

__all__ = ["MODEL_HOOKS", "influence_last_layer", "load_job", "representation_similarity",
           "tracincp", "trak", "train_models"]

#: the hooks every model-based estimator needs (TracInCP also needs ``train_checkpoints``)
MODEL_HOOKS = ("model_inputs", "train_params", "features", "head", "last_layer")
MODEL_CHOICES = ("full", "subsets", "store")


# ------------------------------------------------------------------ job and models
def load_job(ds: xr.Dataset, estimator: str, hooks=MODEL_HOOKS):
    """The store's job, constructed from its metadata after the interface check; raises
    :class:`JobError` for a jobless store or a job without ``hooks``."""
    meta = ds.attrs.get("dmdask") or {}
    spec = meta.get("job")
    if not spec:
        raise JobError(f"{estimator} needs trained models, but this run store has no job "
                       "(imported or synthetic runs); use a store made with create_store")
    cls = jobspec.resolve_job_class(spec["path"])
    missing = [h for h in hooks if getattr(cls, h, None) is None]
    if missing:
        raise JobError(f"{estimator}: job {spec['path']} lacks the model hook(s) "
                       f"{', '.join(missing)} (see dmdask.store.jobspec: model hooks)")
    job = jobspec.construct_job(spec["path"], spec.get("params") or {})
    desc = jobspec.validate_description(job.describe(), spec["path"])
    if meta.get("fingerprint") and jobspec.fingerprint(desc) != meta["fingerprint"]:
        raise JobError(f"job {spec['path']} now describes a different dataset than the store "
                       "was made with; refusing to attribute with it")
    return job


def _model_set(ds, job, models: str, n_models: int, seed: int, alpha: float | None):
    """Masks [M, N] bool and seeds [M] uint64 of the models to train, and their α."""
    from ...store.sampling import model_seeds, sample_masks

    if models not in MODEL_CHOICES:
        raise InputError(f"models must be one of {MODEL_CHOICES}, not {models!r}")
    n_models = int(n_models)
    if n_models < 1:
        raise InputError(f"n_models must be >= 1, got {n_models}")
    N = ds.sizes["train"]
    idx = np.arange(n_models)
    if models == "full":
        return np.ones((n_models, N), bool), model_seeds(int(seed), idx), 1.0
    meta = ds.attrs["dmdask"]
    if models == "subsets":
        a = alpha if alpha is not None else meta.get("alpha")
        if a is None:
            raise InputError("models='subsets' needs alpha= (the store records none)")
        masks = sample_masks(int(seed), idx, N, float(a), meta.get("sampling", "fixed"))
        return masks, model_seeds(int(seed), idx), float(a)
    from ...fit.datamodels import select_models

    rows, a = select_models(ds, alpha)
    if n_models > rows.size:
        raise InputError(f"n_models={n_models}: the store has {rows.size} completed random "
                         "models; train more or use models='subsets'")
    rows = rows[:n_models]
    masks = np.asarray(ds["mask"].values[rows], bool)
    return masks, np.asarray(ds["seed"].values[rows], np.uint64), a


def train_models(ds, job, *, models: str, n_models: int, seed: int,
                 alpha: float | None = None, checkpoints: bool = False) -> dict[str, Any]:
    """Train the selected models with the job's hooks: ``params`` (batched dict), and with
    ``checkpoints`` also ``checkpoints`` (list of batched dicts) and ``lr`` [M, E]."""
    masks, seeds, a = _model_set(ds, job, models, n_models, seed, alpha)
    t0 = time.perf_counter()
    out: dict[str, Any] = {"masks": masks, "seeds": seeds, "alpha": a}
    if checkpoints:
        ck, lr = job.train_checkpoints(masks, seeds)
        out.update(params=ck[-1] if ck else job.train_params(masks, seeds), checkpoints=ck,
                   lr=np.asarray(lr, np.float64))
    else:
        out["params"] = job.train_params(masks, seeds)
    out["train_seconds"] = time.perf_counter() - t0
    return out


def _one(params: dict, b: int, dtype) -> dict:
    return {k: v[b].detach().to(dtype) for k, v in params.items()}


def _targets(ds, targets):
    n = ds.sizes["target"]
    if targets is None:
        return np.arange(n)
    t = np.asarray(targets, np.int64).ravel()
    if t.size == 0 or t.min() < 0 or t.max() >= n:
        raise InputError(f"targets must be positions in [0, {n})")
    return t


def _inputs(job, tpos, dtype):
    inp = job.model_inputs()
    return (inp["x_train"].to(dtype), inp["y_train"], inp["x_target"][tpos].to(dtype),
            inp["y_target"][tpos])


def _finish(ds, tpos, score, name, trained, seed, opts, seconds):
    attrs = {"n_models": int(trained["masks"].shape[0]), "models": opts.pop("models"),
             "seed": int(seed), "alpha": float(trained["alpha"]),
             "train_seconds": float(trained["train_seconds"]), "seconds": float(seconds)}
    attrs.update({k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                  for k, v in opts.items()})
    return make_scores(score, estimator=name, source="model", output="margin",
                       ds=ds.isel(target=tpos), attrs=attrs)


def _loss(job, params, x, y):
    """Per-example cross-entropy [m] of one model."""
    torch = optional.torch()
    z = job.head(params, job.features(params, x))
    return torch.nn.functional.cross_entropy(z, y, reduction="none")


# ------------------------------------------------------------------ estimators
def representation_similarity(ds, *, n_models: int = 1, seed: int = 0, models: str = "full",
                              metric: str = "l2", alpha: float | None = None, targets=None,
                              **_unused) -> xr.DataArray:
    """τ_j(x) = −‖φ(x) − φ(z_j)‖₂ (``metric="l2"``, App. F.2), cosine similarity
    (``"cosine"``) or φ(x)·φ(z_j) (``"dot"``) in the penultimate layer φ, averaged over
    models. Ranking only: calibrated by :func:`dmdask.evaluate`."""
    torch = optional.torch()
    _reject(_unused)
    if metric not in ("l2", "cosine", "dot"):
        raise InputError(f"metric must be 'l2', 'cosine' or 'dot', not {metric!r}")
    t0 = time.perf_counter()
    job = load_job(ds, "representation_similarity", ("model_inputs", "train_params",
                                                     "features"))
    tpos = _targets(ds, targets)
    tr = train_models(ds, job, models=models, n_models=n_models, seed=seed, alpha=alpha)
    dt = torch.float64
    xtr, _, xtg, _ = _inputs(job, tpos, dt)
    score = torch.zeros(tpos.size, xtr.shape[0], dtype=dt)
    M = tr["masks"].shape[0]
    with torch.no_grad():
        for b in range(M):
            p = _one(tr["params"], b, dt)
            htr, htg = job.features(p, xtr), job.features(p, xtg)
            if metric == "l2":
                s = -torch.cdist(htg, htr)
            elif metric == "cosine":
                nf = torch.nn.functional.normalize
                s = nf(htg, dim=1) @ nf(htr, dim=1).T
            else:
                s = htg @ htr.T
            score += s / M
    return _finish(ds, tpos, score.numpy(), "representation_similarity", tr, seed,
                   {"models": models, "metric": metric}, time.perf_counter() - t0)


def _flat_grads(job, params, names, x, y, output: str, fixed_h=None):
    """Per-example gradients [m, P] of the loss (``output="loss"``) or of TRAK's output
    f = log p_y − log(1 − p_y) (``"margin"``) w.r.t. the parameters ``names`` (the rest held
    fixed); with ``fixed_h`` the head is applied to those features (last-layer gradients)."""
    torch = optional.torch()
    from torch.func import grad, vmap

    rest = {k: v for k, v in params.items() if k not in names}

    def f(sub, xi, yi):
        p = {**rest, **sub}
        h = xi.unsqueeze(0) if fixed_h is not None else job.features(p, xi.unsqueeze(0))
        z = job.head(p, h)[0]
        hit = torch.arange(z.shape[0]) == yi  # no indexing by yi: vmap refuses it
        zy = torch.where(hit, z, 0.0).sum()
        if output == "loss":
            return torch.logsumexp(z, 0) - zy
        return zy - torch.logsumexp(torch.where(hit, -torch.inf, z), 0)

    sub = {k: params[k] for k in names}
    g = vmap(grad(f), in_dims=(None, 0, 0))(sub, fixed_h if fixed_h is not None else x, y)
    return torch.cat([g[k].reshape(g[k].shape[0], -1) for k in names], dim=1)


def influence_last_layer(ds, *, n_models: int = 1, seed: int = 0, models: str = "full",
                         damping: float = 1e-3, penalty: bool = True, rcond: float = 1e-10,
                         alpha: float | None = None, targets=None, **_unused) -> xr.DataArray:
    """Koh & Liang influence on the last layer θ (``job.last_layer``), exactly:
    τ_j(x) = −I_up,loss(z_j, x) = ∇θℓ(x)ᵀ H⁻¹ ∇θℓ(z_j), H = (1/n)Σ_{i∈S}∇²θℓ(z_i) + diag(c)
    + damping·I over the model's training set S, c the job's L2 coefficients
    (``l2_penalty`` hook; ``penalty=False`` drops them). H is inverted by eigendecomposition,
    eigenvalues ≤ ``rcond``·max dropped (the softmax's shift direction is null when nothing
    damps it)."""
    torch = optional.torch()
    from torch.func import hessian

    _reject(_unused)
    if not float(damping) >= 0:
        raise InputError(f"damping must be >= 0, got {damping}")
    t0 = time.perf_counter()
    job = load_job(ds, "influence_last_layer")
    tpos = _targets(ds, targets)
    tr = train_models(ds, job, models=models, n_models=n_models, seed=seed, alpha=alpha)
    dt = torch.float64
    xtr, ytr, xtg, ytg = _inputs(job, tpos, dt)
    names = tuple(job.last_layer)
    M = tr["masks"].shape[0]
    score = torch.zeros(tpos.size, xtr.shape[0], dtype=dt)
    use_pen = penalty and hasattr(job, "l2_penalty")
    for b in range(M):
        p = _one(tr["params"], b, dt)
        with torch.no_grad():
            htr, htg = job.features(p, xtr), job.features(p, xtg)
        gtr = _flat_grads(job, p, names, None, ytr, "loss", fixed_h=htr)
        gtg = _flat_grads(job, p, names, None, ytg, "loss", fixed_h=htg)
        sel = torch.from_numpy(np.flatnonzero(tr["masks"][b]))
        hs, ys = htr[sel], ytr[sel]
        rest = {k: v for k, v in p.items() if k not in names}

        def mean_loss(flat, hs=hs, ys=ys, rest=rest, p=p):
            sub, i = {}, 0
            for k in names:
                sub[k] = flat[i:i + p[k].numel()].reshape(p[k].shape)
                i += p[k].numel()
            z = job.head({**rest, **sub}, hs)
            return torch.nn.functional.cross_entropy(z, ys)

        flat = torch.cat([p[k].reshape(-1) for k in names])
        H = hessian(mean_loss)(flat)
        if use_pen:
            pen = job.l2_penalty({k: v[b:b + 1] for k, v in tr["params"].items()})
            H.diagonal().add_(torch.cat([pen[k][0].reshape(-1).to(dt) for k in names]))
        H.diagonal().add_(float(damping))
        score += (_solve_psd(0.5 * (H + H.T), gtg.T, rcond).T @ gtr.T) / M
    return _finish(ds, tpos, score.numpy(), "influence_last_layer", tr, seed,
                   {"models": models, "damping": float(damping), "penalty": bool(use_pen),
                    "rcond": float(rcond)}, time.perf_counter() - t0)


def _solve_psd(H, B, rcond: float):
    """H⁻¹B for a symmetric PSD H: Cholesky when H is positive definite (damped), else the
    pseudo-inverse from an eigendecomposition, eigenvalues ≤ ``rcond``·max dropped."""
    torch = optional.torch()
    L, info = torch.linalg.cholesky_ex(H)
    if int(info) == 0 and float(L.diagonal().min()) ** 2 > rcond * float(H.diagonal().max()):
        return torch.cholesky_solve(B, L)
    ev, V = torch.linalg.eigh(H)
    keep = ev > rcond * ev.max()
    return (V[:, keep] / ev[keep]) @ (V[:, keep].T @ B)


def tracincp(ds, *, n_models: int = 1, seed: int = 0, models: str = "full",
             layers: str = "all", epochs=None, alpha: float | None = None, targets=None,
             chunk: int = 512, **_unused) -> xr.DataArray:
    """TracInCP: τ_j(x) = Σ_c η_c ∇ℓ(w_c, z_j)·∇ℓ(w_c, x) over the end-of-epoch checkpoints
    c (``epochs``: a list of epoch indices, default all), η_c the mean learning rate of the
    epoch the checkpoint closes, gradients w.r.t. all parameters (``layers="all"``) or the
    last layer (``"last"``); averaged over models."""
    torch = optional.torch()
    _reject(_unused)
    if layers not in ("all", "last"):
        raise InputError(f"layers must be 'all' or 'last', not {layers!r}")
    t0 = time.perf_counter()
    job = load_job(ds, "tracincp", MODEL_HOOKS + ("train_checkpoints",))
    tpos = _targets(ds, targets)
    tr = train_models(ds, job, models=models, n_models=n_models, seed=seed, alpha=alpha,
                      checkpoints=True)
    E = len(tr["checkpoints"])
    ep = list(range(E)) if epochs is None else [int(e) for e in np.atleast_1d(epochs)]
    if not ep or min(ep) < -E or max(ep) >= E:
        raise InputError(f"epochs must index the {E} checkpoints")
    ep = sorted({e % E for e in ep})
    dt = torch.float64
    xtr, ytr, xtg, ytg = _inputs(job, tpos, dt)
    M = tr["masks"].shape[0]
    score = torch.zeros(tpos.size, xtr.shape[0], dtype=dt)
    for b in range(M):
        for e in ep:
            p = _one(tr["checkpoints"][e], b, dt)
            names = tuple(job.last_layer) if layers == "last" else tuple(p)
            gtg = _flat_grads(job, p, names, xtg, ytg, "loss")
            for s in range(0, xtr.shape[0], chunk):  # bound memory: [chunk, P] at a time
                gtr = _flat_grads(job, p, names, xtr[s:s + chunk], ytr[s:s + chunk], "loss")
                score[:, s:s + chunk] += (float(tr["lr"][b, e]) / M) * (gtg @ gtr.T)
    return _finish(ds, tpos, score.numpy(), "tracincp", tr, seed,
                   {"models": models, "layers": layers,
                    "epochs": ",".join(map(str, ep))}, time.perf_counter() - t0)


class _Functional:
    """A ``torch.nn.Module`` around a job's functional model (what ``traker`` needs):
    parameters named as the job names them, forward = head(features(x))."""

    @staticmethod
    def build(job, params: dict):
        torch = optional.torch()

        class Model(torch.nn.Module):
            def __init__(self):
                super().__init__()
                for k, v in params.items():
                    self.register_parameter(k, torch.nn.Parameter(v.detach().clone()))

            def forward(self, x):
                p = {k: getattr(self, k) for k in params}
                return job.head(p, job.features(p, x))

        return Model()


def trak_proj_dims(n_train: int, lambda_reg: float = 0.0) -> list[int]:
    """The projection dimensions ``proj_dim="auto"`` chooses among: the setting
    ``dmdask.estimators.trak-proj-dims`` (powers of two up to TRAK's own 2048), keeping
    those ≤ n_train/2 unless ``lambda_reg`` > 0 — ΦᵀΦ is proj_dim × proj_dim, estimated
    from n_train projected gradients, and singular beyond n_train (the smallest candidate
    is always kept)."""
    dims = sorted(int(k) for k in config.get("estimators.trak-proj-dims",
                                             [32, 64, 128, 256, 512, 1024, 2048]))
    if lambda_reg > 0:
        return dims
    ok = [k for k in dims if k <= n_train // 2]
    return ok or [min(dims[0], int(n_train))]


def _fitting_lds(ds, scores_tn, tpos, n_sel, alpha):
    """Mean over targets of the Spearman correlation, over the first ``n_sel`` fitting models
    (``kind == "random"``), between mask @ τ and their margins: TRAK's LDS on the fitting
    models, one run each. Reads no held-out model."""
    from ...fit.datamodels import select_models
    from ..metrics import lds

    rows = select_models(ds, alpha)[0][:n_sel]
    masks = np.asarray(ds["mask"][rows].values)
    margins = np.asarray(ds["margin"][rows].values[:, tpos], np.float64)
    return lds(np.asarray(scores_tn, np.float64), masks, margins).mean


def trak(ds, *, n_models: int = 10, seed: int = 0, models: str = "subsets",
         proj_dim: int | str = "auto", lambda_reg: float = 0.0, proj_type: str = "normal",
         alpha: float | None = None, targets=None, batch_size: int = 2048,
         select_models: int | None = None, **_unused) -> xr.DataArray:
    """TRAK (Park et al. 2023) by the authors' ``traker`` 0.3.2 on the CPU (BasicProjector,
    float32): per model φ(z) = Pᵀ∇θ f(z)/√#params with f = log p_y − log(1 − p_y),
    F = Φ(ΦᵀΦ + λ_reg I)⁻¹/c (c = mean |entry| of the inverse), and
    τ(x) = [(1/M)Σ_m F_m φ_m(x)] ⊙ [(1/M)Σ_m (1 − p_m(z_j))]. Projection seed ``seed``;
    traker's memmaps live in a temporary directory.

    ``proj_dim``: an integer (≤ n_train unless ``lambda_reg`` > 0), or ``"auto"``
    (default): each of :func:`trak_proj_dims` on the same trained models, keeping the one
    whose scores best predict the store's fitting models — the highest mean Spearman over
    the first ``select_models`` (default ``max(n_models, 3)``) completed random models
    between mask @ τ and their margins (ties → the smaller). Held-out models are never
    read. The choice and every candidate's criterion are in the attrs."""
    torch = optional.torch()
    trak_module = optional.require("trak.traker")
    from trak.projectors import BasicProjector

    _reject(_unused)
    t0 = time.perf_counter()
    job = load_job(ds, "trak")
    tpos = _targets(ds, targets)
    N = ds.sizes["train"]
    auto = isinstance(proj_dim, str)
    if auto and proj_dim != "auto":
        raise InputError(f"proj_dim must be an integer or 'auto', not {proj_dim!r}")
    if not auto:
        if not 1 <= int(proj_dim):
            raise InputError(f"proj_dim must be >= 1, got {proj_dim}")
        if int(proj_dim) > N and not lambda_reg > 0:
            raise InputError(f"proj_dim={proj_dim} > n_train={N} makes ΦᵀΦ singular; lower it "
                             "or set lambda_reg > 0")
    if int(n_models) < 1:
        raise InputError(f"n_models must be >= 1, got {n_models}")
    n_sel = int(select_models or max(int(n_models), 3))
    if auto:
        from ...fit.datamodels import select_models as fitting_models

        try:
            n_fit = fitting_models(ds, alpha)[0].size
        except InputError as e:
            raise InputError(f"proj_dim='auto' chooses on the store's fitting models: {e}; "
                             "train them or pass proj_dim=") from None
        if n_fit < 3:
            raise InputError(f"proj_dim='auto' chooses on the store's fitting models, and it "
                             f"has {n_fit} (need 3); train more or pass proj_dim=")
        n_sel = min(n_sel, n_fit)
    tr = train_models(ds, job, models=models, n_models=n_models, seed=seed, alpha=alpha)
    dt = torch.float32  # traker computes in float32 (use_half_precision=False)
    xtr, ytr, xtg, ytg = _inputs(job, tpos, dt)
    M = tr["masks"].shape[0]
    module = _Functional.build(job, _one(tr["params"], 0, dt))
    quiet = functools.partial(trak_module.tqdm, disable=True)
    loud, trak_module.tqdm = trak_module.tqdm, quiet  # traker's progress bars: not ours to show
    dims = trak_proj_dims(N, float(lambda_reg)) if auto else [int(proj_dim)]
    crit = []
    best = None
    try:
        for k in dims:
            sc_k = _run_traker(trak_module.TRAKer, BasicProjector, module, tr, xtr, ytr, xtg,
                               ytg, N, M, k, int(seed), proj_type, float(lambda_reg),
                               int(batch_size), dt)
            if auto:
                crit.append(_fitting_lds(ds, sc_k.T, tpos, n_sel, alpha))
                if best is None or crit[-1] > crit[best[0]]:  # ties keep the smaller
                    best = (len(crit) - 1, sc_k)
            else:
                best = (0, sc_k)
    finally:
        if trak_module.tqdm is quiet:
            trak_module.tqdm = loud
    opts = {"models": models, "proj_dim": int(dims[best[0]]), "lambda_reg": float(lambda_reg),
            "proj_type": proj_type, "implementation": "traker 0.3.2",
            "proj_dim_rule": "fixed" if not auto else (
                f"auto: highest LDS on the first {n_sel} fitting models")}
    if auto:
        opts["proj_dim_candidates"] = ",".join(map(str, dims))
        opts["proj_dim_fitting_lds"] = ",".join(f"{c:.6g}" for c in crit)
    return _finish(ds, tpos, best[1].T, "trak", tr, seed, opts, time.perf_counter() - t0)


def _run_traker(TRAKer, BasicProjector, module, tr, xtr, ytr, xtg, ytg, N, M, proj_dim, seed,
                proj_type, lambda_reg, batch_size, dt) -> np.ndarray:
    """traker's featurize / finalize / score loop; returns its scores [N, T] (float64)."""
    with tempfile.TemporaryDirectory() as tmp:
        # a fresh directory: traker 0.3.2 needs load_from_save_dir=True to create its
        # experiments.json (with False, start_scoring_checkpoint fails)
        where = os.path.join(tmp, "trak")
        projector = BasicProjector(grad_dim=sum(p.numel() for p in module.parameters()),
                                   proj_dim=proj_dim, seed=seed, proj_type=proj_type,
                                   device="cpu", dtype=dt, block_size=min(proj_dim, 512))
        tk = TRAKer(model=module, task="image_classification", train_set_size=N,
                    save_dir=where, load_from_save_dir=True, device="cpu",
                    projector=projector, use_half_precision=False,
                    lambda_reg=lambda_reg, logging_level=40)
        ckpts = [{k: v.detach().clone() for k, v in _one(tr["params"], b, dt).items()}
                 for b in range(M)]
        for b in range(M):
            tk.load_checkpoint(ckpts[b], model_id=b)
            for s in range(0, N, batch_size):
                e = min(N, s + batch_size)
                tk.featurize(batch=(xtr[s:e], ytr[s:e]), num_samples=e - s)
        tk.finalize_features()
        # traker 0.3.2 frees the projection matrix in finalize_features and regenerates it
        # only when the model id changes: with one model, scoring would find none
        projector.model_id = -1
        exp = "dmdask"
        for b in range(M):
            tk.start_scoring_checkpoint(exp_name=exp, checkpoint=ckpts[b], model_id=b,
                                        num_targets=xtg.shape[0])
            for s in range(0, xtg.shape[0], batch_size):
                e = min(xtg.shape[0], s + batch_size)
                tk.score(batch=(xtg[s:e], ytg[s:e]), num_samples=e - s)
        return np.array(tk.finalize_scores(exp_name=exp), dtype=np.float64)  # [N, T]


def _reject(unused: dict) -> None:
    """Options the store estimators take that mean nothing here are an error, not ignored."""
    if unused:
        raise InputError(f"unknown option(s) {sorted(unused)} for a model-based estimator")
