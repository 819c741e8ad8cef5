"""Metrics of predicted against actual model outputs (REFERENCE.md §2.1). Pure NumPy.

Conventions shared by every function here:

* **Layout.** ``pred`` and ``actual`` are ``[n_obs, n_targets]`` (1-d arrays are one target):
  every metric is computed *per target*, i.e. per column, over the rows (held-out subsets or
  runs). The result is a float64 array ``[n_targets]`` (a 0-d array for 1-d input).
* **Missing values.** NaN in either input drops that *pair* for that column only (pairwise
  deletion); other columns keep the row. Infinite values are refused (``InputError``).
* **Undefined values are NaN, never 0.** A column with fewer than ``min_obs`` pairs, a
  constant column (for correlations: either side constant; for R²: ``actual`` constant), or
  an AUC column whose labels are all 0 or all 1 gives NaN. :func:`summarize` and
  :class:`LDSResult` report how many targets were skipped that way.
* **Variances** are population (``ddof=0``) except the OPT noise floor, which is the unbiased
  replicate variance (``ddof=1``).
* **Ranks** are average ranks (ties share the mean of their positions), as
  ``scipy.stats.rankdata(method="average")``; Spearman is Pearson of the ranks.
* **AUC** = U/(n⁺n⁻) = P(g⁺ > g⁻) + ½P(g⁺ = g⁻): ties count one half.
* **Confidence intervals** over targets (:func:`summarize`, :func:`lds`): the Student-t
  interval ``mean ± t_{(1+level)/2, k−1}·sd/√k`` over the k defined targets by default
  (deterministic); ``ci="bootstrap"`` gives the percentile bootstrap over targets. Both treat
  targets as independent draws and ignore the sampling of the held-out subsets (shared by all
  targets), so they measure target-to-target spread, not subset noise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as _st

from ..errors import InputError

__all__ = [
    "LDSResult",
    "auc",
    "auc_pooled",
    "correctness",
    "excess_error",
    "group_means",
    "lds",
    "lds_from_predictions",
    "mse",
    "noise_adjusted_r2",
    "opt_floor",
    "pearson",
    "r2",
    "spearman",
    "summarize",
    "variance",
]


# ------------------------------------------------------------------ helpers
def _as2d(*arrays):
    """float64 2-d views, checked for equal shapes and no ±inf; returns (arrays, was_1d)."""
    out = []
    one_d = np.asarray(arrays[0]).ndim == 1
    for a in arrays:
        a = np.asarray(a, dtype=np.float64)
        if a.ndim == 1:
            a = a[:, None]
        if a.ndim != 2:
            raise InputError(f"metric inputs must be 1-d or 2-d [n_obs, n_targets], got {a.shape}")
        if np.isinf(a).any():
            raise InputError("metric inputs contain ±inf; use NaN for missing values")
        out.append(a)
    if any(a.shape != out[0].shape for a in out):
        raise InputError(f"metric inputs differ in shape: {[a.shape for a in out]}")
    return out, one_d


def _out(v, one_d):
    v = np.asarray(v, dtype=np.float64)
    return v[0] if one_d else v


def _pairwise(x, y):
    """Copies with NaN wherever either is NaN, the valid mask and per-column counts."""
    valid = ~(np.isnan(x) | np.isnan(y))
    x = np.where(valid, x, np.nan)
    y = np.where(valid, y, np.nan)
    return x, y, valid, valid.sum(axis=0)


def _constant(x, valid):
    """Per column: True if the valid entries are all equal (or there are none)."""
    hi = np.where(valid, x, -np.inf).max(axis=0, initial=-np.inf)
    lo = np.where(valid, x, np.inf).min(axis=0, initial=np.inf)
    return ~(hi > lo)


def _pearson_cols(x, y, valid, n):
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = np.nansum(x, axis=0) / n
        my = np.nansum(y, axis=0) / n
        dx = np.where(valid, x - mx, 0.0)
        dy = np.where(valid, y - my, 0.0)
        r = (dx * dy).sum(0) / np.sqrt((dx * dx).sum(0) * (dy * dy).sum(0))
    return np.clip(r, -1.0, 1.0)


def _ranks(x):
    """Average ranks per column, NaN stays NaN (scipy's nan_policy='omit')."""
    return _st.rankdata(x, axis=0, nan_policy="omit", method="average")


# ------------------------------------------------------------------ point metrics
def mse(pred, actual, *, min_obs: int = 1):
    """Mean squared error per target over the rows where both are present."""
    (p, a), one_d = _as2d(pred, actual)
    p, a, valid, n = _pairwise(p, a)
    with np.errstate(invalid="ignore", divide="ignore"):
        v = np.where(valid, (p - a) ** 2, 0.0).sum(0) / n
    return _out(np.where(n >= min_obs, v, np.nan), one_d)


def variance(actual, *, min_obs: int = 2):
    """Population variance per target over present rows (NaN below ``min_obs``)."""
    (a,), one_d = _as2d(actual)
    n = (~np.isnan(a)).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.nansum(a, 0) / n
        v = np.nansum((a - m) ** 2, 0) / n
    return _out(np.where(n >= min_obs, v, np.nan), one_d)


def r2(pred, actual, *, min_obs: int = 2):
    """Coefficient of determination 1 − MSE/Var(actual) per target (pairwise-present rows;
    population variance, as ``sklearn.metrics.r2_score``). Constant ``actual`` → NaN."""
    (p, a), one_d = _as2d(pred, actual)
    p, a, valid, n = _pairwise(p, a)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.where(valid, (p - a) ** 2, 0.0).sum(0) / n
        ma = np.nansum(a, 0) / n
        var = np.where(valid, (a - ma) ** 2, 0.0).sum(0) / n
        v = 1.0 - m / var
    bad = (n < min_obs) | _constant(a, valid)
    return _out(np.where(bad, np.nan, v), one_d)


def noise_adjusted_r2(mse_value, var_actual, opt):
    """1 − (MSE − OPT)/(Var f − OPT) (REFERENCE §2.1): R² measured against the explainable
    variance. NaN where ``Var f ≤ OPT`` (nothing explainable) or any input is NaN."""
    mse_value, var_actual, opt = (np.asarray(v, np.float64) for v in (mse_value, var_actual, opt))
    with np.errstate(invalid="ignore", divide="ignore"):
        den = var_actual - opt
        v = 1.0 - (mse_value - opt) / den
    return np.where(den > 0, v, np.nan)


def pearson(pred, actual, *, min_obs: int = 3):
    """Pearson correlation per target (pairwise-present rows). NaN if either column is
    constant or fewer than ``min_obs`` pairs remain."""
    (p, a), one_d = _as2d(pred, actual)
    p, a, valid, n = _pairwise(p, a)
    r = _pearson_cols(p, a, valid, n)
    bad = (n < min_obs) | _constant(p, valid) | _constant(a, valid)
    return _out(np.where(bad, np.nan, r), one_d)


def spearman(pred, actual, *, min_obs: int = 3):
    """Spearman rank correlation per target: Pearson of average ranks of the pairwise-present
    rows (``scipy.stats.spearmanr`` per column). Constant columns → NaN."""
    (p, a), one_d = _as2d(pred, actual)
    p, a, valid, n = _pairwise(p, a)
    bad = (n < min_obs) | _constant(p, valid) | _constant(a, valid)
    r = _pearson_cols(_ranks(p), _ranks(a), valid, n)
    return _out(np.where(bad, np.nan, r), one_d)


def correctness(margin):
    """1.0 where margin > 0, 0.0 where margin ≤ 0, NaN where the margin is missing."""
    m = np.asarray(margin, dtype=np.float64)
    return np.where(np.isnan(m), np.nan, (m > 0).astype(np.float64))


def _auc_cols(score, label, valid):
    npos = np.where(valid, label == 1, False).sum(0)
    nneg = np.where(valid, label == 0, False).sum(0)
    rk = _ranks(np.where(valid, score, np.nan))
    rpos = np.where(valid & (label == 1), rk, 0.0).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        u = rpos - npos * (npos + 1) / 2.0
        v = u / (npos * nneg)
    return np.where((npos > 0) & (nneg > 0), v, np.nan)


def _check_labels(lab):
    ok = np.isnan(lab) | (lab == 0) | (lab == 1)
    if not ok.all():
        raise InputError("AUC labels must be 0/1 (or bool), NaN for missing")


def auc(score, label):
    """ROC AUC of ``score`` as a predictor of ``label`` ∈ {0, 1} per target
    (U/(n⁺n⁻), ties ½; pairwise-present rows). Targets whose labels are all 0 or all 1
    (always wrong / always right) → NaN (skipped, counted by :func:`summarize`)."""
    (s, lab), one_d = _as2d(score, label)
    _check_labels(lab)
    s, lab, valid, _ = _pairwise(s, lab)
    return _out(_auc_cols(s, lab, valid), one_d)


def auc_pooled(score, label) -> float:
    """ROC AUC over all (row, target) pairs pooled together (one number)."""
    (s, lab), _ = _as2d(score, label)
    _check_labels(lab)
    s, lab = s.reshape(-1, 1), lab.reshape(-1, 1)
    s, lab, valid, _ = _pairwise(s, lab)
    return float(_auc_cols(s, lab, valid)[0])


# ------------------------------------------------------------------ summaries
def summarize(values, *, ci: str = "t", level: float = 0.95, n_boot: int = 2000,
              seed: int = 0) -> dict:
    """Mean over targets of a per-target metric with a confidence interval.

    NaN values (undefined targets) are skipped and counted. ``ci``: ``"t"`` (Student-t
    interval, default) or ``"bootstrap"`` (percentile bootstrap over targets, ``n_boot``
    resamples, ``seed``). Returns ``mean, ci_low, ci_high, n_targets, n_used, n_skipped,
    ci_method, level``; the CI is NaN with fewer than two defined targets.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    ok = v[np.isfinite(v)]
    k = ok.size
    out = {"mean": float(ok.mean()) if k else float("nan"), "ci_low": float("nan"),
           "ci_high": float("nan"), "n_targets": int(v.size), "n_used": int(k),
           "n_skipped": int(v.size - k), "ci_method": ci, "level": float(level)}
    if ci not in ("t", "bootstrap"):
        raise InputError(f"ci must be 't' or 'bootstrap', not {ci!r}")
    if k >= 2:
        if ci == "t":
            half = _st.t.ppf((1 + level) / 2, k - 1) * ok.std(ddof=1) / np.sqrt(k)
            out["ci_low"], out["ci_high"] = out["mean"] - half, out["mean"] + half
        else:
            rng = np.random.default_rng(seed)
            means = ok[rng.integers(0, k, size=(n_boot, k))].mean(axis=1)
            lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
            out["ci_low"], out["ci_high"] = float(lo), float(hi)
    return out


# ------------------------------------------------------------------ LDS
@dataclass
class LDSResult:
    """Linear datamodeling score: ``per_target`` Spearman values (NaN = skipped), their
    mean over defined targets with a CI, and the counts."""

    per_target: np.ndarray
    mean: float
    ci_low: float
    ci_high: float
    n_targets: int
    n_used: int
    n_skipped: int
    ci_method: str
    level: float

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("per_target")
        return d


def lds(scores, masks, actual, *, ci: str = "t", level: float = 0.95, n_boot: int = 2000,
        seed: int = 0, min_obs: int = 3) -> LDSResult:
    """Linear datamodeling score exactly as TRAK defines it (arXiv 2303.14186 §2; REFERENCE
    §2.1).

    ``scores``: ``[n_targets, n_train]`` attribution τ(x) (sign: τ_j > 0 means the presence of
    j raises the target's output); ``masks``: ``[m, n_train]`` 0/1 held-out subsets;
    ``actual``: ``[m, n_targets]`` output of each subset's model(s) — for TRAK's definition
    the mean over the R replicate trainings of that subset (:func:`group_means`).

    Per target x: LDS(τ, x) = Spearman_j(Σ_{i∈S_j} τ_i(x), actual_j(x)), i.e. TRAK's
    ``preds = masks.float() @ scores`` then ``spearmanr`` per target; then the mean over
    targets. Targets where the predictions or the outputs are constant (or fewer than
    ``min_obs`` subsets have an output) are skipped (NaN) and counted in ``n_skipped``.
    Invariant to τ → aτ + c·1 only for a > 0 when subset sizes are fixed (c·|S| is then
    constant); the sign matters.
    """
    scores = np.asarray(scores, dtype=np.float64)
    masks = np.asarray(masks)
    if scores.ndim != 2 or masks.ndim != 2 or masks.shape[1] != scores.shape[1]:
        raise InputError(f"lds: scores [n_targets, n_train] {scores.shape} and masks "
                         f"[m, n_train] {masks.shape} do not match")
    if not np.isfinite(scores).all():
        raise InputError("lds: scores contain NaN/inf")
    preds = masks.astype(np.float64) @ scores.T
    return lds_from_predictions(preds, actual, ci=ci, level=level, n_boot=n_boot, seed=seed,
                                min_obs=min_obs)


def lds_from_predictions(preds, actual, *, ci: str = "t", level: float = 0.95,
                         n_boot: int = 2000, seed: int = 0, min_obs: int = 3) -> LDSResult:
    """:func:`lds` given the summed scores ``preds = masks @ scores.T`` ``[m, n_targets]``."""
    preds = np.asarray(preds, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    if actual.shape != preds.shape:
        raise InputError(f"lds: actual has shape {actual.shape}, expected {preds.shape}")
    per = np.atleast_1d(spearman(preds, actual, min_obs=min_obs))
    s = summarize(per, ci=ci, level=level, n_boot=n_boot, seed=seed)
    return LDSResult(per_target=per, **{k: s[k] for k in (
        "mean", "ci_low", "ci_high", "n_targets", "n_used", "n_skipped", "ci_method", "level")})


# ------------------------------------------------------------------ replicates and OPT
def _group_index(group):
    group = np.asarray(group)
    if group.ndim != 1:
        raise InputError("group must be 1-d (one id per run)")
    ids, inv = np.unique(group, return_inverse=True)
    return ids, inv.ravel()


def group_means(runs, group):
    """Mean output per group of replicate runs (NaN-aware).

    ``runs``: ``[n_runs, n_targets]``; ``group``: ``[n_runs]`` id of the subset each run
    trained on. Returns ``(ids [g], means [g, n_targets], counts [g, n_targets])``; a group
    with no present run for a target has mean NaN and count 0.
    """
    (y,), _ = _as2d(runs)
    ids, inv = _group_index(group)
    if inv.size != y.shape[0]:
        raise InputError(f"group has {inv.size} entries for {y.shape[0]} runs")
    valid = ~np.isnan(y)
    cnt = np.zeros((ids.size, y.shape[1]))
    tot = np.zeros((ids.size, y.shape[1]))
    np.add.at(cnt, inv, valid.astype(np.float64))
    np.add.at(tot, inv, np.where(valid, y, 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(cnt > 0, tot / cnt, np.nan)
    return ids, mean, cnt.astype(np.int64)


def opt_floor(runs, group):
    """The OPT noise floor (paper eq. 11, REFERENCE §2.1) per target.

    For every group (subset) with R ≥ 2 present runs of a target, the unbiased replicate
    variance s² = Σ_r (f_r − f̄)²/(R − 1); OPT(x) is the mean of s² over those groups, equal
    weight per group. Returns ``(opt [n_targets], n_groups_used [n_targets])``; OPT is NaN
    where no group has two present runs.
    """
    (y,), _ = _as2d(runs)
    ids, inv = _group_index(group)
    _, mean, cnt = group_means(y, group)
    valid = ~np.isnan(y)
    ss = np.zeros((ids.size, y.shape[1]))
    np.add.at(ss, inv, np.where(valid, (y - mean[inv]) ** 2, 0.0))
    ok = cnt >= 2
    with np.errstate(invalid="ignore", divide="ignore"):
        s2 = np.where(ok, ss / np.maximum(cnt - 1, 1), 0.0)
        used = ok.sum(0)
        opt = np.where(used > 0, s2.sum(0) / used, np.nan)
    return opt, used


def excess_error(mse_value, opt, *, against_mean_of: int | np.ndarray | None = None):
    """The part of the error a better predictor could remove (REFERENCE §2.1).

    Against single runs: E(f − g)² = OPT + E(E[f|S′] − g)², so excess = MSE − OPT.
    Against the mean of R replicates (``against_mean_of=R``):
    E(f̄_R − g)² = E(E[f|S′] − g)² + OPT/R, so excess = MSE − OPT/R.
    Can be slightly negative from sampling error; never clipped.
    """
    mse_value = np.asarray(mse_value, np.float64)
    opt = np.asarray(opt, np.float64)
    if against_mean_of is None:
        return mse_value - opt
    return mse_value - opt / np.asarray(against_mean_of, np.float64)
