"""Leave-one-out without refitting (REFERENCE §5): exact for least squares and ridge by
Sherman–Morrison (§5.1), one Newton step for softmax/logistic models (§5.2).

Both work on the *outputs* the models produce (logits, one column per class); the estimator
wrappers (:mod:`dmdask.analysis.estimators.loo`) turn logits into the store's margins. Pure
NumPy, float64, chunked over the left-out examples so memory stays ``chunk × m × C``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..errors import InputError

__all__ = ["margins_from_logits", "newton_loo_logits", "ridge_fit", "ridge_loo_logits",
           "softmax_newton_terms"]


def margins_from_logits(z: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Correct-class margins z_y − max_{c≠y} z_c of logits ``[..., m, C]`` for labels ``[m]``."""
    z = np.asarray(z, np.float64)
    labels = np.asarray(labels, np.int64)
    hit = np.arange(z.shape[-1]) == labels[:, None]
    zy = np.where(hit, z, 0.0).sum(-1)
    return zy - np.where(hit, -np.inf, z).max(-1)


def _chunks(n: int, chunk: int) -> Iterator[slice]:
    for s in range(0, n, max(1, int(chunk))):
        yield slice(s, min(n, s + max(1, int(chunk))))


def ridge_fit(X: np.ndarray, Y: np.ndarray, penalty) -> tuple[np.ndarray, np.ndarray]:
    """β = (XᵀX + diag(penalty))⁻¹XᵀY and the inverse H⁻¹ (an intercept is a ones column of
    X with penalty 0; ``penalty`` a scalar or one value per column)."""
    X = np.asarray(X, np.float64)
    Y = np.asarray(Y, np.float64)
    pen = np.broadcast_to(np.asarray(penalty, np.float64), (X.shape[1],))
    if (pen < 0).any():
        raise InputError("ridge penalty must be >= 0")
    H = X.T @ X + np.diag(pen)
    Hinv = np.linalg.inv(H)
    if not np.isfinite(Hinv).all():
        raise InputError("least-squares problem is singular: add a ridge penalty")
    return Hinv @ (X.T @ Y), Hinv


def ridge_loo_logits(X: np.ndarray, Y: np.ndarray, penalty, X_test: np.ndarray, *,
                     chunk: int = 256) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """Exact leave-one-out predictions of ridge/OLS (§5.1) on ``X_test`` [m, p].

    Yields ``(rows, full, loo)`` per chunk of left-out rows: ``full`` [m, C] are the
    predictions of the fit on all n rows, ``loo`` [len(rows), m, C] those of the fit without
    each row i: full − (x_tᵀH⁻¹x_i)·e_i/(1 − h_ii). A row of leverage 1 (its removal makes
    the problem singular) gets NaN."""
    X = np.asarray(X, np.float64)
    Y = np.asarray(Y, np.float64)
    if Y.ndim == 1:
        Y = Y[:, None]
    beta, Hinv = ridge_fit(X, Y, penalty)
    Xt = np.asarray(X_test, np.float64)
    full = Xt @ beta
    HX = X @ Hinv  # row i: (H⁻¹x_i)ᵀ
    h = np.einsum("ip,ip->i", HX, X)
    E = Y - X @ beta
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(1.0 - h > 1e-12, 1.0 / (1.0 - h), np.nan)
    for rows in _chunks(X.shape[0], chunk):
        k = HX[rows] @ Xt.T  # [r, m]: x_tᵀH⁻¹x_i
        yield rows, full, full[None] - k[:, :, None] * (E[rows] * scale[rows, None])[:, None, :]


