"""The influence–OLS lemma (paper Lemma 6.1, REFERENCE.md §2.5) checked on a run store.

For fixed-size subsets at any α, the population identities give, per target, between the
difference of means ``infl`` (Feldman–Zhang) and the min-norm OLS datamodel with intercept
``w``:

    w = ((N − 1)/N) · infl          (N training examples)

so with m fitting models the sample estimates satisfy D(m) = ŵ − ((N−1)/N)·înfl → 0 as m
grows, at the rate of their sampling error. This module measures exactly that, on nested
prefixes of the fitting models, from one statistics pass:

* D on the prefix, its relative size ‖D‖/‖((N−1)/N)·înfl‖ (mean over targets);
* the sampling error of every D_{t,j} by the delete-one-group jackknife over ``groups``
  contiguous groups of the prefix, and z = D/SE. If the lemma holds, z is ~ Student-t with
  groups − 1 degrees of freedom, so ``mean_z2`` should be near (g − 1)/(g − 3) (≈ 1.29 for
  10 groups); a real discrepancy grows ``mean_z2`` with m.
* the same for a *wrong* constant (``control_scale``, default 1: no (N−1)/N rescaling, or any
  value given) — the negative control that shows the check has the power to fail.

Bernoulli(α) sampling has w = infl exactly (scale 1); the check uses that scale when the
store's sampling is Bernoulli. Only targets that share rows (no NaN outputs, not training
examples) and whose output varies are used.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from ..errors import InputError
from ..outputs import portable_attrs

__all__ = ["lemma_check"]


def _lemma_scale(ds, N: int) -> float:
    meta = ds.attrs.get("dmdask", {})
    sampling = str(meta.get("sampling", "fixed")) if isinstance(meta, dict) else "fixed"
    return 1.0 if sampling.startswith("bern") else (N - 1) / N


def _estimates(st, N):
    from .estimators.store import dom_from_stats, least_squares_from_stats

    infl, _ = dom_from_stats(st.n, st.s, st.C, st.sy)
    w, _ = least_squares_from_stats(st.n, st.G, st.s, st.C, st.sy)
    return w, infl


def lemma_check(ds, sizes=None, *, output: str = "margin", groups: int = 10,
                control_scale: float = 1.0, alpha: float | None = None,
                client=None) -> xr.Dataset:
    """Check the influence–OLS identity on nested prefixes of the fitting models.

    Returns a Dataset over ``n_models`` with ``rel_diff`` (mean over targets of
    ‖ŵ − c·înfl‖/‖c·înfl‖), ``mean_z2`` and ``n_terms`` (jackknife z² over every defined
    (target, column)), ``control_rel_diff``/``control_mean_z2`` for c = ``control_scale``;
    attrs: the lemma scale c, the expected mean z² under the lemma, counts.
    """
    import dask.array as da

    from ..fit.datamodels import _open, select_models
    from ..fit.stats import SufficientStats, compute_stats
    from ..scheduling import compute
    from .metrics import correctness

    ds = _open(ds)
    if output not in ("margin", "correctness"):
        raise InputError(f"output must be 'margin' or 'correctness', not {output!r}")
    if groups < 4:
        raise InputError(f"groups must be >= 4 for a jackknife variance, not {groups}")
    rows, alpha = select_models(ds, alpha)
    n = rows.size
    N = ds.sizes["train"]
    sizes = [n // 4, n // 2, n] if sizes is None else sorted({int(s) for s in sizes})
    if sizes[0] < 2 * groups or sizes[-1] > n:
        raise InputError(f"sizes must lie in [{2 * groups}, {n}], got {sizes}")
    Y = ds["margin"].data[rows].astype(np.float64)
    if output == "correctness":
        Y = Y.map_blocks(correctness, dtype=np.float64)
    tti = (np.asarray(ds["target_train_index"].values, np.int64)
           if "target_train_index" in ds.coords else np.full(ds.sizes["target"], -1))
    nan = np.asarray(compute([da.isnan(Y).any(axis=0)], client=client)[0])
    tpos = np.flatnonzero(~nan & (tti < 0))
    if tpos.size == 0:
        raise InputError("no target shares the design (NaN outputs or training examples)")
    X = ds["mask"].data[rows[: sizes[-1]]]
    Y = Y[: sizes[-1]][:, tpos]
    bounds = {s: np.linspace(0, s, groups + 1).round().astype(np.int64) for s in sizes}
    cuts = np.unique(np.concatenate(list(bounds.values())))
    segs = [s.to_numpy() for s in compute_stats(X, Y, cuts, client=client)]
    scale = _lemma_scale(ds, N)

    def span(a, b):
        i, j = int(np.searchsorted(cuts, a)), int(np.searchsorted(cuts, b))
        return SufficientStats.sum(segs[i:j])

    res = {k: [] for k in ("rel_diff", "mean_z2", "n_terms", "control_rel_diff",
                           "control_mean_z2", "n_targets_used")}
    for size in sizes:
        b = bounds[size]
        parts = [span(b[k], b[k + 1]) for k in range(groups)]
        full = SufficientStats.sum(parts)
        w, infl = _estimates(full, N)
        # targets whose output varies over the prefix (else w = infl = 0 trivially)
        var = full.syy - full.sy**2 / full.n
        live_t = var > 1e-12 * np.maximum(full.syy, 1e-300)
        loo = [_estimates(full - p, N) for p in parts]
        for tag, c in (("", scale), ("control_", control_scale)):
            D = w - c * infl
            Dk = np.stack([wk - c * ik for wk, ik in loo])
            se = np.sqrt((groups - 1) / groups * ((Dk - Dk.mean(0)) ** 2).sum(0))
            ok = np.isfinite(D) & np.isfinite(se) & (se > 0) & live_t[:, None]
            z2 = (D[ok] / se[ok]) ** 2
            ref = np.where(np.isfinite(infl), c * infl, 0.0)
            Dn = np.where(np.isfinite(D), D, 0.0)
            num = np.linalg.norm(Dn, axis=1)[live_t]
            den = np.linalg.norm(ref, axis=1)[live_t]
            res[f"{tag}rel_diff"].append(float(np.mean(num / np.where(den > 0, den, np.nan))))
            res[f"{tag}mean_z2"].append(float(z2.mean()) if z2.size else float("nan"))
            if not tag:
                res["n_terms"].append(int(z2.size))
                res["n_targets_used"].append(int(live_t.sum()))
    data = {k: ("n_models", np.asarray(v)) for k, v in res.items()}
    attrs = {"lemma_scale": scale, "control_scale": float(control_scale), "groups": groups,
             "expected_mean_z2": (groups - 1) / (groups - 3) if groups > 3 else float("nan"),
             "output": output, "alpha": alpha, "n_train": N,
             "identity": "min-norm OLS with intercept = ((N-1)/N) * difference of means "
                         "(fixed-size subsets; 1 for Bernoulli)"}
    return xr.Dataset(data, coords={"n_models": sizes}, attrs=portable_attrs(attrs))
