"""Text summaries of the counterfactual Datasets, printed by the CLI and the quickstart."""

from __future__ import annotations

import numpy as np


def _corr(name: str, ds, attr: str) -> str:
    a = ds.attrs
    return (f"{name:<10} {a[attr]:.3f}  [{a[attr + '_low']:.3f}, {a[attr + '_high']:.3f}]"
            if attr in a else f"{name:<10} n/a")


def counterfactual_summary(ds) -> list[str]:
    """Lines summarising a counterfactuals Dataset (what the CLI prints)."""
    a = ds.attrs
    lines = [f"targets {ds.sizes['target']}, heuristics {', '.join(map(str, ds.heuristic.values))},"
             f" k {', '.join(map(str, ds.k.values))}; {a['runs']} runs each, "
             f"{a['control_runs']} control runs; {a['models_trained']} models trained",
             f"predicted vs actual margin drop over {a['n_points']} counterfactuals (95% CI):",
             _corr("Pearson", ds, "pearson_overall"), _corr("Spearman", ds, "spearman_overall"),
             f"{'heuristic':<14} {'Pearson':>22} {'Spearman':>22} {'mean pred':>10} "
             f"{'mean actual':>12}"]
    for h in ds.heuristic.values:
        s = ds.sel(heuristic=h)
        lines.append(
            f"{h!s:<14} {s.pearson.item():>7.3f} [{s.pearson_low.item():.3f}, "
            f"{s.pearson_high.item():.3f}] {s.spearman.item():>7.3f} "
            f"[{s.spearman_low.item():.3f}, {s.spearman_high.item():.3f}] "
            f"{float(s.predicted.mean()):>10.3f} {float(s.actual.mean()):>12.3f}")
    if "estimator" in ds.coords:
        for e in ds.estimator.values:
            s = ds.sel(estimator=e)
            lines.append(f"estimator {e}: Pearson {s.estimator_pearson.item():.3f}, Spearman "
                         f"{s.estimator_spearman.item():.3f}")
    return lines


def support_summary(ds) -> list[str]:
    """Lines summarising a data-support (or mislabel) Dataset."""
    a = ds.attrs
    what = "data support" if a["mode"] == "remove" else "mislabel brittleness (flips)"
    lines = [f"{what}: {ds.sizes['target']} targets, grid up to k = {a['k_max']}, {a['runs']} "
             f"runs per point, estimate = ceil({a['inflation']} * k_hat); "
             f"{a['models_trained']} models trained",
             f"{'guide':<26} {'median':>8} {'> k_max':>8} {'certified':>10}"]
    for e in ds.estimator.values:
        s = ds.sel(estimator=e)
        cert = s.certified.values
        n_c = int(np.isfinite(cert).sum())
        share = f"{np.nanmean(cert):.0%} of {n_c}" if n_c else "n/a"
        lines.append(f"{e!s:<26} {float(s.median_support):>8.0f} "
                     f"{int(np.isinf(s.support.values).sum()):>8d} {share:>10}")
    if a["mode"] == "remove" and np.isfinite(a.get("heuristic_spearman", np.nan)):
        lines.append(f"heuristic (weights only) vs retrained: Spearman "
                     f"{a['heuristic_spearman']:.3f} over {a['heuristic_n']} targets")
    return lines
