"""Report section of the spectral clusters (:func:`dmdask.similarity.cluster`, the paper's
Figure 13 and App. I): label purity per cluster beside the clustering of the job's
representation, cluster sizes, a 2-d scatter of the spectral embedding, and a few target
images per cluster."""

from __future__ import annotations

import numpy as np

from .html import _esc, _figure, _fmt, _malformed, _missing, _new_fig, show_image

__all__ = ["sec_clusters"]

_DM, _REP = "#1f6feb", "#bc4c00"


def _purity_figure(clu) -> str:
    fig = _new_fig(6.4, 3.2)
    ax_p, ax_s = fig.subplots(1, 2)
    k = np.arange(clu.sizes["cluster_id"])
    size = np.asarray(clu["size"].values)
    ax_s.bar(k - 0.2, size, 0.4, color=_DM, label="datamodels")
    if "purity" in clu:
        ax_p.bar(k - 0.2, np.asarray(clu.purity.values), 0.4, color=_DM, label="datamodels")
    if "representation_size" in clu:
        ax_s.bar(k + 0.2, np.asarray(clu.representation_size.values), 0.4, color=_REP,
                 label="representation")
    if "representation_purity" in clu:
        ax_p.bar(k + 0.2, np.asarray(clu.representation_purity.values), 0.4, color=_REP,
                 label="representation")
    ax_p.set_ylim(0, 1.05)
    ax_p.set_xlabel("cluster")
    ax_p.set_ylabel("label purity")
    ax_s.set_xlabel("cluster")
    ax_s.set_ylabel("targets")
    for ax in (ax_p, ax_s):
        ax.grid(alpha=0.3, axis="y")
    ax_s.legend(frameon=False, fontsize=8)
    at = clu.attrs
    cap = (f"Label purity (share of each cluster's majority label) and size of the "
           f"{clu.sizes['cluster_id']} spectral clusters of the datamodel embeddings (blue)")
    if "representation_cluster" in clu:
        cap += (", beside the same clustering of the job's penultimate-layer features (orange; "
                "its cluster numbers are its own)")
    cap += "."
    if "purity_overall" in at:
        cap += f" Overall purity {_fmt(at['purity_overall'])}"
        if "representation_purity_overall" in at:
            cap += f", representation {_fmt(at['representation_purity_overall'])}"
        cap += "."
    if at.get("per_class"):
        cap += " Clustered within each class, so label purity is 1 by construction."
    return _figure("fig-clusters-purity", fig, cap, "cluster purity and sizes")


def _scatter(clu) -> str:
    emb = np.asarray(clu.spectral_embedding.values)
    lab = np.asarray(clu.cluster.values)
    rows = np.ones(lab.size, bool)
    note = ""
    if clu.attrs.get("per_class") and "target_label" in clu.coords:
        first = np.asarray(clu.clustering_class.values)[0]
        rows = np.asarray(clu.target_label.values) == first
        note = f" Class {_esc(first)} only: each class has its own embedding."
    # the first eigenvector is D^{1/2}1 scaled by D^{-1/2}: constant, so dims 1 and 2 show
    dims = (1, 2) if emb.shape[1] >= 3 else (0, emb.shape[1] - 1)
    fig = _new_fig(4.6, 4.0)
    ax = fig.subplots()
    sc = ax.scatter(emb[rows, dims[0]], emb[rows, dims[1]], c=lab[rows], cmap="tab10", s=9,
                    alpha=0.8)
    ax.set_xlabel(f"spectral dimension {dims[0]}")
    ax.set_ylabel(f"spectral dimension {dims[1]}")
    ax.grid(alpha=0.3)
    fig.colorbar(sc, ax=ax, label="cluster")
    cap = (f"The targets in the spectral embedding (dimensions {dims[0]} and {dims[1]} of "
           f"the top eigenvectors of D^-1/2 A D^-1/2, rows scaled by D^-1/2), coloured by "
           f"cluster; method {_esc(clu.attrs.get('method', '?'))}, gamma "
           f"{_fmt(clu.attrs.get('gamma'), 2)}.{note}")
    return _figure("fig-clusters-embedding", fig, cap, "spectral embedding scatter")


