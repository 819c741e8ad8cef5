"""Many L2-regularised multinomial logistic regressions solved at once, to high precision.

:func:`fit_logistic_block` minimises, for every model ``b`` independently,

    f_b(W) = (1/n_b) * sum_{i in S_b} CE(softmax(W^T [x_i; 1]), y_bi) + (l2/2) * ||W[:d]||_F^2

(``S_b`` the rows selected by ``masks[b]``, ``n_b = |S_b|``; the intercept row ``W[d]`` is not
penalised) by a batched truncated Newton method in float64: Newton-CG with exact
Hessian-vector products, a Jacobi preconditioner, Armijo backtracking and a per-model stop
when ``||grad f_b||_2 <= tol``. A model that has converged stops moving, so its solution is a
function of its own mask and labels only (up to float64 round-off in the batched products:
about 1e-12 on the margins, far below the solver tolerance).

This is the same objective as scikit-learn's ``LogisticRegression(C=1 / (l2 * n_b))`` with
the default multinomial loss and an unpenalised intercept (sklearn minimises
``C * sum CE + 1/2 ||W||^2``, i.e. the above times ``C * n_b``). The softmax is invariant to
adding a constant to every class's intercept; the solver starts from 0 and moves only
orthogonally to that direction, so its intercepts sum to 0 over classes.

Degenerate subsets are fine: with no examples the solution is ``W = 0`` (all margins 0); when a
class is absent from the subset its intercept drifts to -infinity, the gradient there decays
like ``exp(intercept)``, and the solver stops at the tolerance or ``max_iter`` with finite
weights.
"""

from __future__ import annotations

import numpy as np


