"""The ``dmdask`` command line.

Every refusal is one line on stderr and a non-zero exit; tracebacks are for bugs only.
"""

from __future__ import annotations

import functools
import json
import os
import sys

import click

from .errors import DmdaskError

DEFAULT_JOB = "jobs.digits:DigitsMLP"


def _refusals(fn):
    """Turn dmdask's deliberate errors into one clean line and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DmdaskError as e:
            click.echo(f"dmdask: error: {e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("dmdask: interrupted; rerun the same command to resume", err=True)
            sys.exit(130)

    return wrapper


def _parse_params(items: tuple[str, ...]) -> dict:
    params = {}
    for item in items:
        if "=" not in item:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--param")
        k, v = item.split("=", 1)
        try:
            params[k] = json.loads(v)
        except json.JSONDecodeError:
            params[k] = v
    return params


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="dmdask")
def main():
    """dmdask: datamodels at any scale.

    Train many models on random subsets of a training set (a run store: Zarr, read as
    xarray), then fit a sparse linear datamodel per target example and analyse it — on a
    laptop or a dask.distributed cluster.

    Start with `dmdask quickstart`; `dmdask COMMAND --help` explains each command.
    """


@main.command()
@click.argument("store", type=click.Path())
@click.option("--job", default=DEFAULT_JOB, show_default=True,
              help="Import path 'module:Class' of the job (learning algorithm + dataset).")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="Job constructor parameter (JSON value); repeatable.")
@click.option("-n", "--n-models", type=int, default=1000, show_default=True,
              help="Random alpha-subset models to add.")
@click.option("--alpha", type=float, default=0.5, show_default=True,
              help="Fraction of the training set in each subset.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Store seed: masks and training seeds are a pure function of it and the model index.")
@click.option("--sampling", type=click.Choice(["fixed", "bernoulli"]), default="fixed",
              show_default=True, help="fixed: exactly round(alpha*n) examples; bernoulli: each w.p. alpha.")
@click.option("--block-size", type=int, default=None,
              help="Models per block (chunk, unit of training). Default: the job's preference or dmdask.store.block-size.")
@_refusals
def init(store, job, params, n_models, alpha, seed, sampling, block_size):
    """Create a run store STORE for a job, with its random-subset masks drawn.

    Nothing is trained yet: run `dmdask train STORE`. Rerunning with the same arguments
    leaves an existing store alone; a store of a different job is refused.
    """
    from .store import create_store, store_info

    path = create_store(store, job, n_models, alpha, params=_parse_params(params), seed=seed,
                        sampling=sampling, block_size=block_size)
    info = store_info(path)
    click.echo(f"{path}: {info['n_models']} models ({info['pending']} to train) x "
               f"{info['n_train']} training examples x {info['n_target']} targets")


@main.command()
@click.argument("store", type=click.Path(exists=True))
@click.option("--kind", type=click.Choice(["random", "heldout", "replicate"]), required=True,
              help="random: more models to fit on; heldout: fresh subsets for evaluation; "
                   "replicate: repeat existing masks with new seeds.")
@click.option("-n", "--n-models", type=int, default=None, help="Number of random/heldout models.")
@click.option("--alpha", type=float, default=None, help="Subset fraction (default: the store's).")
@click.option("--of", "replicate_of", default=None, metavar="KIND|START:STOP",
              help="For --kind replicate: the models to repeat, by kind (e.g. heldout) or index range.")
@click.option("--times", type=int, default=1, show_default=True,
              help="For --kind replicate: replicates per model.")
@_refusals
def add(store, kind, n_models, alpha, replicate_of, times):
    """Add models to STORE: more random subsets, held-out subsets, or replicates."""
    import numpy as np

    from .store import KINDS, add_models, open_store

    if kind == "replicate":
        if not replicate_of:
            raise click.UsageError("--kind replicate needs --of KIND or --of START:STOP")
        if replicate_of in KINDS:
            ds = open_store(store)
            idx = ds.model.values[(ds.kind == replicate_of).values]
        else:
            a, b = (int(x) for x in replicate_of.split(":"))
            idx = np.arange(a, b)
        new = add_models(store, "replicate", replicate_of=np.repeat(idx, times))
    else:
        new = add_models(store, kind, n=n_models, alpha=alpha)
    click.echo(f"{store}: added {len(new)} {kind} models (indices {new[0] if len(new) else '-'}"
               f"..{new[-1] if len(new) else '-'}); run `dmdask train {store}`")


@main.command()
@click.argument("store", type=click.Path(exists=True))
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Join a running cluster (tcp://host:port of `dask scheduler`) instead of "
                   "starting a local one.")
@click.option("--workers", type=int, default=None,
              help="Local cluster: worker processes (default: one per core).")
@click.option("--threads-per-worker", type=int, default=None,
              help="Local cluster: threads per worker (default: dmdask.train.threads-per-worker).")
@click.option("--gpus", type=int, default=None, metavar="N",
              help="Start a local GPU cluster (dask_cuda.LocalCUDACluster, one worker per GPU) "
                   "on N GPUs (0: all). To join `dask cuda worker`s elsewhere, use --scheduler.")
@click.option("--retries", type=int, default=None, help="Retries per failed block (default 3).")
@click.option("--progress/--no-progress", default=True, show_default=True)
@_refusals
def train(store, scheduler, workers, threads_per_worker, gpus, retries, progress):
    """Train every incomplete block of STORE on a dask.distributed cluster.

    Resumable: interrupt it, or lose a worker, at any moment and rerun it; only blocks whose
    `completed` mark is missing are trained again, and every block lands whole or not at all.
    """
    from .train import train as run

    def started(dashboard, total):
        click.echo(f"training {total} models; dashboard: {dashboard}", err=True)

    rep = run(store, scheduler=scheduler, workers=workers, threads_per_worker=threads_per_worker,
              gpus=gpus, retries=retries, progress=progress, on_start=started)
    if rep.models:
        click.echo(f"{store}: trained {rep.models} models in {rep.blocks} blocks, "
                   f"{rep.wall_seconds:.1f} s ({rep.models_per_second:.1f} models/s)")
    else:
        click.echo(f"{store}: nothing to train; every model is complete")


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


@main.command()
@click.argument("store", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@_refusals
def info(store, as_json):
    """Summarise STORE: models done/pending per kind, alpha, sizes on disk, bits per mask entry."""
    from .store import store_info

    i = store_info(store)
    if as_json:
        click.echo(json.dumps(i, indent=2))
        return
    job = i["job"]
    click.echo(f"store     {i['path']}")
    click.echo(f"job       {job['path'] + ' ' + json.dumps(job['params']) if job else '(none: imported)'}")
    click.echo(f"shape     {i['n_models']} models x {i['n_train']} train x {i['n_target']} targets; "
               f"blocks of {i['block_size']}; sampling {i['sampling']}, seed {i['seed']}")
    click.echo(f"{'kind':<15}{'models':>9}{'done':>9}{'pending':>9}  alpha")
    for k, v in i["kinds"].items():
        a = ", ".join(f"{x:g}" for x in v["alphas"]) or "-"
        click.echo(f"{k:<15}{v['models']:>9}{v['done']:>9}{v['pending']:>9}  {a}")
    sizes = ", ".join(f"{k} {_fmt_bytes(v)}" for k, v in sorted(i["bytes"].items(),
                                                               key=lambda kv: -kv[1]))
    click.echo(f"on disk   {_fmt_bytes(i['bytes_total'])} ({sizes})")
    click.echo(f"masks     {i['mask_bits_per_entry']:.3f} stored bits per entry")


@main.command("import")
@click.argument("src_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("store", type=click.Path())
@click.option("--alpha", type=float, default=None,
              help="Subset fraction to record (default: the masks' density).")
@click.option("--block-size", type=int, default=None, help="Models per block in the new store.")
@click.option("--margins-key", default="margins", show_default=True,
              help="Which <key>.npy holds the margins.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@_refusals
def import_(src_dir, store, alpha, block_size, margins_key, progress):
    """Import a MadryLab datamodels directory (masks.npy, margins.npy, _completed.npy) into STORE.

    Streams blocks from the memmaps, so any size fits in memory. Imported models are
    `random` models; rows not completed stay incomplete. The store has no job.
    """
    from .madrylab import import_madrylab

    path = import_madrylab(src_dir, store, alpha=alpha, block_size=block_size,
                           margins_key=margins_key, progress=progress)
    click.echo(f"imported {src_dir} into {path}")


@main.command()
@click.argument("store", type=click.Path(exists=True))
@click.argument("dst_dir", type=click.Path())
@click.option("--margins-key", default=None,
              help="Name of the margins file (default: the key recorded at import, else 'margins').")
@click.option("--progress/--no-progress", default=True, show_default=True)
@_refusals
def export(store, dst_dir, margins_key, progress):
    """Write STORE back in the MadryLab layout (masks.npy, margins.npy, _completed.npy)."""
    from .madrylab import export_madrylab

    path = export_madrylab(store, dst_dir, margins_key=margins_key, progress=progress)
    click.echo(f"exported {store} to {path}")


def _fit_summary(dm) -> list[str]:
    """A few lines on a datamodels Dataset: validation error, sparsity, chosen λ."""
    import numpy as np

    w = dm["weight"].values
    nnz = (w != 0).sum(axis=1)
    lam = dm["lam"].values
    rel = lam / dm["lambdas"].values[:, 0]
    vm = dm["val_mse"].values
    return [
        f"targets   {w.shape[0]} datamodels over {w.shape[1]} training examples, "
        f"{dm.attrs['n_models']} models (alpha {dm.attrs['alpha']:g}), selection "
        f"{dm.attrs['selection']}, solver {'+'.join(dm.attrs['solvers_used'])}, "
        f"{dm.attrs['seconds']:.1f} s",
        f"val MSE   mean {np.nanmean(vm):.4g}, median {np.nanmedian(vm):.4g}",
        f"sparsity  {np.median(nnz):.0f} nonzero weights per target (median; "
        f"{100 * (w != 0).mean():.1f}% of all weights)",
        f"lambda    chosen {np.nanmin(lam):.3g} .. {np.nanmax(lam):.3g} "
        f"({np.nanmin(rel):.3g} .. {np.nanmax(rel):.3g} of each target's lambda_max)",
    ]


@main.command()
@click.argument("store", type=click.Path(exists=True))
@click.option("--out", required=True, type=click.Path(),
              help="Where to write the datamodels (a Zarr store; read it with xr.open_zarr).")
@click.option("--alpha", type=float, default=None,
              help="Which alpha's random models to fit on (needed only if there are several).")
@click.option("--selection", type=click.Choice(["auto", "holdout", "cv"]), default="auto",
              show_default=True,
              help="How lambda is chosen per target: holdout (first --val-fraction of the models), "
                   "cv (--folds contiguous folds), or auto (cv when the holdout would be small).")
@click.option("--folds", type=int, default=5, show_default=True, help="Folds for cv.")
@click.option("--val-fraction", type=float, default=0.1, show_default=True,
              help="Fraction of the fitting models that validate, for holdout.")
@click.option("--n-lambdas", type=int, default=30, show_default=True,
              help="Lambda values on each target's path.")
@click.option("--lambda-ratio", type=float, default=1e-3, show_default=True,
              help="Smallest lambda as a fraction of each target's lambda_max.")
@click.option("--solver", type=click.Choice(["auto", "gram", "saga"]), default="auto",
              show_default=True,
              help="gram: all targets at once from X^T X; saga: streaming, for targets whose "
                   "rows differ; auto routes each target.")
@click.option("--targets", default=None, metavar="START:STOP",
              help="Fit only these target positions.")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Run on a dask cluster (tcp://host:port) instead of local threads.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@_refusals
def fit(store, out, alpha, selection, folds, val_fraction, n_lambdas, lambda_ratio, solver,
        targets, scheduler, overwrite, progress):
    """Fit one LASSO datamodel per target of STORE and save them to --out.

    Uses the completed `random` models of one alpha: one pass over the masks gathers the
    sufficient statistics, then the lambda path, its validation error, the per-target choice
    of lambda and the refit run from those statistics alone. Weights are in raw-mask space:
    prediction = mask @ weight + bias.
    """
    import numpy as np

    from .fit import fit_datamodels, save_datamodels

    tsel = None
    if targets:
        a, b = (int(x) for x in targets.split(":"))
        tsel = np.arange(a, b)
    if os.path.exists(out) and not overwrite:
        raise DmdaskError(f"{out}: already exists (--overwrite replaces it)")
    client = None
    if scheduler:
        from distributed import Client

        client = Client(scheduler)
    try:
        dm = fit_datamodels(store, alpha=alpha, selection=selection, folds=folds,
                            val_fraction=val_fraction, n_lambdas=n_lambdas,
                            lambda_ratio=lambda_ratio, solver=solver, targets=tsel,
                            client=client, progress=progress)
    finally:
        if client is not None:
            client.close()
    save_datamodels(dm, out, overwrite=overwrite)
    for line in _fit_summary(dm):
        click.echo(line)
    click.echo(f"saved     {out}")


@main.command()
@click.option("--dir", "workdir", type=click.Path(), default="dmdask-quickstart", show_default=True,
              help="Where the store and results go.")
@click.option("-n", "--n-models", type=int, default=5000, show_default=True,
              help="Random alpha = 0.5 models to train.")
@click.option("--workers", type=int, default=None, help="Local worker processes (default: one per core).")
@click.option("--job", default=DEFAULT_JOB, show_default=True, help="Job to run.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@_refusals
def quickstart(workdir, n_models, workers, job, progress):
    """Run the whole job end to end on the embedded default (digits MLP, local cluster, CPU).

    Creates DIR/runs.zarr, trains the models on a LocalCluster, fits the datamodels and
    prints a summary. Rerunning resumes where it stopped.
    """
    from .store import create_store
    from .train import train as run

    os.makedirs(workdir, exist_ok=True)
    store = os.path.join(workdir, "runs.zarr")
    click.echo(f"[1/2] run store {store} ({job}, {n_models} models, alpha = 0.5)")
    create_store(store, job, n_models, 0.5)
    rep = run(store, workers=workers, progress=progress,
              on_start=lambda d, t: click.echo(f"      training {t} models; dashboard: {d}"))
    if rep.models:
        click.echo(f"      trained {rep.models} models in {rep.wall_seconds:.1f} s "
                   f"({rep.models_per_second:.0f} models/s)")
    _quickstart_fit(store, workdir, progress)


def _quickstart_fit(store: str, workdir: str, progress: bool) -> None:
    from .fit import fit_datamodels, save_datamodels

    out = os.path.join(workdir, "datamodels.zarr")
    click.echo(f"[2/2] datamodels {out}")
    dm = fit_datamodels(store, progress=progress)
    save_datamodels(dm, out, overwrite=True)
    for line in _fit_summary(dm):
        click.echo("      " + line)


if __name__ == "__main__":  # pragma: no cover
    main()
