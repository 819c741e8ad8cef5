"""``dmdask embed`` (PCA of datamodel embeddings, with the penultimate-layer spectrum beside
it) and ``dmdask faithfulness`` (retraining without a component's extreme coordinates)."""

from __future__ import annotations

import click

from ..errors import DmdaskError
from .commands import _client, _refusals, _save_result, main


def _int_list(text: str, what: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise DmdaskError(f"{what}: expected comma-separated integers, got {text!r}") from e
    if not out:
        raise DmdaskError(f"{what}: none given")
    return out


def _pct(x) -> str:
    return f"{int(x)}" if int(x) > 0 else "more than computed"


@main.command("embed")
@click.argument("datamodels", type=click.Path(exists=True))
@click.option("--components", "n_components", type=int, required=True,
              help="Principal components to compute.")
@click.option("--fit-on", type=click.Choice(["train", "targets", "all"]), default=None,
              help="Targets whose embeddings the PCA is fitted on: training-example "
                   "datamodels, the other targets, or all (default: train when the datamodels "
                   "have training-example targets, else all). Every target is projected.")
@click.option("--power-iter", "n_power_iter", type=int, default=None,
              help="Power iterations of the randomized SVD (default dmdask.embed.n-power-iter).")
@click.option("--oversamples", "n_oversamples", type=int, default=None,
              help="Oversampling columns (default dmdask.embed.n-oversamples).")
@click.option("--raw", is_flag=True, help="Use the raw weights, not unit-normalised rows.")
@click.option("--top", type=int, default=10, show_default=True,
              help="Targets listed per component with the most positive/negative projections.")
@click.option("--store", type=click.Path(exists=True), default=None,
              help="The run store the datamodels were fitted on (needed by the representation "
                   "spectrum).")
@click.option("--representation", is_flag=True,
              help="Also the PCA spectrum of the penultimate-layer features of the store's "
                   "job on the same examples (needs --store).")
@click.option("--models", "n_models", type=int, default=1, show_default=True,
              help="Models whose feature spectra are averaged.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the random test matrix.")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Compute on a running dask scheduler (tcp://host:port).")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--out", type=click.Path(), default=None, help="Save the Dataset (Zarr or .nc).")
@_refusals
def embed(datamodels, n_components, fit_on, n_power_iter, n_oversamples, raw, top, store,
          representation, n_models, seed, scheduler, progress, out):
    """Principal components of the datamodel embeddings (unit-normalised weight rows).

    Out of core: one pass over the weights per product of the randomized SVD (QR iterator),
    chunked along both axes, on NumPy or CuPy chunks (dmdask.array.backend). Prints the
    explained variance, the effective dimensionality and, with --representation, the same for
    the penultimate-layer features.
    """
    from ..similarity import pca

    client = _client(scheduler)
    try:
        ds = pca(datamodels, n_components, fit_on=fit_on, n_power_iter=n_power_iter,
                 n_oversamples=n_oversamples, normalise=not raw, top=top, seed=seed,
                 store=store, representation=representation, n_models=n_models,
                 client=client, progress=progress)
    finally:
        if client is not None:
            client.close()
    a = ds.attrs
    evr = ds.explained_variance_ratio.values
    click.echo(f"fitted on {a['n_fit']} targets ({a['fit_on']}), {ds.sizes['target']} "
               f"projected, {a['n_zero']} all-zero excluded; {a['passes']} passes, "
               f"q={a['n_power_iter']}, {a['seconds']:.1f} s")
    click.echo(f"datamodels: {len(evr)} components explain {evr.sum():.3f} of the variance; "
               f"first {min(5, len(evr))}: " + " ".join(f"{x:.4f}" for x in evr[:5]))
    click.echo(f"datamodels: components for 50% {_pct(a['n_components_50'])}, 90% "
               f"{_pct(a['n_components_90'])}; participation ratio "
               f"{a['participation_ratio']:.1f} (of the computed spectrum)")
    if "representation_explained_variance_ratio" in ds:
        r = ds.representation_explained_variance_ratio.values
        click.echo(f"features:   {a['representation_dim']} dims; first {len(evr)} explain "
                   f"{r[:len(evr)].sum():.3f}; components for 50% "
                   f"{_pct(a['representation_n_components_50'])}, 90% "
                   f"{_pct(a['representation_n_components_90'])}; participation ratio "
                   f"{a['representation_participation_ratio']:.1f}")
    _save_result(ds, out)


@main.command("faithfulness")
@click.argument("store", type=click.Path(exists=True))
@click.argument("datamodels", type=click.Path(exists=True))
@click.argument("embeddings", type=click.Path(exists=True))
@click.option("--components", default="0,1", show_default=True,
              help="Principal components, comma-separated.")
@click.option("--k", "k", default="50,200", show_default=True,
              help="Training examples removed per component and direction, comma-separated.")
@click.option("--runs", type=int, default=5, show_default=True,
              help="Models trained per removal set (replicate seeds).")
@click.option("--control-runs", type=int, default=None,
              help="Full-data control models (default max(runs, 10)).")
@click.option("--n-targets", type=int, default=100, show_default=True,
              help="Targets in the top and bottom groups (by projection).")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Train on a running dask scheduler (tcp://host:port).")
@click.option("--workers", type=int, default=None,
              help="Workers of the LocalCluster started otherwise (default dmdask.train.workers).")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--out", type=click.Path(), default=None, help="Save the Dataset (Zarr or .nc).")
@_refusals
def faithfulness_(store, datamodels, embeddings, components, k, runs, control_runs, n_targets,
                  scheduler, workers, progress, out):
    """Faithfulness of principal components (App. J.1): remove the k training examples with
    the most positive (separately most negative) coordinates of each component, retrain
    (resumable, through the run store), and print the mean margin drop (control − removed,
    ± standard error) on the targets with the largest projections, the smallest, and all.
    """
    from ..similarity import faithfulness

    f = faithfulness(store, datamodels, embeddings,
                     components=_int_list(components, "--components"), k=_int_list(k, "--k"),
                     runs=runs, control_runs=control_runs, n_targets=n_targets,
                     scheduler=scheduler, workers=workers, progress=progress)
    click.echo(f"{f.attrs['models_trained']} models trained; margin drop (control − removed) "
               "± s.e.")
    click.echo(f"{'component':>9} {'removed':>8} {'k':>5}  " + "  ".join(
        f"{g:>16}" for g in f.group.values))
    for c in f.component.values:
        for d in f.direction.values:
            for kk in f.k.values:
                e = f.effect.sel(component=c, direction=d, k=kk).values
                s = f.effect_se.sel(component=c, direction=d, k=kk).values
                click.echo(f"{c:>9} {d:>8} {kk:>5}  " + "  ".join(
                    f"{x:+8.4f} ± {y:5.4f}" for x, y in zip(e, s, strict=True)))
    _save_result(f, out)
