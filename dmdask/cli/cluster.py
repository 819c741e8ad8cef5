"""``dmdask cluster``: spectral clusters of datamodel embeddings (and of the job's
representation, side by side)."""

from __future__ import annotations

import click

from .commands import _refusals, _refuse_out_over_input, _save_result, main


@main.command("cluster")
@click.argument("path", type=click.Path(exists=True))
@click.option("--clusters", "n_clusters", type=int, required=True,
              help="Number of clusters (per class with --per-class).")
@click.option("--method", type=click.Choice(["auto", "exact", "nystrom", "knn"]),
              default="auto", show_default=True,
              help="Dense affinity, Nyström landmarks, or a sparse kNN graph; auto: exact up "
                   "to dmdask.cluster.exact-max-points points, else Nyström.")
@click.option("--gamma", type=float, default=None,
              help="RBF affinity exp(-gamma |e_i - e_j|^2) on unit rows [dmdask.cluster.gamma: "
                   "1.0].")
@click.option("--landmarks", "n_landmarks", type=int, default=None,
              help="Nyström landmarks [dmdask.cluster.landmarks].")
@click.option("--neighbors", "n_neighbors", type=int, default=None,
              help="kNN graph neighbours per point [dmdask.cluster.neighbors].")
@click.option("--per-class", is_flag=True, help="Cluster the targets of each class apart (the "
              "paper's figures).")
@click.option("--store", type=click.Path(exists=True), default=None,
              help="The run store (labels; the representation baseline).")
@click.option("--representation", is_flag=True,
              help="Also cluster the penultimate-layer features of the store's job the same "
                   "way and report the agreement (needs --store).")
@click.option("--models", "n_models", type=int, default=1, show_default=True,
              help="Models whose representations are concatenated.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Landmarks, ARPACK start vector and k-means.")
@click.option("--out", type=click.Path(), default=None, help="Save the Dataset (Zarr or .nc).")
@_refusals
def cluster_(path, n_clusters, method, gamma, n_landmarks, n_neighbors, per_class, store,
             representation, n_models, seed, out):
    """Spectral clustering of EMBEDDINGS_OR_DATAMODELS (a `dmdask fit` datamodels store, or
    a `dmdask embed` embeddings store): RBF affinity on unit-normalised rows, the top
    eigenvectors of the normalised affinity, k-means.

    Prints each cluster's size, majority label and purity; with --store --representation
    the same clustering of the job's penultimate features and the agreement (ARI, NMI).
    """
    from ..scheduling import TqdmCallback
    from ..similarity import cluster

    _refuse_out_over_input(out, path, store)

    # one bar per pass over the rows (Nyström: three; kNN: one; exact: the read)
    with TqdmCallback("cluster"):
        clu = cluster(path, n_clusters, method=method, gamma=gamma, n_landmarks=n_landmarks,
                      n_neighbors=n_neighbors, per_class=per_class, store=store,
                      representation=representation, n_models=n_models, seed=seed)
    at = clu.attrs
    click.echo(f"{clu.sizes['target']} targets ({at['n_zero']} all-zero excluded), method "
               f"{at['method']}, gamma {at['gamma']:g}")
    rows = ["cluster  size  majority  purity" + ("  repr-overlap" if "representation_overlap"
                                                 in clu else "")]
    for c in clu.cluster_id.values:
        s = clu.sel(cluster_id=c)
        line = f"{int(c):>7}  {int(s['size']):>4}"
        if "purity" in clu:
            line += f"  {int(s['majority']):>8}  {float(s['purity']):.3f}"
        if "representation_overlap" in clu:
            line += f"  {float(s['representation_overlap']):.3f}"
        rows.append(line)
    click.echo("\n".join(rows))
    if "purity_overall" in at:
        msg = f"purity {at['purity_overall']:.3f}"
        if "representation_purity_overall" in at:
            msg += f"; representation {at['representation_purity_overall']:.3f}"
        click.echo(msg)
    if "ari" in at:
        click.echo(f"agreement with the representation clustering: ARI {at['ari']:.3f}, NMI "
                   f"{at['nmi']:.3f}" + (" (mean over classes)" if per_class else ""))
    _save_result(clu, out)

