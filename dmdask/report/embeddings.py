"""Report sections of the datamodel embeddings (:mod:`dmdask.similarity.pca`,
:mod:`dmdask.similarity.faithfulness`): the explained-variance spectrum and its cumulative
curve beside the penultimate-layer features (the paper's Fig. 43), per component the targets
with the most positive and most negative projections as image grids, and the faithfulness
of components (App. J.1) as effect against k per group with standard errors."""

from __future__ import annotations

import numpy as np

from .html import _esc, _figure, _fmt, _malformed, _missing, _new_fig, show_image
from .images import usable_images

__all__ = ["sec_embeddings", "sec_faithfulness"]

_GRID_COMPONENTS = 4  # components drawn as image grids
_GRID_TARGETS = 6  # targets per side of a component

_COLORS = {"top": "#1f6feb", "bottom": "#bc4c00", "all": "#57606a"}


def _spectrum(emb) -> str:
    evr = np.asarray(emb.explained_variance_ratio.values, np.float64)
    rep = (np.asarray(emb.representation_explained_variance_ratio.values, np.float64)
           if "representation_explained_variance_ratio" in emb else None)
    fig = _new_fig(9.0, 3.6)
    ax1, ax2 = fig.subplots(1, 2)
    k = np.arange(1, evr.size + 1)
    ax1.plot(k, evr, "o-", ms=2.5, lw=1, color="#1f6feb", label="datamodel embeddings")
    ax2.plot(k, np.cumsum(evr), lw=1.4, color="#1f6feb", label="datamodel embeddings")
    if rep is not None:
        kr = np.arange(1, rep.size + 1)
        ax1.plot(kr, rep, "s-", ms=2.5, lw=1, color="#bc4c00", label="penultimate features")
        ax2.plot(kr, np.cumsum(rep), lw=1.4, color="#bc4c00", label="penultimate features")
    for f in (0.5, 0.9):
        ax2.axhline(f, color="#8c959f", lw=0.7, ls=":")
    ax1.set_yscale("log")
    ax1.set_xlabel("component")
    ax1.set_ylabel("explained variance ratio")
    ax2.set_xlabel("components")
    ax2.set_ylabel("cumulative explained variance")
    ax2.set_ylim(0, 1.02)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, fontsize=8)
    a = emb.attrs
    cap = (f"Explained variance of the {evr.size} principal components of the datamodel "
           f"embeddings (fitted on {_esc(a.get('fit_on', '?'))}: {a.get('n_fit', '?')} "
           f"targets; {a.get('n_zero', 0)} all-zero datamodels excluded; "
           f"{a.get('n_power_iter', '?')} power iterations)"
           + (", beside the penultimate-layer features of the store's job on the same "
              "examples" if rep is not None else "")
           + ". Left: per component (log scale); right: cumulative, dotted at 50% and 90%.")
    return _figure("fig-embeddings-spectrum", fig, cap, "explained variance spectra")


def _dims_table(emb) -> str:
    a = emb.attrs

    def n(v):
        v = int(v) if v is not None else -1
        return f"> {emb.sizes['component']}" if v < 0 else str(v)

    rows = [("datamodel embeddings", emb.sizes["train"],
             float(emb.explained_variance_ratio.values.sum()),
             n(a.get("n_components_50")), n(a.get("n_components_90")),
             a.get("participation_ratio"))]
    if "representation_explained_variance_ratio" in emb:
        r = emb.representation_explained_variance_ratio.values
        k = emb.sizes["component"]
        rows.append(("penultimate features", a.get("representation_dim", r.size),
                     float(r[:k].sum()), str(a.get("representation_n_components_50")),
                     str(a.get("representation_n_components_90")),
                     a.get("representation_participation_ratio")))
    return ("<table><tr><th class='l'>embedding</th><th>dimensions</th>"
            f"<th>variance in the first {emb.sizes['component']}</th><th>PCs for 50%</th>"
            "<th>PCs for 90%</th><th>participation ratio</th></tr>"
            + "".join(f"<tr><td class='l'>{_esc(nm)}</td><td>{d}</td><td>{_fmt(v)}</td>"
                      f"<td>{_esc(h)}</td><td>{_esc(t)}</td><td>{_fmt(p, 1)}</td></tr>"
                      for nm, d, v, h, t, p in rows)
            + "</table><p>Participation ratio (Σλ)²/Σλ² of the computed components; for the "
              "datamodels only the components computed count, so it is a lower bound.</p>")


