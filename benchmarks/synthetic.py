"""Synthetic run stores with planted sparse datamodels (issue 4, "Recovers planted truth").

A planted target t has output, for a subset mask x ∈ {0,1}^d (fixed-size α subsets by default,
as the paper and the run store draw them)::

    f_t(x) = b*_t + x·w*_t                       the planted signal (what a datamodel should find)
           + m_t·x_j            (only if target t is training example j: memorisation)
           + Σ_p c_pt (x_ip − α)(x_jp − α)       structured non-linearity (degree-2, centred)
           + ε                                   seed noise, Student-t (5 dof), heavy-tailed

The signal explains ``explained`` of the output variance (30–50 % by default, drawn per
target); the rest is split between the degree-2 term (``interaction_share``) and seed noise.
The centred degree-2 term is orthogonal to every linear function of x under Bernoulli
sampling and nearly so (O(1/d)) under fixed-size sampling, so ``(w*, b*)`` stays the best
linear predictor: the truth a LASSO datamodel estimates. For a target that is training example
j, datamodels use only the models that exclude j (paper eq. 9), so the memorisation term never
enters its fit; its truth is ``w*_t`` with ``w*_tj = 0``, evaluated on subsets without j.

The store is written through the store API, block by block (masks are sampled by
``add_models``; margins are computed from each block's masks and written with ``write_block``),
so the mask matrix is never whole in memory. NaN margins (``nan_fraction``) stand for missing
evaluations, recorded with ``write_block(..., allow_missing=True)`` (jobs cannot do this:
their NaN margins are refused).

:func:`evaluate` draws fresh subsets and scores a fitted (weight, bias) against the planted
signal, offset included (a wrong bias shows), plus support F1 and the correlation of weights.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = ["Truth", "evaluate", "make_arrays", "make_store", "planted_truth"]


@dataclass
class Truth:
    """The planted model of every target (raw-mask space: signal = x @ w[t] + b[t])."""

    w: np.ndarray  # [T, d]
    b: np.ndarray  # [T]
    w_self: np.ndarray  # [T] memorisation weight (0 unless the target is a training example)
    target_train_index: np.ndarray  # [T]
    pairs: np.ndarray  # [P, 2] training-example pairs of the degree-2 term
    c_pair: np.ndarray  # [P, T]
    noise_sd: np.ndarray  # [T] seed-noise standard deviation
    explained: np.ndarray  # [T] planted fraction of variance explained by the signal
    alpha: float
    sampling: str
    seed: int
    meta: dict = field(default_factory=dict)

    @property
    def n_train(self) -> int:
        return self.w.shape[1]

    @property
    def n_target(self) -> int:
        return self.w.shape[0]

    def save(self, path) -> str:
        arrays = {k: v for k, v in asdict(self).items() if isinstance(v, np.ndarray)}
        scal = {k: v for k, v in asdict(self).items() if not isinstance(v, np.ndarray)}
        np.savez_compressed(path, **arrays, _scalars=json.dumps(scal))
        return os.fspath(path)

    @classmethod
    def load(cls, path) -> Truth:
        with np.load(path) as z:
            scal = json.loads(str(z["_scalars"]))
            arrays = {k: z[k] for k in z.files if k != "_scalars"}
        return cls(**arrays, **scal)

    def signal(self, X) -> np.ndarray:
        """Planted signal [rows, T] (no memorisation, no noise)."""
        return np.asarray(X, dtype=np.float64) @ self.w.T + self.b

    def outputs(self, X, rng) -> np.ndarray:
        """Full synthetic outputs [rows, T] for masks X: signal + memorisation + degree-2 term
        + seed noise (float64)."""
        Xf = np.asarray(X, dtype=np.float64)
        out = Xf @ self.w.T + self.b
        tt = np.nonzero(self.target_train_index >= 0)[0]
        if tt.size:
            out[:, tt] += Xf[:, self.target_train_index[tt]] * self.w_self[tt]
        if self.pairs.size:
            a = self.alpha
            inter = (Xf[:, self.pairs[:, 0]] - a) * (Xf[:, self.pairs[:, 1]] - a)
            out += inter @ self.c_pair
        out += rng.standard_t(5, size=out.shape) * (self.noise_sd / np.sqrt(5 / 3))
        return out


def _signal_var(w, alpha, sampling):
    """Var(x·w) under the subset distribution (REFERENCE §0): fixed-size has the −1/(N−1)
    covariance, Bernoulli none."""
    d = w.shape[-1]
    v = alpha * (1 - alpha)
    if sampling == "fixed":
        return v * d / (d - 1) * ((w**2).sum(-1) - w.sum(-1) ** 2 / d)
    return v * (w**2).sum(-1)


def planted_truth(n_train, n_target, *, support=20, explained=(0.3, 0.5), alpha=0.5,
                  sampling="fixed", bias_mean=2.0, bias_sd=1.0, interaction_share=0.3,
                  n_pairs=200, train_targets=0, memorisation=3.0, signal_sd=1.0,
                  seed=0) -> Truth:
    """Draw planted sparse weights, biases and noise levels.

    ``support``: nonzero weights per target (mixed signs, heavy-tailed magnitudes: a few
    large effects and many small ones, as datamodels show); ``explained``: a fraction or a
    (lo, hi) range drawn per target; ``train_targets``: number of targets that are training
    examples (the first ones), with a memorisation weight ``memorisation``·signal_sd.
    """
    rng = np.random.default_rng([seed, 0x5EED])
    d, T = int(n_train), int(n_target)
    w = np.zeros((T, d))
    for t in range(T):
        idx = rng.choice(d, size=min(support, d), replace=False)
        mag = rng.lognormal(0.0, 0.75, size=idx.size)
        w[t, idx] = mag * rng.choice([-1.0, 1.0], size=idx.size, p=[0.4, 0.6])
    tti = np.full(T, -1, np.int64)
    if train_targets:
        tti[:train_targets] = rng.choice(d, size=train_targets, replace=False)
        for t in range(train_targets):
            w[t, tti[t]] = 0.0  # the eq. 9 fit never sees x_j = 1
    w *= signal_sd / np.sqrt(np.maximum(_signal_var(w, alpha, sampling), 1e-300))[:, None]
    if np.isscalar(explained):
        r2 = np.full(T, float(explained))
    else:
        r2 = rng.uniform(explained[0], explained[1], size=T)
    unexplained = signal_sd**2 * (1 - r2) / r2
    pairs = np.zeros((0, 2), np.int64)
    c = np.zeros((0, T))
    if interaction_share > 0 and n_pairs > 0 and d >= 2:
        pairs = np.array([rng.choice(d, 2, replace=False) for _ in range(n_pairs)])
        c = rng.normal(size=(n_pairs, T))
        per = (alpha * (1 - alpha)) ** 2  # Var((x_i − α)(x_j − α)), Bernoulli
        c *= np.sqrt(interaction_share * unexplained / (per * (c**2).sum(0)))[None, :]
    noise_sd = np.sqrt((1 - interaction_share) * unexplained)
    b = rng.normal(bias_mean, bias_sd, size=T)
    w_self = np.where(tti >= 0, memorisation * signal_sd, 0.0)
    return Truth(w=w, b=b, w_self=w_self, target_train_index=tti, pairs=pairs, c_pair=c,
                 noise_sd=noise_sd, explained=r2, alpha=float(alpha), sampling=sampling,
                 seed=int(seed),
                 meta={"support": int(support), "interaction_share": interaction_share,
                       "signal_sd": signal_sd})


def _draw_masks(rng, n, d, alpha, sampling):
    if sampling == "bernoulli":
        return rng.random((n, d)) < alpha
    k = int(np.floor(alpha * d + 0.5))
    idx = np.argpartition(rng.random((n, d)), k - 1, axis=1)[:, :k]
    X = np.zeros((n, d), bool)
    np.put_along_axis(X, idx, True, axis=1)
    return X


def _nan_cells(truth, n, nan_fraction, seed, start, stop):
    """Deterministic NaN pattern of rows [start, stop) (keyed by row block, not the writer)."""
    rng = np.random.default_rng([seed, 0xA11, start])
    return rng.random((stop - start, truth.n_target)) < nan_fraction


def make_arrays(n_models, n_train, n_target, *, nan_fraction=0.0, seed=0, **truth_kw):
    """In-memory (X bool [n, d], Y float64 [n, T] with NaN cells, Truth): small problems."""
    truth = planted_truth(n_train, n_target, seed=seed, **truth_kw)
    rng = np.random.default_rng([seed, 0xDA7A])
    X = _draw_masks(rng, n_models, n_train, truth.alpha, truth.sampling)
    Y = truth.outputs(X, rng)
    if nan_fraction:
        Y[_nan_cells(truth, n_models, nan_fraction, seed, 0, n_models)] = np.nan
    return X, Y, truth


def make_store(path, n_models, n_train, n_target, *, block_size=None, nan_fraction=0.0,
               seed=0, truth_path=None, progress=False, **truth_kw) -> Truth:
    """Write a synthetic run store at ``path`` (kind "random" models, store sampling = the
    truth's) and save the truth next to it (``truth_path``, default ``<path>.truth.npz``)."""
    import dmdask
    from dmdask.store.runstore import create_jobless_store, read_meta, write_block

    truth = planted_truth(n_train, n_target, seed=seed, **truth_kw)
    create_jobless_store(path, n_train, n_target, block_size=block_size, seed=seed,
                         sampling=truth.sampling, target_train_index=truth.target_train_index,
                         source={"synthetic": "benchmarks/synthetic.py", "seed": int(seed)})
    t0 = time.perf_counter()
    dmdask.add_models(path, "random", n=n_models, alpha=truth.alpha)
    if progress:
        print(f"  masks sampled and written in {time.perf_counter() - t0:.1f} s", flush=True)
    import zarr

    group = zarr.open_group(os.fspath(path), mode="r+")
    B = int(read_meta(path)["block_size"])
    nblocks = -(-n_models // B)
    t0 = time.perf_counter()
    for k in range(nblocks):
        s, e = k * B, min((k + 1) * B, n_models)
        X = group["mask"][s:e]
        Y = truth.outputs(X, np.random.default_rng([seed, 0xB10C, k])).astype(np.float32)
        if nan_fraction:
            Y[_nan_cells(truth, n_models, nan_fraction, seed, s, e)] = np.nan
        write_block(path, k, Y, allow_missing=bool(nan_fraction))
        if progress and (k % max(1, nblocks // 10) == 0 or k == nblocks - 1):
            print(f"  margins: block {k + 1}/{nblocks} ({time.perf_counter() - t0:.1f} s)",
                  flush=True)
    truth.meta.update(store=os.fspath(path), n_models=int(n_models), nan_fraction=nan_fraction)
    truth.save(truth_path or f"{os.fspath(path)}.truth.npz")
    return truth


def evaluate(truth: Truth, weight, bias, *, n_subsets=2000, seed=12345, targets=None,
             block=1000) -> dict:
    """Score a datamodel (weight [T, d], bias [T]) against the planted truth on fresh subsets.

    Per target: ``pred_mse`` = mean (x·w + b − signal)² over fresh subsets drawn like the
    store's (excluding j for a target that is training example j), ``rel_err`` = pred_mse /
    Var(signal), ``offset`` = mean(pred − signal) (a wrong bias shows here), support precision,
    recall and F1 (support = nonzero weights), and Pearson correlation of weight with w*.
    Returns per-target arrays and their means."""
    weight = np.asarray(weight, dtype=np.float64)
    bias = np.asarray(bias, dtype=np.float64)
    tsel = np.arange(truth.n_target) if targets is None else np.asarray(targets)
    ws, bs = truth.w[tsel], truth.b[tsel]
    tti = truth.target_train_index[tsel]
    rng = np.random.default_rng([seed, 0xF2E5])
    sse = np.zeros(len(tsel))
    sd = np.zeros(len(tsel))
    ss = np.zeros(len(tsel))
    ss2 = np.zeros(len(tsel))
    cnt = np.zeros(len(tsel))
    done = 0
    while done < n_subsets:
        m = min(block, n_subsets - done)
        X = _draw_masks(rng, m, truth.n_train, truth.alpha, truth.sampling).astype(np.float64)
        sig = X @ ws.T + bs
        pred = X @ weight.T + bias
        keep = np.ones_like(sig, dtype=bool)
        tt = np.nonzero(tti >= 0)[0]
        if tt.size:
            keep[:, tt] = X[:, tti[tt]] == 0
        diff = np.where(keep, pred - sig, 0.0)
        sse += (diff**2).sum(0)
        sd += diff.sum(0)
        s0 = np.where(keep, sig, 0.0)
        ss += s0.sum(0)
        ss2 += (s0**2).sum(0)
        cnt += keep.sum(0)
        done += m
    pred_mse = sse / cnt
    var_sig = ss2 / cnt - (ss / cnt) ** 2
    true_sup = ws != 0
    est_sup = weight != 0
    for i, j in enumerate(tti):
        if j >= 0:
            est_sup[i, j] = False
    tp = (true_sup & est_sup).sum(1)
    prec = np.where(est_sup.sum(1) > 0, tp / np.maximum(est_sup.sum(1), 1), 0.0)
    rec = tp / np.maximum(true_sup.sum(1), 1)
    f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-300), 0.0)
    corr = np.array([np.corrcoef(weight[i], ws[i])[0, 1] if weight[i].std() > 0 else 0.0
                     for i in range(len(tsel))])
    per = {"pred_mse": pred_mse, "rel_err": pred_mse / var_sig, "offset": sd / cnt,
           "precision": prec, "recall": rec, "f1": f1, "corr": corr,
           "nnz": est_sup.sum(1)}
    out = {k: v for k, v in per.items()}
    out.update({f"mean_{k}": float(np.mean(v)) for k, v in per.items()})
    out["mean_abs_offset"] = float(np.mean(np.abs(per["offset"])))
    return out
