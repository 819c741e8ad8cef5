"""Report sections of the counterfactual analyses (:mod:`dmdask.counterfactual`):
predicted vs actual removal effects coloured by heuristic (the paper's Figure 8), CDFs of
data-support sizes per guide (Figure 7) and of mislabel flips (Figure 24), and data-selection
curves (accuracy against k per method)."""

from __future__ import annotations

import numpy as np

from .html import _esc, _figure, _fmt, _malformed, _missing, _new_fig

__all__ = ["sec_counterfactuals", "sec_selection", "sec_support"]

_COLORS = ("#1f6feb", "#bc4c00", "#1a7f37", "#8250df", "#9a6700", "#d1242f", "#57606a",
           "#0a7ea4")


def sec_counterfactuals(cf) -> str:
    """Figure 8: predicted against actual margin drops, one colour per heuristic."""
    if cf is None:
        return _missing("No counterfactuals given. Run <code>dmdask counterfactual STORE "
                        "DATAMODELS --out cf.zarr</code> and pass <code>counterfactuals=</code>"
                        " (or <code>--counterfactuals</code>).")
    bad = _malformed(cf, "heuristic", ("predicted", "actual"), "counterfactuals Dataset")
    if bad:
        return bad
    fig = _new_fig(6.2, 5.0)
    ax = fig.subplots()
    lo, hi = np.inf, -np.inf
    rows = []
    for i, h in enumerate(cf["heuristic"].values):
        s = cf.sel(heuristic=h)
        p, a = np.asarray(s.predicted.values).ravel(), np.asarray(s.actual.values).ravel()
        ok = np.isfinite(p) & np.isfinite(a)
        if not ok.any():
            continue
        err = np.asarray(s.actual_se.values).ravel()[ok] if "actual_se" in s else None
        ax.errorbar(p[ok], a[ok], yerr=err, fmt="o", ms=3.5, alpha=0.75, lw=0.6,
                    color=_COLORS[i % len(_COLORS)], label=str(h))
        lo, hi = min(lo, p[ok].min(), a[ok].min()), max(hi, p[ok].max(), a[ok].max())
        rows.append((h, s.get("pearson"), s.get("spearman"), int(ok.sum())))
    if np.isfinite(lo):
        ax.plot([lo, hi], [lo, hi], color="#57606a", lw=0.8, ls="--", label="y = x")
    ax.set_xlabel("predicted margin drop (sum of the removed examples' weights)")
    ax.set_ylabel("actual margin drop (control − counterfactual)")
    ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.3)
    at = cf.attrs
    cap = (f"Counterfactuals: for {cf.sizes.get('target', '?')} targets, each heuristic's top "
           f"k ∈ {{{', '.join(str(int(k)) for k in cf['k'].values)}}} training examples "
           f"removed, {at.get('runs', '?')} models each; error bars one standard error. "
           f"Overall Pearson {_fmt(at.get('pearson_overall'))} "
           f"[{_fmt(at.get('pearson_overall_low'))}, {_fmt(at.get('pearson_overall_high'))}], "
           f"Spearman {_fmt(at.get('spearman_overall'))} "
           f"[{_fmt(at.get('spearman_overall_low'))}, "
           f"{_fmt(at.get('spearman_overall_high'))}] (95% CI).")
    table = ("<table><tr><th class='l'>heuristic</th><th>points</th><th>Pearson</th>"
             "<th>Spearman</th></tr>"
             + "".join(f"<tr><td class='l'>{_esc(h)}</td><td>{n}</td>"
                       f"<td>{_fmt(None if pe is None else pe.item())}</td>"
                       f"<td>{_fmt(None if sp is None else sp.item())}</td></tr>"
                       for h, pe, sp, n in rows)
             + "</table>")
    return _figure("fig-counterfactuals", fig, cap, "predicted vs actual effects") + table


def _cdf(ax, values, label, color, kmax):
    v = np.sort(np.asarray(values, np.float64))
    if v.size == 0:
        return
    # inf ("> k_max") stays off the plot: the curve ends below 1 by their share
    y = np.arange(1, v.size + 1) / v.size
    fin = np.isfinite(v)
    ax.step(np.concatenate([[0], v[fin]]), np.concatenate([[0], y[fin]]), where="post",
            color=color, label=f"{label} ({int((~fin).sum())} > {kmax})")