def _grids(emb, ds, images) -> str:
    if ds is None and images is None:
        return _missing("No run store given: the targets with extreme projections are drawn "
                        "from the store's job images.")
    try:
        src, note = usable_images(ds, images)
    except Exception as e:  # noqa: BLE001 - a note, not an error of the page
        return _missing(_esc(e))
    if src is None:
        return _missing(note)
    if src.n_target is None:
        return _missing("The image source has no target images.")
    nc = min(_GRID_COMPONENTS, emb.sizes["component"])
    nt = min(_GRID_TARGETS, emb.sizes["rank"])
    top = np.asarray(emb.top_targets.values[:nc, :nt], np.int64)
    bot = np.asarray(emb.bottom_targets.values[:nc, :nt], np.int64)
    tv = np.asarray(emb.top_projection.values[:nc, :nt])
    bv = np.asarray(emb.bottom_projection.values[:nc, :nt])
    need = np.unique(np.concatenate([top.ravel(), bot.ravel()]))
    try:
        got = src.get("target", need)
    except Exception as e:  # noqa: BLE001 - the job's own code: its failure is a note
        return _missing(f"The images could not be read from {_esc(src.source)} "
                        f"({_esc(type(e).__name__)}: {_esc(e)}).")
    img = {int(t): got[i] for i, t in enumerate(need)}
    lab = None
    if "target_label" in emb.coords:
        lab = dict(zip(np.asarray(emb.target.values).tolist(),
                       np.asarray(emb.target_label.values).tolist(), strict=True))
    fig = _new_fig(1.0 * (2 * nt) + 0.8, 1.35 * nc)
    axes = np.atleast_2d(fig.subplots(nc, 2 * nt))
    for c in range(nc):
        for i in range(nt):
            for off, ids, vals, col in ((0, top, tv, "#1f6feb"), (nt, bot, bv, "#bc4c00")):
                ax = axes[c, off + i]
                t = int(ids[c, i])
                show_image(ax, img[t])
                extra = f" ({lab[t]})" if lab is not None and t in lab else ""
                ax.set_title(f"{vals[c, i]:+.2f}{extra}", fontsize=7, color=col)
        axes[c, 0].set_ylabel(f"PC {int(emb.component.values[c])}", fontsize=8)
    cap = (f"Per principal component (rows), the {nt} targets with the most positive "
           f"projections (left, blue) and the {nt} with the most negative (right, orange); "
           "titles: projection (label). Images from " + _esc(src.source) + ".")
    return _figure("fig-embeddings-extremes", fig, cap, "targets with extreme projections")


def sec_embeddings(emb, ds=None, images=None) -> str:
    """Spectrum and cumulative curves (datamodels vs penultimate features), effective
    dimensionality, and image grids of the targets with extreme projections."""
    if emb is None:
        return _missing("No embeddings given. Run <code>dmdask embed DATAMODELS --components "
                        "K --out emb.zarr</code> and pass <code>--embeddings</code>.")
    bad = _malformed(emb, "component", ("explained_variance_ratio", "projection"),
                     "embeddings Dataset")
    if bad:
        return bad
    return _spectrum(emb) + _dims_table(emb) + (
        _grids(emb, ds, images) if "top_targets" in emb else "")


def sec_faithfulness(faith, ds=None, images=None) -> str:
    """Effect of removing a component's extreme coordinates against k, per group, with one
    standard error (App. J.1)."""
    if faith is None:
        return _missing("No faithfulness given. Run <code>dmdask faithfulness STORE "
                        "DATAMODELS EMB --out faith.zarr</code> and pass "
                        "<code>--faithfulness</code>.")
    bad = _malformed(faith, "group", ("effect", "effect_se"), "faithfulness Dataset")
    if bad:
        return bad
    comps = faith.component.values
    dirs = faith.direction.values
    ks = np.asarray(faith.k.values)
    fig = _new_fig(3.4 * len(dirs) + 0.4, 2.7 * len(comps))
    axes = np.atleast_2d(fig.subplots(len(comps), len(dirs), squeeze=False))
    for i, c in enumerate(comps):
        for j, d in enumerate(dirs):
            ax = axes[i, j]
            for g in faith.group.values:
                s = faith.sel(component=c, direction=d, group=g)
                ax.errorbar(ks, s.effect.values, yerr=s.effect_se.values, marker="o", ms=3.5,
                            lw=1.1, capsize=2.5, color=_COLORS.get(str(g), "#8250df"),
                            label=str(g))
            ax.axhline(0, color="#8c959f", lw=0.7)
            if ks.size > 1 and ks.max() / max(ks.min(), 1) > 8:
                ax.set_xscale("log")
            ax.set_title(f"PC {int(c)}: {d} coordinates removed", fontsize=9)
            ax.set_xlabel("k removed")
            ax.set_ylabel("margin drop (control − removed)")
            ax.grid(alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(frameon=False, fontsize=8, title="targets", title_fontsize=8)
    a = faith.attrs
    cap = (f"Faithfulness of principal components: the k training examples with the most "
           f"positive (negative) coordinates removed, {a.get('runs', '?')} models per set "
           f"and {a.get('control_runs', '?')} controls; mean margin drop of the "
           f"{a.get('n_targets', '?')} targets with the largest projections (top), the "
           "smallest (bottom) and all targets, ± one standard error. Expected: removing the "
           "positive coordinates lowers the top group (a positive drop) and raises the "
           "bottom one, the negative coordinates the reverse, growing with k.")
    return _figure("fig-faithfulness", fig, cap, "faithfulness of components")
