"""Active-set Newton steps on a column's settled support and signs (the masked route's remedy
for ill-conditioned supports when n ≲ d)."""

from __future__ import annotations

from ....backend import to_numpy
from .arrays import _batched_solve, _size_chunks, _stack_grams


def newton_step(prob, x, q, lam, max_k=1024):
    """An active-set Newton step on each column's current support S and signs: on the
    orthant of sign(x_S) the objective is the quadratic ½wᵀQ_SS w − (q_S − λ·sign)ᵀw,
    minimised at w_N = Q_SS⁻¹(q_S − λ·sign). Coordinates whose sign flips at w_N leave S
    and the reduced system is solved again (up to ``newton_rounds`` times); of the points
    found, the one with the lowest LASSO objective is kept if it is lower than x's (never
    uphill; a singular Q_SS gives no step). First-order methods need ~√κ(Q_SS) iterations
    per λ; with few models per training example (n ≲ d) the supports approach the rows
    and κ reaches the hundreds, where one |S| × |S| solve replaces them.

    Returns (columns changed, their new values [d, k])."""
    xp = prob.xp
    nz = x != 0
    k = nz.sum(axis=0)
    cand = xp.flatnonzero((k > 0) & (k <= max_k))
    empty = (xp.zeros(0, dtype=xp.int64), None)
    if cand.size == 0:
        return empty
    cols, outs = [], []
    # columns in chunks of similar support size: a stack is padded to its largest
    for sub in _size_chunks(to_numpy(k[cand]), max_entries=2**22):
        c = cand[xp.asarray(sub)]
        ch, xc = _newton_stack(prob, x[:, c], q[:, c], lam[c], nz[:, c])
        if ch.size:
            cols.append(c[ch])
            outs.append(xc)
    if not cols:
        return empty
    return xp.concatenate(cols), xp.concatenate(outs, axis=1)


def _newton_stack(prob, x, q, lam, nz):
    """:func:`newton_step` for columns of similar support size (one padded stack)."""
    xp = prob.xp
    idx, valid, Qs = _stack_grams(prob.Q, nz)
    tcol = xp.arange(x.shape[1])[:, None]
    xs = x[idx, tcol] * valid
    qs = q[idx, tcol] * valid
    lc = lam[:, None]

    def obj(w, r):
        return (0.5 * xp.sum(w * xp.einsum("tij,tj->ti", Qs[r], w), axis=1)
                - xp.sum(qs[r] * w, axis=1) + lc[r, 0] * xp.abs(w).sum(axis=1))

    allr = xp.arange(xs.shape[0])
    f0 = obj(xs, allr)
    best, fbest = xs.copy(), f0.copy()
    sg = xp.sign(xs)
    keep = valid & (xs != 0)
    r = allr
    eye = xp.eye(idx.shape[1], dtype=bool)
    for _round in range(prob.newton_rounds):
        # the quadratic on the orthant of `sg` over the coordinates `keep`; where signs
        # flip at its minimum those coordinates leave, and the reduced problem is solved
        kr = keep[r]
        M = xp.where(kr[:, :, None] & kr[:, None, :], Qs[r], 0.0)
        M[:, eye] += ~kr
        wN = _batched_solve(M, (qs[r] - lc[r] * sg[r]) * kr, xp) * kr
        fN = obj(wN, r)
        upd = xp.isfinite(fN) & (fN < fbest[r])
        best[r[upd]] = wN[upd]
        fbest[r[upd]] = fN[upd]
        flip = kr & (xp.sign(wN) != sg[r])
        more = flip.any(axis=1)
        if not bool(more.any()):
            break
        keep[r] = kr & ~flip
        r = r[more]
    gi = xp.flatnonzero(fbest < f0)
    if gi.size == 0:
        return xp.zeros(0, dtype=xp.int64), None
    out = xp.zeros((x.shape[0], gi.size))
    ii, vv = idx[gi], valid[gi]
    rr = xp.broadcast_to(xp.arange(gi.size)[:, None], ii.shape)
    out[ii[vv], rr[vv]] = best[gi][vv]
    return gi, out