def fit_logistic_block(x_train, masks, labels, *, n_classes: int, l2: float, tol: float = 1e-10,
                       max_iter: int = 100, max_cg: int = 250, return_info: bool = False):
    """Fit ``B`` multinomial logistic regressions; return weights float64 [B, d + 1, C].

    ``x_train`` [n, d] (float64 torch tensor), ``masks`` bool [B, n], ``labels`` int [B, n]
    (numpy). Row ``d`` of the weights is the intercept. With ``return_info`` also returns a
    dict with the final gradient norms, Newton iterations and CG iterations per model.
    """
    import torch

    masks = np.asarray(masks, bool)
    B, n = masks.shape
    d, C = x_train.shape[1], n_classes
    counts = masks.sum(axis=1)
    m = max(int(counts.max()) if B else 0, 1)
    # gather every model's rows, padded to the largest subset with weight-0 rows
    rows = np.zeros((B, m), np.int64)
    wts = np.zeros((B, m), np.float64)
    for b in range(B):
        sel = np.flatnonzero(masks[b])
        rows[b, : sel.size] = sel
        if sel.size:
            wts[b, : sel.size] = 1.0 / sel.size
    ys = np.take_along_axis(np.asarray(labels, np.int64), rows, 1)

    dt = torch.float64
    with torch.no_grad():
        x_aug = torch.cat([x_train.to(dt), torch.ones(n, 1, dtype=dt)], dim=1)
        X = x_aug.index_select(0, torch.from_numpy(rows.reshape(-1))).view(B, m, d + 1)
        Xt = X.transpose(1, 2).contiguous()  # [B, d+1, m]
        X2 = X * X
        s = torch.from_numpy(wts).view(B, 1, m)  # per-example weight 1/n_b (0 = padding)
        Y = torch.zeros(B, C, m, dtype=dt)
        Y.scatter_(1, torch.from_numpy(ys).view(B, 1, m), 1.0)
        pen = torch.full((1, 1, d + 1), l2, dtype=dt)
        pen[..., d] = 0.0  # unpenalised intercept
        # weights are kept transposed, Wt [B, C, d+1]: logits come out as [B, C, m] and the
        # softmax runs over dim 1, much faster on the CPU than over a last dim of size C
        Wt = torch.zeros(B, C, d + 1, dtype=dt)

        def loss_grad(Wt, need_grad=True):
            Z = torch.bmm(Wt, Xt)  # [B, C, m]
            lse = torch.logsumexp(Z, dim=1, keepdim=True)
            ce = ((lse - (Z * Y).sum(dim=1, keepdim=True)) * s).sum(dim=(1, 2))
            f = ce + 0.5 * (pen * Wt * Wt).sum(dim=(1, 2))
            if not need_grad:
                return f, None, None
            P = torch.exp(Z - lse)
            G = torch.bmm((P - Y) * s, X) + pen * Wt
            return f, G, P

        def hvp(P, Ps, V):
            # H V for the softmax cross-entropy: X^T [s * (P * A - P * sum_c(P * A))], A = V X^T
            A = torch.bmm(V, Xt)  # [B, C, m]
            q = (P * A).sum(dim=1, keepdim=True)
            R = A.sub_(q).mul_(Ps)
            return torch.baddbmm(pen * V, R, X)

        def bdot(a, b):
            return (a * b).sum(dim=(1, 2))

        eps = torch.finfo(dt).eps
        newton_its = torch.zeros(B, dtype=torch.int64)
        cg_its = torch.zeros(B, dtype=torch.int64)
        f, G, P = loss_grad(Wt)
        gnorm = G.flatten(1).norm(dim=1)
        for _ in range(max_iter):
            active = gnorm > tol
            if not bool(active.any()):
                break
            newton_its += active
            # --- preconditioned CG on H D = -G, to relative residual eta (forcing term) ---
            eta = torch.clamp(torch.sqrt(gnorm), max=0.5)
            rtol = eta * gnorm
            Ps = P * s
            diag = torch.baddbmm(pen.expand(B, C, d + 1), Ps * (1.0 - P), X2)
            Minv = 1.0 / torch.clamp(diag, min=1e-12)
            D = torch.zeros_like(Wt)
            R = -G
            Zr = Minv * R
            Pd = Zr.clone()
            rz = bdot(R, Zr)
            cg_active = active.clone()
            for _ in range(max_cg):
                cg_active &= R.flatten(1).norm(dim=1) > rtol
                if not bool(cg_active.any()):
                    break
                cg_its += cg_active
                Hp = hvp(P, Ps, Pd)
                pHp = bdot(Pd, Hp)
                # stop a model's CG where the curvature along its direction has vanished in
                # round-off (degenerate subsets: absent classes, a single example)
                cg_active &= pHp > 1e-14 * bdot(Pd, Pd) * l2
                alpha = torch.where(cg_active, rz / torch.where(cg_active, pHp, 1.0), 0.0)
                a3 = alpha.view(B, 1, 1)
                on = cg_active.view(B, 1, 1)
                D = torch.where(on, D + a3 * Pd, D)
                R = torch.where(on, R - a3 * Hp, R)
                Zr = Minv * R
                rz_new = bdot(R, Zr)
                beta = torch.where(cg_active, rz_new / torch.where(cg_active, rz, 1.0), 0.0)
                Pd = torch.where(on, Zr + beta.view(B, 1, 1) * Pd, Pd)
                rz = torch.where(cg_active, rz_new, rz)
            # --- Armijo backtracking per model ---
            slope = bdot(G, D)  # < 0 for active models
            step = torch.where(active, 1.0, 0.0).to(dt)
            todo = active.clone()
            for _ in range(30):
                f_new, _, _ = loss_grad(Wt + step.view(B, 1, 1) * D, need_grad=False)
                # Armijo, with a few ulps of slack: near the optimum the decrease of f is below
                # float64 round-off and the (then quadratically convergent) full step is taken
                ok = f_new <= f + 1e-4 * step * slope + 8 * eps * f.abs()
                todo &= ~ok
                if not bool(todo.any()):
                    break
                step = torch.where(todo, 0.5 * step, step)
            step = torch.where(todo, 0.0, step)  # no decrease found: do not move
            Wt = Wt + step.view(B, 1, 1) * D
            f, G, P = loss_grad(Wt)
            gnorm = torch.where(step > 0, G.flatten(1).norm(dim=1), torch.where(active, 0.0, gnorm))
        # canonical intercepts: sum to 0 over classes (the softmax ignores a common shift)
        Wt[:, :, d] -= Wt[:, :, d].mean(dim=1, keepdim=True)
        W = Wt.transpose(1, 2).contiguous()
    if return_info:
        _, G, _ = loss_grad(Wt)
        info = {"grad_norm": G.flatten(1).norm(dim=1).numpy(), "newton_iters": newton_its.numpy(),
                "cg_iters": cg_its.numpy()}
        return W, info
    return W
