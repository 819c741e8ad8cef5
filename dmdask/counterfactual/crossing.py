"""The first zero crossing of a noisy, decreasing curve (REFERENCE §3, App. F.3, Algorithm 1).

Mean margins m̂(k) measured at a few k (k = 0 is the control) are fitted by scikit-learn's
``IsotonicRegression(increasing=False)``; the fit is linearly interpolated between the measured
k, and the estimate is the ceiling of the first point where it reaches 0:
k̂ = ⌈k_a + (k_b − k_a)·ĝ(k_a)/(ĝ(k_a) − ĝ(k_b))⌉ on the first segment with ĝ(k_a) > 0 ≥ ĝ(k_b).
A control ≤ 0 gives 0; a fit that stays above 0 gives ``inf`` ("> k_max").
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import InputError

__all__ = ["decreasing_fit", "zero_crossing"]


def decreasing_fit(k, m, weights=None) -> np.ndarray:
    """Isotonic (non-increasing) least-squares fit of ``m`` at ``k`` (``weights``: e.g. the
    number of runs behind each mean)."""
    from sklearn.isotonic import IsotonicRegression

    k = np.asarray(k, np.float64)
    m = np.asarray(m, np.float64)
    return IsotonicRegression(increasing=False).fit_transform(k, m, sample_weight=weights)


def zero_crossing(k, m, weights=None) -> float:
    """k̂ for mean margins ``m`` measured at ``k`` (ascending, distinct; the first point is
    usually k = 0, the control). NaN entries are dropped. Returns 0.0 if the fit starts at or
    below 0, ``inf`` if it never reaches 0, else the ceiling of the interpolated crossing."""
    k = np.asarray(k, np.float64).ravel()
    m = np.asarray(m, np.float64).ravel()
    if k.shape != m.shape:
        raise InputError(f"zero_crossing: {k.size} k values but {m.size} margins")
    ok = np.isfinite(m) & np.isfinite(k)
    if weights is not None:
        weights = np.asarray(weights, np.float64).ravel()[ok]
    k, m = k[ok], m[ok]
    if k.size == 0:
        return float("nan")
    if np.any(np.diff(k) <= 0):
        raise InputError("zero_crossing: k must be strictly increasing")
    g = decreasing_fit(k, m, weights)
    if g[0] <= 0:
        return 0.0 if k[0] == 0 else float(math.ceil(k[0]))
    below = np.flatnonzero(g <= 0)
    if below.size == 0:
        return float("inf")
    b = int(below[0])
    ka, kb, ga, gb = k[b - 1], k[b], g[b - 1], g[b]
    x = ka + (kb - ka) * ga / (ga - gb)
    # round away float noise before the ceiling (x is k_b exactly when g_b == 0)
    return float(math.ceil(round(x, 9)))