def _table(clu) -> str:
    has = [v for v in ("majority", "purity", "representation_overlap") if v in clu]
    head = "".join(f"<th>{h}</th>" for h in ["cluster"]
                   + (["class"] if "cluster_class" in clu.coords else []) + ["size"] + has)
    rows = []
    for c in clu.cluster_id.values:
        s = clu.sel(cluster_id=c)
        cells = [str(int(c))]
        if "cluster_class" in clu.coords:
            cells.append(_esc(s.cluster_class.item()))
        cells.append(str(int(s["size"])))
        for v in has:
            cells.append(str(int(s[v])) if v == "majority" else _fmt(s[v].item()))
        rows.append("<tr>" + "".join(f"<td>{x}</td>" for x in cells) + "</tr>")
    at = clu.attrs
    agree = ""
    if "ari" in at:
        agree = (f"<p>Agreement with the representation clustering: ARI {_fmt(at['ari'])}, "
                 f"NMI {_fmt(at['nmi'])}{' (mean over classes)' if at.get('per_class') else ''}"
                 ". <code>representation_overlap</code>: the share of a cluster that falls in "
                 "its most common representation cluster.</p>")
    return (f"<table id='clusters-table'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>{agree}")


def _grids(clu, ds, images, per: int = 6, most: int = 8) -> str:
    from .images import usable_images

    src, note = usable_images(ds, images)
    if src is None:
        return _missing(note)
    if src.n_target is None:
        return _missing("Only training images are known: the clusters are of targets.")
    lab = np.asarray(clu.cluster.values)
    tg = np.asarray(clu.target.values, np.int64)
    order = np.argsort(-np.asarray(clu["size"].values), kind="stable")[:most]
    order = [int(c) for c in order if (lab == c).any()]
    picks = {c: tg[lab == c][:per] for c in order}
    need = np.unique(np.concatenate(list(picks.values())))
    try:
        got = dict(zip(need.tolist(), src.get("target", need), strict=True))
    except Exception as e:  # noqa: BLE001 - the job's own code: its failure is a note
        return _missing(f"The images could not be read from {_esc(src.source)} "
                        f"({_esc(type(e).__name__)}: {_esc(e)}).")
    tl = (dict(zip(tg.tolist(), np.asarray(clu.target_label.values).tolist(), strict=True))
          if "target_label" in clu.coords else None)
    fig = _new_fig(1.0 * per + 0.9, 1.2 * len(order))
    axes = np.atleast_2d(fig.subplots(len(order), per))
    for r, c in enumerate(order):
        for i in range(per):
            ax = axes[r, i]
            if i >= picks[c].size:
                ax.axis("off")
                continue
            t = int(picks[c][i])
            show_image(ax, got[t])
            ax.set_title(f"{t}" + (f" ({tl[t]})" if tl else ""), fontsize=7)
        axes[r, 0].set_ylabel(f"cluster {c}", fontsize=8)
    cap = (f"Up to {per} targets of each of the {len(order)} largest clusters (one row each), "
           f"titled by target (label). Images: {_esc(src.source)}.")
    return _figure("fig-clusters-images", fig, cap, "target images per cluster")


def sec_clusters(clu, ds=None, images=None) -> str:
    """Spectral clusters: purity and sizes beside the representation's clustering, a table,
    a scatter of the spectral embedding and per-cluster image grids."""
    if clu is None:
        return _missing("No clusters given. Run <code>dmdask cluster DATAMODELS --clusters C "
                        "--out clusters.zarr</code> and pass <code>clusters=</code> (or "
                        "<code>--clusters</code>).")
    bad = _malformed(clu, "cluster_id", ("cluster", "size", "spectral_embedding"),
                     "clusters Dataset")
    if bad:
        return bad
    clu = clu.load()  # small: per target and per cluster
    at = clu.attrs
    head = (f"<p>{clu.sizes['target']} targets in {clu.sizes['cluster_id']} clusters "
            f"({'per class, ' if at.get('per_class') else ''}method "
            f"{_esc(at.get('method', '?'))}, gamma {_fmt(at.get('gamma'), 2)}, from "
            f"{_esc(at.get('source', '?'))}); {int(at.get('n_zero', 0))} all-zero "
            "datamodels excluded.</p>")
    return head + _purity_figure(clu) + _table(clu) + _scatter(clu) + _grids(clu, ds, images)
