"""``dmdask neighbors``: the training examples that drive each target, by datamodel weight
(and by distance in the job's representation, side by side)."""

from __future__ import annotations

import click

from .commands import _refusals, _refuse_out_over_input, _save_result, main


@main.command("neighbors")
@click.argument("datamodels", type=click.Path(exists=True))
@click.option("--k", "k", type=int, default=10, show_default=True,
              help="Neighbours per target, each of positive and negative weight.")
@click.option("--store", type=click.Path(exists=True), default=None,
              help="The run store the datamodels were fitted on (for the representation "
                   "baseline).")
@click.option("--representation", is_flag=True,
              help="Also the nearest training examples in the penultimate layer of the store's "
                   "job (needs --store).")
@click.option("--models", "n_models", type=int, default=1, show_default=True,
              help="Models whose representations are averaged.")
@click.option("--out", type=click.Path(), default=None, help="Save the Dataset (Zarr or .nc).")
@_refusals
def neighbors_(datamodels, k, store, representation, n_models, out):
    """Datamodel nearest neighbours: per target the training examples with the largest
    positive and the most negative weights, with their weights and labels.

    Reads the weights out of core, one block of targets at a time. With --store and
    --representation the nearest examples in a trained model's penultimate layer are added
    side by side; the summary prints how often each shares the target's label.
    """
    import numpy as np

    from ..similarity import neighbors

    _refuse_out_over_input(out, datamodels, store)
    nn = neighbors(datamodels, k, store=store, representation=representation,
                   n_models=n_models)
    click.echo(f"{nn.sizes['target']} targets, {k} neighbours each; median positive weights "
               f"per target {np.median(nn.n_positive.values):.0f}, negative "
               f"{np.median(nn.n_negative.values):.0f}")
    if "target_label" in nn.coords:
        tl = nn.target_label.values[:, None]
        for name in ("positive", "negative", "nearest"):
            if f"{name}_label" in nn:
                lab = nn[f"{name}_label"].values
                ok = lab >= 0
                share = float((lab == tl)[ok].mean()) if ok.any() else float("nan")
                click.echo(f"{name:<9} share with the target's label: {share:.3f}")
    _save_result(nn, out)
