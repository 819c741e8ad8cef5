"""The duality gap (REFERENCE.md §1.5) of the standardised problem, from its statistics: the
certificate every convergence decision of the Gram path rests on."""

from __future__ import annotations

from ....backend import get_namespace


def _gap(yv, lam, W, C, q, cinf):
    """Duality gap (§1.5) per target from the statistics; W, C, q restricted to any set of
    rows containing W's support, ``cinf`` = max |C| over all d coordinates."""
    xp = get_namespace(W)
    return _gap_pieces(yv, lam, xp.sum(q * W, axis=0), xp.sum(W * C, axis=0),
                       xp.abs(W).sum(axis=0), xp.maximum(lam, cinf))


def _gap_pieces(yv, lam, qw, wc, l1, s):
    """The duality gap from its pieces: qw = qᵀw, wc = wᵀC, l1 = ‖w‖₁, s = max(λ, ‖C‖∞)."""
    xp = get_namespace(qw)
    R = xp.maximum(yv - qw - wc, 0.0)
    ry = yv - qw
    # the dual point is the residual scaled by λ/s ≤ 1; at s = 0 (λ = 0 and a zero gradient:
    # a constant target) the scale is 0, not 0/0
    r = lam / xp.where(s > 0, s, 1.0)
    return R / 2 + lam * l1 + r * r * R / 2 - r * ry
