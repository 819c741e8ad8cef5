"""Spectral clustering of points (paper §4.3.1, App. I; REFERENCE.md §4): an RBF affinity
A_ij = exp(−γ‖x_i − x_j‖²), the top eigenvectors of the normalised affinity D^{-1/2} A D^{-1/2}
(= the bottom ones of the normalised Laplacian), rows scaled by D^{-1/2} with deterministic
signs as scikit-learn's ``spectral_embedding(drop_first=False)``, then k-means (``n_init=10``).

Three ways to the embedding:

* ``exact``: the dense n × n affinity without self-loops (scipy's Laplacian ignores the
  diagonal, so scikit-learn's degrees exclude it), ``eigh`` on NumPy or CuPy — small inputs;
* ``nystrom``: :mod:`.nystrom`, landmarks and the one-shot orthogonalisation, out of core;
* ``knn``: :mod:`.knn_graph`, a sparse symmetric kNN graph and ARPACK (Lanczos on the
  normalised affinity);
* ``auto``: exact up to the setting ``dmdask.cluster.exact-max-points``, else Nyström.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import config
from ..errors import InputError

__all__ = ["METHODS", "SpectralResult", "exact_embedding", "knn_embedding", "resolve_method",
           "spectral_clusters"]

METHODS = ("auto", "exact", "nystrom", "knn")


@dataclass
class SpectralResult:
    labels: np.ndarray  # (n,) cluster of each point
    embedding: np.ndarray  # (n, C) spectral embedding
    eigenvalues: np.ndarray  # (C,) of the normalised affinity, largest first
    method: str  # the method that ran (auto resolved)
    landmarks: np.ndarray | None = None  # Nyström's landmark indices


def _degrees_scaled(d: np.ndarray) -> np.ndarray:
    d = np.asarray(d, np.float64).copy()
    d[d == 0] = 1.0  # an isolated point: scipy's Laplacian treats its degree as 1
    return np.sqrt(d)


def _gram(x, client=None):
    """(x xᵀ, squared row norms) in float64 on x's backend. A dask ``x`` is reduced by dask's
    matrix product over its feature chunks, so only the n × n Gram comes back, never the
    n × features input (50,000 features × 5,000 points would be 2 GB)."""
    from ..backend import get_namespace

    if hasattr(x, "dask"):
        from ..scheduling import compute

        x = x.astype(np.float64)
        g, sq = compute([x @ x.T, (x * x).sum(axis=1)], client=client)
        return g, sq
    xp = get_namespace(x)
    x = xp.asarray(x, dtype=xp.float64)
    return x @ x.T, (x * x).sum(axis=1)


def exact_embedding(x, n_components: int, *, gamma: float = 1.0, self_loops: bool = False,
                    client=None) -> tuple[np.ndarray, np.ndarray]:
    """(embedding n × C, eigenvalues) of the dense RBF affinity of the rows of ``x`` (NumPy or
    CuPy, or dask: only its n × n Gram is computed — this is for small n). ``self_loops=False``
    drops A_ii from the degrees and the matrix, as scikit-learn; True keeps them (what Nyström
    approximates). Refuses non-finite points."""
    from ..backend import get_namespace, to_numpy
    from .nystrom import rbf_from_gram, sign_flip

    g, sq = _gram(x, client)
    xp = get_namespace(g)
    if not bool(to_numpy(xp.isfinite(sq).all())):  # NaN or inf in a row: its norm is too
        raise InputError("the points contain NaN or infinite values")
    a = rbf_from_gram(g, sq, sq, gamma)
    if not self_loops:
        a[xp.arange(a.shape[0]), xp.arange(a.shape[0])] = 0.0
    d = xp.asarray(_degrees_scaled(to_numpy(a.sum(axis=1))))
    m = a / d[:, None] / d[None, :]
    m = (m + m.T) / 2
    n = m.shape[0]
    if xp is np and n > 5 * n_components + 1:
        # only the top C: Lanczos on the dense matrix (as scikit-learn's ARPACK); a full
        # eigh of 5,000 points took 34 s on 2 cores, O(n³) whatever the C
        from scipy.sparse.linalg import eigsh

        v0 = np.random.default_rng(0).uniform(-1, 1, n)
        lam, u = eigsh(m, k=n_components, which="LA", tol=0, v0=v0)
        order = np.argsort(lam, kind="stable")
        lam, u = lam[order], u[:, order]
    else:
        lam, u = xp.linalg.eigh(m)
        lam, u = lam[n - n_components:], u[:, n - n_components:]
    lam, u = lam[::-1], u[:, ::-1]
    return sign_flip(to_numpy(u / d[:, None])), to_numpy(lam)


def knn_embedding(x, n_components: int, *, n_neighbors: int = 10, weights: str = "connectivity",
                  gamma: float = 1.0, seed: int = 0, client=None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(embedding n × C, eigenvalues) of the symmetric kNN graph of the rows of ``x``: the
    normalised Laplacian's bottom eigenvectors (the normalised affinity's top ones) by ARPACK's
    Lanczos, the start vector drawn from ``seed``."""
    from scipy import sparse
    from scipy.sparse import csgraph
    from scipy.sparse.linalg import eigsh

    from .knn_graph import knn_graph
    from .nystrom import sign_flip

    a = knn_graph(x, n_neighbors, weights=weights, gamma=gamma, client=client)
    lap, dd = csgraph.laplacian(a, normed=True, return_diag=True)
    # the normalised affinity M = I − L (diagonal ignored, as scipy's Laplacian): its largest
    # eigenpairs by plain Lanczos. scikit-learn factorises L for shift-invert instead; on a
    # 10,000-point kNN graph of 512-d points that factorisation took 164 s against 0.33 s
    # here, for the same subspace (principal angles 1e-13)
    m = sparse.identity(lap.shape[0], format="csr") - lap.tocsr()
    m.setdiag(0.0)
    v0 = np.random.default_rng(seed).uniform(-1, 1, m.shape[0])
    lam, u = eigsh(m, k=n_components, which="LA", tol=0, v0=v0)
    order = np.argsort(-lam, kind="stable")
    return sign_flip(u[:, order] / np.asarray(dd)[:, None]), lam[order]


