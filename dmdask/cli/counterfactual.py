"""``dmdask counterfactual``, ``dmdask support``, ``dmdask mislabel``, ``dmdask select``:
counterfactual training sets predicted by datamodels and measured by training."""

from __future__ import annotations

import click

from ..errors import DmdaskError
from .commands import _refusals, _save_result, main
from .summaries import counterfactual_summary, support_summary


def _ints(text: str | None, what: str) -> list[int] | None:
    if text is None or text == "":
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise DmdaskError(f"{what}: expected comma-separated integers, got {text!r}") from e


def _names(text: str | None) -> list[str]:
    return [x.strip() for x in (text or "").split(",") if x.strip()]


def _targets(targets: str) -> tuple[int | None, list[int] | None]:
    """``--targets 20`` draws 20 class-balanced; ``--targets 3,17,40`` names them."""
    vals = _ints(targets, "--targets")
    if vals is None:
        raise DmdaskError("--targets: give a number or comma-separated target indices")
    if "," in targets:
        return None, vals
    return vals[0], None


def _cluster_options(fn):
    fn = click.option("--scheduler", default=None, metavar="ADDRESS",
                      help="Train on a running dask scheduler (tcp://host:port).")(fn)
    fn = click.option("--workers", type=int, default=None,
                      help="Workers of the LocalCluster started otherwise "
                           "(default dmdask.train.workers).")(fn)
    fn = click.option("--progress/--no-progress", default=True, show_default=True)(fn)
    fn = click.option("--seed", type=int, default=0, show_default=True,
                      help="Seed of the target draw and the random removal orders.")(fn)
    return fn


@main.command()
@click.argument("store", type=click.Path(exists=True))
@click.argument("datamodels", type=click.Path(exists=True))
@click.option("--targets", default="10", show_default=True,
              help="How many targets to draw class-balanced, or comma-separated target indices.")
@click.option("--k", "k", default="10,20,40,80,160,320", show_default=True,
              help="Removal sizes, comma-separated.")
@click.option("--heuristics", default="top,bottom,random,random_class,zero",
              show_default=True,
              help="Removal heuristics: top, bottom, random, random_class, zero, top:ESTIMATOR.")
@click.option("--estimators", default="", help="Baseline estimators whose predictions of the "
              "same counterfactuals are reported, comma-separated (e.g. dom_margin,trak).")
@click.option("--runs", type=int, default=5, show_default=True,
              help="Models trained per counterfactual (replicate seeds).")
@click.option("--control-runs", type=int, default=None,
              help="Full-data control models (default max(runs, 10)).")
@click.option("--alpha-control", is_flag=True,
              help="Also the random alpha-control of App. F.8 (the rest kept w.p. alpha).")
@click.option("--out", type=click.Path(), default=None, help="Save the Dataset (Zarr or .nc).")
@_cluster_options
@_refusals
def counterfactual(store, datamodels, targets, k, heuristics, estimators, runs, control_runs,
                   alpha_control, out, scheduler, workers, progress, seed):
    """Predicted vs actual effects of removing training data (the paper's Figure 8).

    For each target, heuristic and k, trains --runs models without the k examples the
    heuristic picks (and the full-data controls) through the run store on the cluster --
    resumable: rerun after an interruption and only what is missing is trained -- and
    prints Pearson and Spearman of the datamodels' predicted margin drop against the actual
    one, overall and per heuristic, with 95% intervals.
    """
    from ..counterfactual import counterfactuals

    n, idx = _targets(targets)
    ds = counterfactuals(store, datamodels, targets=n, indices=idx, k=_ints(k, "--k"),
                         heuristics=_names(heuristics), estimators=_names(estimators),
                         runs=runs, control_runs=control_runs, alpha_control=alpha_control,
                         seed=seed, scheduler=scheduler, workers=workers, progress=progress)
    for line in counterfactual_summary(ds):
        click.echo(line)
    _save_result(ds, out)