def sec_support(sup, mislabel=None) -> str:
    """Figure 7 (data support per guide) and Figure 24 (mislabel flips) as CDFs."""
    if sup is None and mislabel is None:
        return _missing("No data-support results given. Run <code>dmdask support STORE "
                        "DATAMODELS --out support.zarr</code> (and <code>dmdask mislabel ... "
                        "--out mislabel.zarr</code>) and pass <code>support=</code> / "
                        "<code>mislabel=</code>.")
    parts = []
    for ds, fid, what in ((sup, "fig-support", "data support"),
                          (mislabel, "fig-mislabel", "mislabelled examples needed")):
        if ds is None:
            continue
        bad = _malformed(ds, "estimator", ("support", "certified"), f"{what} Dataset")
        if bad:
            parts.append(bad)
            continue
        kmax = ds.attrs.get("k_max", "k_max")
        fig = _new_fig(6.2, 4.0)
        ax = fig.subplots()
        rows = []
        for i, e in enumerate(ds["estimator"].values):
            s = ds.sel(estimator=e)
            _cdf(ax, s.support.values, str(e), _COLORS[i % len(_COLORS)], kmax)
            c = np.asarray(s.certified.values, np.float64)
            rows.append((e, float(np.median(s.support.values)),
                         np.nanmean(c) if np.isfinite(c).any() else np.nan,
                         int(np.isfinite(c).sum())))
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlabel(f"{what} (estimate ⌈{ds.attrs.get('inflation', 1.2)}·k̂⌉)")
        ax.set_ylabel("share of targets")
        ax.set_ylim(0, 1)
        ax.legend(frameon=False, fontsize=8)
        ax.grid(alpha=0.3)
        cap = (f"CDF over {ds.sizes.get('target', '?')} targets of the {what}, found by "
               "the guided search (decreasing isotonic fit, first zero crossing k̂) with each "
               "guide's removal order; curves end below 1 by the share of targets that never "
               f"crossed up to k = {kmax}.")
        if ds.attrs.get("mode") == "remove" and "heuristic_spearman" in ds.attrs:
            cap += (" Heuristic from the weights alone (F.3.2) vs retrained: Spearman "
                    f"{_fmt(ds.attrs['heuristic_spearman'])}.")
        table = ("<table><tr><th class='l'>guide</th><th>median</th><th>certified</th></tr>"
                 + "".join(f"<tr><td class='l'>{_esc(e)}</td><td>{_fmt(m, 0)}</td>"
                           f"<td>{_fmt(100 * c, 0)}% of {n}</td></tr>" for e, m, c, n in rows)
                 + "</table>")
        parts.append(_figure(fid, fig, cap, f"CDF of {what}") + table)
    return "".join(parts)


def sec_selection(sel) -> str:
    """Accuracy and mean margin of the evaluation half against k, per selection method."""
    if sel is None:
        return _missing("No data-selection results given. Run <code>dmdask select STORE "
                        "DATAMODELS --class C --out select.zarr</code> and pass "
                        "<code>selection=</code>.")
    bad = _malformed(sel, "method", ("accuracy", "actual"), "selection Dataset")
    if bad:
        return bad
    fig = _new_fig(10, 3.8)
    ax1, ax2 = fig.subplots(1, 2)
    k = np.asarray(sel["k"].values, np.float64)
    for i, m in enumerate(sel["method"].values):
        s = sel.sel({"method": m})
        c = _COLORS[i % len(_COLORS)]
        ax1.errorbar(k, s.accuracy.values, yerr=s.get("accuracy_se"), fmt="o-", color=c,
                     label=str(m), capsize=2)
        ax2.errorbar(k, s.actual.values, yerr=s.get("actual_se"), fmt="o-", color=c,
                     label=f"{m}", capsize=2)
        if "predicted" in s:
            ax2.plot(k, s.predicted.values, ls=":", color=c, lw=1)
    for ax, yl in ((ax1, "accuracy on the evaluation half"),
                   (ax2, "mean margin (dotted: datamodel prediction)")):
        ax.set_xscale("log")
        ax.set_xticks(k, [f"{int(v):,}" for v in k])
        ax.minorticks_off()
        ax.set_xlabel("selected training examples k")
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
    ax1.legend(frameon=False, fontsize=8)
    cap = ("Data selection (DsDm): models trained on the k examples each method selects for "
           "the selection half of the target set, measured on the other half; error bars one "
           f"standard error over {sel.attrs.get('runs', '?')} runs.")
    return _figure("fig-selection", fig, cap, "data selection curves")