def resolve_method(method: str, n: int) -> str:
    """``auto`` → ``exact`` up to ``dmdask.cluster.exact-max-points`` points, else ``nystrom``."""
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if method != "auto":
        return method
    return "exact" if n <= int(config.get("cluster.exact-max-points", 5000)) else "nystrom"


def _kmeans(emb: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=n_clusters, n_init=int(config.get("cluster.kmeans-init", 10)),
                random_state=seed)
    return km.fit_predict(emb).astype(np.int64)


def spectral_clusters(x, n_clusters: int, *, method: str = "auto", gamma: float | None = None,
                      n_landmarks: int | None = None, n_neighbors: int | None = None,
                      knn_weights: str | None = None, seed: int = 0, client=None
                      ) -> SpectralResult:
    """Spectral clustering of the rows of ``x`` (points × features; NumPy, or dask with NumPy
    or CuPy chunks, chunked along either axis) into ``n_clusters``. Defaults from
    ``dmdask.cluster``: ``gamma``, ``landmarks``, ``neighbors``, ``knn-weights``."""
    n_clusters = int(n_clusters)
    shape = tuple(x.shape)
    if len(shape) != 2:
        raise InputError(f"points must be a 2-d (points × features) array, got shape {shape}")
    n = shape[0]
    if n_clusters < 1:
        raise InputError(f"the cluster count must be >= 1, got {n_clusters}")
    if n_clusters > n:
        raise InputError(f"{n_clusters} clusters for {n} points: the cluster count must not "
                         "exceed the number of points")
    gamma = float(config.get("cluster.gamma", 1.0) if gamma is None else gamma)
    if not gamma > 0:
        raise InputError(f"gamma must be > 0, got {gamma}")
    method = resolve_method(method, n)
    landmarks = None
    if method == "exact":
        emb, lam = exact_embedding(x, n_clusters, gamma=gamma, client=client)
    elif method == "nystrom":
        from .nystrom import nystrom_embedding

        L = int(config.get("cluster.landmarks", 1000) if n_landmarks is None else n_landmarks)
        if L < 1:
            raise InputError(f"landmarks must be >= 1, got {L}")
        res = nystrom_embedding(x, n_clusters, gamma=gamma, n_landmarks=L, seed=seed,
                                rcond=float(config.get("cluster.rcond", 1e-10)), client=client)
        emb, lam, landmarks = res.embedding, res.eigenvalues, res.landmarks
    else:
        k = int(config.get("cluster.neighbors", 10) if n_neighbors is None else n_neighbors)
        if k < 1:
            raise InputError(f"neighbors must be >= 1, got {k}")
        if n_clusters >= n:
            raise InputError(f"the kNN method needs fewer clusters ({n_clusters}) than points "
                             f"({n}) for its sparse eigensolver")
        w = knn_weights or config.get("cluster.knn-weights", "connectivity")
        if w not in ("connectivity", "rbf"):
            raise InputError(f"knn weights must be 'connectivity' or 'rbf', not {w!r}")
        emb, lam = knn_embedding(x, n_clusters, n_neighbors=k, weights=w, gamma=gamma,
                                 seed=seed, client=client)
    return SpectralResult(_kmeans(emb, n_clusters, seed), emb, lam, method, landmarks)