def _support_command(mode):
    @click.argument("store", type=click.Path(exists=True))
    @click.argument("datamodels", type=click.Path(exists=True))
    @click.option("--targets", default="10", show_default=True,
                  help="How many targets to draw class-balanced, or comma-separated indices.")
    @click.option("--k", "k", default=None,
                  help="Grid of k, comma-separated (default 10*2^i up to half the training "
                       "set).")
    @click.option("--estimators", default="", help="Baseline estimators that guide the same "
                  "search, comma-separated (App. F.3.1).")
    @click.option("--random-class", is_flag=True,
                  help="Also the random same-class order as a guide.")
    @click.option("--runs", type=int, default=5, show_default=True,
                  help="Models per grid point and for the certification.")
    @click.option("--control-runs", type=int, default=None,
                  help="Full-data control models (default max(runs, 10)).")
    @click.option("--inflation", type=float, default=1.2, show_default=True,
                  help="Estimate = ceil(inflation * k_hat), certified by training.")
    @click.option("--confirm", type=int, default=1, show_default=True,
                  help="Grid points trained past the first mean margin <= 0.")
    @click.option("--out", type=click.Path(), default=None,
                  help="Save the Dataset (Zarr or .nc).")
    @_cluster_options
    @_refusals
    def command(store, datamodels, targets, k, estimators, random_class, runs, control_runs,
                inflation, confirm, out, scheduler, workers, progress, seed, **extra):
        from ..counterfactual.support import support

        n, idx = _targets(targets)
        ds = support(store, datamodels, targets=n, indices=idx, k=_ints(k, "--k"),
                     estimators=_names(estimators),
                     guides=["random_class"] if random_class else None, runs=runs,
                     control_runs=control_runs, inflation=inflation, confirm=confirm,
                     mode=mode, flip_class=_ints(extra.get("flip_class"), "--flip-class"),
                     seed=seed, scheduler=scheduler, workers=workers, progress=progress)
        for line in support_summary(ds):
            click.echo(line)
        _save_result(ds, out)

    return command


_support = _support_command("remove")
_support.__doc__ = """Data support of targets: the fewest removals that flip them (Figure 7).

    The smallest number of training examples whose removal makes the target misclassified on
    average: a guided search over a grid of k (the top-k datamodel weights removed, --runs
    models each, stopping past the crossing), a decreasing isotonic fit, its first zero
    crossing k_hat, and a certification with the top ceil(1.2 k_hat) removed. Baseline
    estimators guide the same search. Resumable like every training.
    """
main.command("support")(_support)

_mislabel = click.option("--flip-class", default=None,
                         help="Class to relabel to, per target (comma-separated) or one for all "
                              "(default: the most confused class from the job's "
                              "train_logits).")(_support_command("relabel"))
_mislabel.__doc__ = """Mislabel brittleness: the fewest relabellings that flip a target (Figure 24).

    Like `dmdask support`, but the top-k examples are relabelled to the target's most
    confused class (highest mean wrong-class logit over the full-data models, from the job's
    train_logits hook) instead of removed; prints the number of flips that changes the
    prediction.
    """
main.command("mislabel")(_mislabel)


@main.command("select")
@click.argument("store", type=click.Path(exists=True))
@click.argument("datamodels", type=click.Path(exists=True))
@click.option("--class", "target_class", type=int, default=None,
              help="Target distribution: the targets of this class.")
@click.option("--targets", default=None, help="Target distribution: comma-separated indices.")
@click.option("--k", "k", default="100,200,400,800", show_default=True,
              help="Sizes of the selected training sets, comma-separated.")
@click.option("--estimators", default="", help="Baseline estimators that select too.")
@click.option("--runs", type=int, default=5, show_default=True,
              help="Models trained per selected set.")
@click.option("--out", type=click.Path(), default=None, help="Save the Dataset (Zarr or .nc).")
@_cluster_options
@_refusals
def select_(store, datamodels, target_class, targets, k, estimators, runs, out, scheduler,
            workers, progress, seed):
    """Datamodel-guided data selection (DsDm): train on the k examples with the best mean
    datamodel weight for a target set, against random, class-balanced random and baseline
    selections.

    The target set is split in halves: one selects, the other measures (mean margin and
    accuracy of --runs models per selected set, and the datamodels' prediction).
    """
    from ..counterfactual.selection import select

    ds = select(store, datamodels, target_class=target_class,
                indices=_ints(targets, "--targets"), k=_ints(k, "--k"),
                estimators=_names(estimators), runs=runs, seed=seed, scheduler=scheduler,
                workers=workers, progress=progress)
    click.echo(f"{ds.sizes['selection_target']} targets select, "
               f"{ds.sizes['evaluation_target']} measure; {ds.attrs['models_trained']} "
               "models trained")
    click.echo(f"{'method':<18} {'k':>5} {'accuracy':>16} {'mean margin':>18} {'predicted':>10}")
    for m in ds.method.values:
        for kk in ds.k.values:
            s = ds.sel({"method": m, "k": kk})
            click.echo(f"{m!s:<18} {int(kk):>5} {float(s.accuracy):>8.3f} ± "
                       f"{float(s.accuracy_se):.3f} {float(s.actual):>9.3f} ± "
                       f"{float(s.actual_se):.3f} {float(s.predicted):>10.3f}")
    _save_result(ds, out)
