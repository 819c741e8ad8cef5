"""``dmdask leakage``: train–test leakage candidates from the top datamodel weights, scored
and ranked, beside the representation's nearest examples; recall against planted pairs."""

from __future__ import annotations

import click

from .commands import _refusals, _refuse_out_over_input, _save_result, main


@main.command("leakage")
@click.argument("store", type=click.Path(exists=True))
@click.argument("datamodels", type=click.Path(exists=True))
@click.option("--candidates", "candidates", type=int, default=10, show_default=True,
              help="Candidate training examples per target (C).")
@click.option("--by", type=click.Choice(["weight", "magnitude"]), default="weight",
              show_default=True,
              help="Rank by the largest positive weights, or by the largest |weight|.")
@click.option("--representation", is_flag=True,
              help="Also the C nearest training examples in the penultimate layer of the "
                   "store's job (the baseline).")
@click.option("--models", "n_models", type=int, default=1, show_default=True,
              help="Models whose representations are averaged.")
@click.option("--top", type=int, default=10, show_default=True,
              help="Top-ranked candidate pairs to print.")
@click.option("--out", type=click.Path(), default=None, help="Save the Dataset (Zarr or .nc).")
@_refusals
def leakage_(store, datamodels, candidates, by, representation, n_models, top, out):
    """Train–test leakage candidates: per target the C training examples with the largest
    weights, scored by weight / L2 norm of the target's weights (comparable across targets)
    and ranked globally; with --representation the C nearest examples in a trained model's
    penultimate layer beside them.

    Where the store's job plants near-duplicates (jobs.digits_leaky), prints the recall and
    precision of the planted pairs among the top c candidates, c = 1..C, for each.
    """
    from ..similarity import leakage

    _refuse_out_over_input(out, store, datamodels)
    if representation:  # the long part: training the baseline's model(s)
        click.echo(f"training  {n_models} model(s) of the store's job for the representation")
    lk = leakage(store, datamodels, candidates, by=by, representation=representation,
                 n_models=n_models)
    click.echo(f"{lk.sizes['target']} targets, {lk.sizes['pair']} candidate pairs")
    for i in range(min(int(top), lk.sizes["pair"])):
        click.echo(f"  #{i + 1:<3} target {int(lk.pair_target[i]):>6}  train "
                   f"{int(lk.pair_candidate[i]):>6}  score {float(lk.pair_score[i]):.3f}"
                   + ("  planted" if "pair_planted" in lk and bool(lk.pair_planted[i]) else ""))
    if "recall" in lk:
        click.echo(f"planted pairs: {lk.attrs['n_planted_covered']} of "
                   f"{lk.attrs['n_planted']} have a datamodel ({lk.attrs['planted_source']})")
        cs = sorted({1, min(5, candidates), candidates})
        for m in lk.source.values:
            s = lk.sel(source=m)
            click.echo(f"{m:<15} " + "  ".join(
                f"recall@{c} {float(s.recall.sel(n_candidates=c)):.3f}" for c in cs)
                + f"  precision@1 {float(s.precision.sel(n_candidates=1)):.3f}"
                + f"  AP {float(s.average_precision):.3f}")
    else:
        click.echo("no planted pairs in the store's job: no recall to measure")
    _save_result(lk, out)
