"""Correlations of predicted against actual effects, with confidence intervals, and the mean
and standard error of replicated runs."""

from __future__ import annotations

import numpy as np
from scipy import stats as _st

__all__ = ["correlation", "run_stats"]


def correlation(pred, actual, *, method: str = "pearson", level: float = 0.95) -> dict:
    """``r``, ``low``, ``high``, ``n`` over the pairs where both are finite. The interval is
    Fisher's z: se = 1/√(n−3) for Pearson, √((1 + r²/2)/(n−3)) for Spearman (Bonett & Wright
    2000); NaN with fewer than 4 pairs or a constant side."""
    p = np.asarray(pred, np.float64).ravel()
    a = np.asarray(actual, np.float64).ravel()
    ok = np.isfinite(p) & np.isfinite(a)
    p, a = p[ok], a[ok]
    n = int(p.size)
    out = {"r": float("nan"), "low": float("nan"), "high": float("nan"), "n": n}
    if n < 3 or np.ptp(p) == 0 or np.ptp(a) == 0:
        return out
    if method == "pearson":
        r = float(_st.pearsonr(p, a)[0])
        se = 1.0 / np.sqrt(n - 3) if n > 3 else np.nan
    elif method == "spearman":
        r = float(_st.spearmanr(p, a)[0])
        se = np.sqrt((1 + r * r / 2) / (n - 3)) if n > 3 else np.nan
    else:
        raise ValueError(f"method must be pearson or spearman, not {method!r}")
    out["r"] = r
    if np.isfinite(se):
        z = np.arctanh(np.clip(r, -0.9999999, 0.9999999))
        h = _st.norm.ppf((1 + level) / 2) * se
        out["low"], out["high"] = float(np.tanh(z - h)), float(np.tanh(z + h))
    return out


def run_stats(margins, axis: int = -1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, standard error of the mean, number of finite runs) along ``axis``; the standard
    error is NaN with fewer than two runs."""
    m = np.asarray(margins, np.float64)
    n = np.isfinite(m).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nansum(m, axis=axis) / n
        dev = np.where(np.isfinite(m), m - np.expand_dims(mean, axis), 0.0)
        var = (dev * dev).sum(axis=axis) / (n - 1)
        se = np.where(n >= 2, np.sqrt(var / n), np.nan)
    mean = np.where(n > 0, mean, np.nan)
    return mean, se, n