def softmax_newton_terms(labels: np.ndarray, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-example gradient coefficients r = p − onehot(y) [n, C] and softmax Hessians
    A = diag(p) − ppᵀ [n, C, C] of the cross-entropy at logits ``Z`` [n, C]."""
    Z = np.asarray(Z, np.float64)
    P = np.exp(Z - Z.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    R = P.copy()
    R[np.arange(len(R)), np.asarray(labels, np.int64)] -= 1.0
    A = np.einsum("ic,cd->icd", P, np.eye(P.shape[1])) - P[:, :, None] * P[:, None, :]
    return R, A


def _pinv_psd(K: np.ndarray, rcond: float) -> np.ndarray:
    K = 0.5 * (K + K.T)
    ev, V = np.linalg.eigh(K)
    keep = ev > rcond * max(ev.max(), 0.0)
    return (V[:, keep] / ev[keep]) @ V[:, keep].T


def newton_loo_logits(J: np.ndarray, labels: np.ndarray, Z: np.ndarray, theta: np.ndarray,
                      penalty, J_test: np.ndarray, Z_test: np.ndarray, *,
                      rcond: float = 1e-12, chunk: int = 128
                      ) -> Iterator[tuple[slice, np.ndarray]]:
    """One-Newton-step leave-one-out logits (§5.2) of a model whose logits are affine in θ.

    The model minimises L(θ) = (1/n)Σ_i CE(z_i(θ), y_i) + ½Σ c⊙θ² (c = ``penalty``, a
    scalar or one value per parameter) over its n training rows; ``J`` [n, C, P] are the
    Jacobians ∂z_i/∂θ, ``Z`` [n, C] the logits at the optimum ``theta`` [P], ``J_test``
    [m, C, P] and ``Z_test`` [m, C] the same on the targets. With per-example Hessians
    H_i = J_iᵀA_iJ_i and gradients g_i = J_iᵀr_i, the leave-i-out objective
    (1/(n−1))Σ_{j≠i}ℓ_j + ½θᵀCθ gets one Newton step from θ* (optimality makes its gradient
    −(Cθ* + g_i)/(n−1)):

        θ₍₋ᵢ₎ = θ* + (K − H_i)⁻¹(Cθ* + g_i),   K = Σ_j H_j + (n−1)C

    (K − H_i)⁻¹ by Woodbury on the rank-C term (the multi-class form of the leverage factor
    1/(1 − ℓ''_i h_i)). Directions null for every term (the softmax's shift of all
    intercepts) are dropped by a pseudo-inverse (eigenvalues ≤ ``rcond``·max).
    Yields ``(rows, loo)`` with ``loo`` [len(rows), m, C], the target logits at θ₍₋ᵢ₎
    (exact given θ₍₋ᵢ₎: the logits are affine in θ)."""
    J = np.asarray(J, np.float64)
    n, C, P = J.shape
    theta = np.asarray(theta, np.float64).ravel()
    pen = np.broadcast_to(np.asarray(penalty, np.float64), (P,))
    R, A = softmax_newton_terms(labels, Z)
    K = np.zeros((P, P))
    for rows in _chunks(n, 512):
        AJ = np.einsum("icd,idp->icp", A[rows], J[rows])
        K += np.einsum("icp,icq->pq", J[rows], AJ)
    K += np.diag((n - 1) * pen)
    Kinv = _pinv_psd(K, rcond)
    v0 = Kinv @ (pen * theta)  # K⁻¹Cθ*, the same for every i
    Jt = np.asarray(J_test, np.float64)
    Zt = np.asarray(Z_test, np.float64)
    eye = np.eye(C)
    for rows in _chunks(n, chunk):
        Ji, Ai, Ri = J[rows], A[rows], R[rows]
        Q = np.einsum("pq,icq->ipc", Kinv, Ji)  # K⁻¹J_iᵀ [r, P, C]
        M = np.einsum("icp,ipd->icd", Ji, Q)  # J_iK⁻¹J_iᵀ [r, C, C]
        v = v0[None] + np.einsum("ipc,ic->ip", Q, Ri)  # K⁻¹(Cθ* + g_i)
        Jv = np.einsum("icp,ip->ic", Ji, v)
        rhs = np.einsum("icd,id->ic", Ai, Jv)
        w = np.linalg.solve(eye[None] - Ai @ M, rhs[..., None])[..., 0]
        dtheta = v + np.einsum("ipc,ic->ip", Q, w)
        yield rows, Zt[None] + np.einsum("mcp,ip->imc", Jt, dtheta)
