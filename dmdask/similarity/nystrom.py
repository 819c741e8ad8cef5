"""Nyström spectral embedding with the one-shot orthogonalisation of Fowlkes, Belongie, Chung
and Malik (2004), out of core and backend-agnostic.

The RBF affinity K is never formed. With landmarks L (a seeded random subset of the points),
C = K[:, L] (n × L) and W = K[L, L], the affinity is approximated by K̂ = C W⁺ Cᵀ. Three passes
over the row blocks of the input (dask chunks, NumPy or CuPy, chunked along both axes):

1. s = Cᵀ1 and W (L-vectors, L × L), so the degrees are d = K̂1 = C (W⁺ s), never forming n × n;
2. with C̃ = D^{-1/2} C, G = C̃ᵀC̃ accumulated over row blocks (L × L);
3. with S = W^{+½} G W^{+½} = U Λ Uᵀ, the orthonormal eigenvectors of the normalised affinity
   D^{-1/2} K̂ D^{-1/2} = V Λ Vᵀ are V = C̃ W^{+½} U Λ^{-½} (VᵀV = I by construction); only
   its top ``n_components`` columns come back (n × C).

Only L × L matrices (and L-vectors) are decomposed on the coordinator, in float64 NumPy. The
self-loops are part of K̂ (K_ii = 1), so with every point a landmark this is the exact
embedding of the full RBF matrix *with* its diagonal (``spectral.exact_embedding(...,
self_loops=True)``); scikit-learn drops the diagonal, a difference of D^{-1} that vanishes as
the degrees grow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DmdaskError, InputError

__all__ = ["NystromResult", "nystrom_embedding", "rbf_from_gram", "sign_flip"]


@dataclass
class NystromResult:
    embedding: np.ndarray  # (n, C): eigenvectors scaled by D^{-1/2}, sign-fixed
    eigenvalues: np.ndarray  # (C,) of the normalised affinity, largest first
    landmarks: np.ndarray  # (L,) point indices
    degrees: np.ndarray  # (n,) approximate degrees K̂1


def rbf_from_gram(g, sx, sy, gamma: float):
    """exp(−γ‖x_i − y_j‖²) from the inner products g = x yᵀ and the squared norms (the
    distance clipped at 0: rounding can make it slightly negative), on g's backend."""
    from ..backend import get_namespace

    xp = get_namespace(g)
    return xp.exp(-gamma * xp.maximum(sx[:, None] + sy[None, :] - 2.0 * g, 0.0))


def _c_block(xs, ls, s, sl, gamma: float):
    """A row block of C = K[:, L] from the row block's feature chunks ``xs`` and the
    landmarks' ``ls`` (lists over the feature chunks)."""
    g = xs[0] @ ls[0].T
    for a, b in zip(xs[1:], ls[1:], strict=True):
        g += a @ b.T
    return rbf_from_gram(g, s, sl, gamma)


def _psd_inverse_sqrt(w: np.ndarray, rcond: float) -> tuple[np.ndarray, np.ndarray]:
    """(W⁺, W^{+½}) of a symmetric PSD matrix, eigenvalues below rcond·λ_max dropped."""
    from scipy.linalg import eigh

    lam, q = eigh((w + w.T) / 2)
    keep = lam > rcond * max(lam.max(), 0.0)
    if not keep.any():
        raise DmdaskError("the landmarks' affinity matrix is zero: gamma is too large for "
                          "these points (every pair is unrelated)")
    lam, q = lam[keep], q[:, keep]
    return (q / lam) @ q.T, (q / np.sqrt(lam)) @ q.T


def _as_dask(x):
    import dask.array as da

    if isinstance(x, da.Array):
        return x
    x = np.asarray(x)
    return da.from_array(x, chunks=(max(1, min(x.shape[0], 4096)), -1))


def nystrom_embedding(x, n_components: int, *, gamma: float = 1.0, n_landmarks: int = 500,
                      seed: int = 0, rcond: float = 1e-10, client=None) -> NystromResult:
    """Spectral embedding (n × ``n_components``, as scikit-learn's ``spectral_embedding``
    with ``drop_first=False``: rows scaled by D^{-1/2}, deterministic signs) of the RBF
    affinity of the rows of ``x`` (dask or NumPy, points × features), by Nyström with
    ``n_landmarks`` seeded random landmarks."""
    import dask.array as da

    from ..backend import get_namespace, to_numpy
    from ..scheduling import compute

    x = _as_dask(x)
    n = x.shape[0]
    L = min(int(n_landmarks), n)
    if L < n_components:
        raise InputError(f"{L} landmarks for {n_components} components: use at least as "
                         "many landmarks as clusters")
    xp = get_namespace(x._meta)
    x = x.astype(np.float64)
    land = np.sort(np.random.default_rng(seed).choice(n, size=L, replace=False))
    sq = (x * x).sum(axis=1)
    xl = x[land].rechunk({0: -1})  # lazy: the L rows in one block per feature chunk
    # one task per row block of C: its feature chunks summed in the task, one after another,
    # so no partial product of another row block waits in memory beside it
    c = da.blockwise(_c_block, "ij", x, "ik", xl, "jk", sq, "i", sq[land].rechunk(-1), "j",
                     gamma=gamma, concatenate=False, dtype=np.float64,
                     meta=xp.empty((0, 0), np.float64))

    def host(a):
        return to_numpy(a).astype(np.float64)

    # pass 1: s = Cᵀ1 and W = C[L]
    s, w = (host(a) for a in compute([c.sum(axis=0), c[land]], client=client))
    if not (np.isfinite(s).all() and np.isfinite(w).all()):
        raise InputError("the points contain NaN or infinite values")
    w_pinv, w_isqrt = _psd_inverse_sqrt(w, rcond)
    # pass 2: the degrees d = C (W⁺ s) and G = C̃ᵀC̃, C̃ = D^{-1/2} C, per row block
    d = c @ xp.asarray(w_pinv @ s)
    ct = c / da.sqrt(d)[:, None]  # NaN where a degree is negative: refused below
    d_host, g = (host(a) for a in compute([d, ct.T @ ct], client=client))
    if (d_host <= 0).any():
        raise DmdaskError(f"{int((d_host <= 0).sum())} points got a non-positive Nyström "
                          f"degree: use more landmarks than {L} (or a smaller gamma)")
    sm = w_isqrt @ g @ w_isqrt
    lam, u = np.linalg.eigh((sm + sm.T) / 2)
    top = np.argsort(-lam, kind="stable")[:n_components]
    lam, u = lam[top], u[:, top]
    if (lam <= 0).any():
        raise DmdaskError("the Nyström affinity has fewer positive eigenvalues than "
                          f"{n_components} clusters: use more landmarks")
    # pass 3: V = C̃ W^{+½} U Λ^{-½}, rows scaled by D^{-1/2} as scikit-learn's embedding
    proj = xp.asarray(w_isqrt @ u / np.sqrt(lam))
    emb = host(compute([(ct @ proj) / da.sqrt(d)[:, None]], client=client)[0])
    return NystromResult(sign_flip(emb), lam, land, d_host)


def sign_flip(emb: np.ndarray) -> np.ndarray:
    """Each column's sign such that its largest-magnitude entry is positive (scikit-learn's
    ``_deterministic_vector_sign_flip``)."""
    i = np.argmax(np.abs(emb), axis=0)
    sg = np.sign(emb[i, np.arange(emb.shape[1])])
    sg[sg == 0] = 1
    return emb * sg
