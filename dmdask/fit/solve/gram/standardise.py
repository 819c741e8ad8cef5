"""The standardised centred problem from sufficient statistics: the Gram Q (built in row tiles,
float64 and/or float32), the target statistics q, yv, λ_max, and the constant targets that get
no path."""

from __future__ import annotations

import numpy as np

from ....backend import get_namespace, to_numpy
from ...stats import SufficientStats


def lambda_max(q):
    """λ_max [T] of the standardised problem: ‖X̃ᵀy_c‖∞/n = max_j |q_jt|."""
    xp = get_namespace(q)
    return xp.abs(q).max(axis=0)


def flat_targets(st: SufficientStats, cols, ref: SufficientStats | None = None) -> np.ndarray:
    """Targets [T] bool among ``cols`` whose outputs are constant on the rows of ``st``, up
    to the rounding of the sums they come from: Σy² − (Σy)²/n ≤ 16γ_N·Σy² summed over the
    ``ref`` rows (N of them; default ``st``'s own), γ_N = Nu/(1 − Nu), u = 2⁻⁵³.

    Why that bound: margins are float32, so their squares are exact in float64, and any order
    of summation of N terms errs by at most γ_N times the sum of their magnitudes (Higham,
    Accuracy and Stability §4.2). Σy² and (Σy)²/n then err by at most γ_N·Σy² and 2γ_N·Σy²
    (Cauchy–Schwarz), and a CV training set's sums (all rows minus a fold, n ≥ N/2) by at most
    about 8γ_N·Σy²; the rule takes twice that. Below it the data cannot tell a spread from
    rounding, and the LASSO answer is w = 0 at every λ (bias = the mean): no path."""
    ref = st if ref is None else ref
    xp = st.xp
    N = float(ref.n)
    u = 2.0**-53
    gam = N * u / (1 - N * u)
    spread = st.syy[cols] - st.sy[cols] ** 2 / st.n
    return to_numpy(spread <= 16 * gam * xp.abs(ref.syy[cols]))


def _std_targets(st: SufficientStats, cols):
    """Standardised (Q-free) target statistics of targets ``cols``: (None, q, yv, mu, σ, ȳ)."""
    xp = st.xp
    mu = st.mu
    sigma = st.sigma
    inv = xp.where(sigma > 0, 1.0 / xp.where(sigma > 0, sigma, 1.0), 0.0)
    sy = st.sy[cols]
    Cc = st.C[:, cols] - xp.outer(st.s, sy) / st.n
    q = Cc * (inv[:, None] / st.n)
    yv = xp.maximum(st.syy[cols] - sy**2 / st.n, 0.0) / st.n
    return None, q, yv, mu, sigma, sy / st.n


def _std_gram(st: SufficientStats, fast: bool = False):
    """Q = D⁻¹(G − s sᵀ/n)D⁻¹/n (float64); with ``fast`` also (Q32, offmax): its float32 copy
    and max_{j≠k}|Q_jk|. One pass over G in row tiles (no d × d temporaries)."""
    Q, Q32, offmax = _std_tiles(st.G, st.s, st.n, st.sigma, keep64=True, want32=fast)
    return (Q, Q32, offmax) if fast else Q


def _std_tiles(G, s, n, sigma, *, keep64=True, want32=False, tile=32):
    Q, Q32 = _std_empty(get_namespace(G), G.shape[0], keep64, want32)
    offmax = _std_rows(G, s, n, sigma, Q, Q32, 0, G.shape[0], tile=tile)
    return Q, Q32, offmax


def _std_empty(xp, d: int, keep64: bool, want32: bool):
    """Uninitialised (Q float64, Q32) of d × d, None where not wanted."""
    return (xp.empty((d, d)) if keep64 else None,
            xp.empty((d, d), dtype=xp.float32) if want32 else None)


def _std_rows(G, s, n, sigma, Q, Q32, r0, r1, tile=32) -> float:
    """Rows [r0, r1) of Q = D⁻¹(G − s sᵀ/n)D⁻¹/n into ``Q`` (float64) and/or ``Q32``, in row
    tiles (no d × d temporaries); returns max_{j≠k}|Q_jk| over those rows (with ``Q32``:
    its float32 entries, rounded up)."""
    xp = get_namespace(G)
    if G.flags.f_contiguous and not G.flags.c_contiguous:
        G = G.T  # symmetric: the C-ordered view, so row tiles are contiguous (3× faster)
    inv = xp.where(sigma > 0, 1.0 / xp.where(sigma > 0, sigma, 1.0), 0.0)
    sn = s / n
    col = inv / n
    offs = []
    for a in range(r0, r1, tile):
        b = min(a + tile, r1)
        R = G[a:b] - s[a:b, None] * sn[None, :]
        R *= inv[a:b, None]
        R *= col[None, :]
        if Q is not None:
            Q[a:b] = R
        if Q32 is not None:
            Q32[a:b] = R
            ii = xp.arange(b - a)
            R[ii, ii + a] = 0.0
            offs.append(xp.abs(R).max())
    if Q32 is None or not offs:
        return 0.0
    return float(xp.max(xp.stack(offs))) * (1 + 2.0**-23)


def _build_grams(specs, threads: int):
    """The standardised Grams of ``specs`` [(stats, σ, keep64, want32)]: a list of (Q, Q32,
    offmax). Memory-bound passes (on a fresh machine dominated by first touches of new
    pages), run as equal row ranges on local threads so that no thread gets two matrices
    while another idles."""
    out, jobs = [], []
    for st, sigma, keep64, want32 in specs:
        d = st.G.shape[0]
        Q, Q32 = _std_empty(st.xp, d, keep64, want32)
        out.append((Q, Q32))
        parts = max(1, min(threads, d // 256))
        cuts = [(k * d) // parts for k in range(parts + 1)]
        jobs += [(_std_rows, st.G, st.s, st.n, sigma, Q, Q32, a, b)
                 for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
        out[-1] += (len(jobs) - parts, len(jobs))
    offs = _parallel_map(jobs, threads)
    return [(Q, Q32, max(offs[i:j], default=0.0)) for Q, Q32, i, j in out]


def _parallel_map(jobs, threads: int):
    """``[f(*args) for f, *args in jobs]`` on up to ``threads`` threads (NumPy releases the
    GIL in the d × d passes these jobs make)."""
    if threads <= 1 or len(jobs) <= 1:
        return [f(*a) for f, *a in jobs]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(threads, len(jobs))) as ex:
        return list(ex.map(lambda j: j[0](*j[1:]), jobs))
