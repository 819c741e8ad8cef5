"""The ``dmdask`` command line.

Every refusal is one line on stderr and a non-zero exit; tracebacks are for bugs only.
"""

from __future__ import annotations

import functools
import json
import os
import sys

import click

from ..errors import DmdaskError

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
@click.option("--trust-job", "trust_job", multiple=True, metavar="MODULE",
              help="Trust job module MODULE (and its submodules) on this machine: import it "
                   "although no store was created here with it. Recorded in the trust file "
                   "(dmdask.jobs.trust-file); repeatable.")
@_refusals
def init(store, job, params, n_models, alpha, seed, sampling, block_size, trust_job):
    """Create a run store STORE for a job, with its random-subset masks drawn.

    Nothing is trained yet: run `dmdask train STORE`. Rerunning with the same arguments
    leaves an existing store alone; a store of a different job is refused. The job's module is
    trusted on this machine from now on (a store made elsewhere cannot choose what runs here).
    """
    from ..store import jobspec
    from ..store.runstore import create_store, store_info

    jobspec.record_trust(trust_job)

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

    from ..store.runstore import KINDS, add_models, open_store

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
@click.option("--trust-job", "trust_job", multiple=True, metavar="MODULE",
              help="Trust job module MODULE (and its submodules) on this machine: import it "
                   "although no store was created here with it. Recorded in the trust file "
                   "(dmdask.jobs.trust-file); repeatable.")
@_refusals
def train(store, scheduler, workers, threads_per_worker, gpus, retries, progress, trust_job):
    """Train every incomplete block of STORE on a dask.distributed cluster.

    Resumable: interrupt it, or lose a worker, at any moment and rerun it; only blocks whose
    `completed` mark is missing are trained again, and every block lands whole or not at all.
    The store's job module is imported only if trusted on this machine (see --trust-job).
    """
    from ..train import train as run

    def started(dashboard, total):
        click.echo(f"training {total} models; dashboard: {dashboard}", err=True)

    rep = run(store, scheduler=scheduler, workers=workers, threads_per_worker=threads_per_worker,
              gpus=gpus, retries=retries, progress=progress, on_start=started,
              trust_job=trust_job)
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
    from ..store.runstore import store_info

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
@click.argument("src_dir", type=click.Path(exists=True))
@click.argument("store", type=click.Path())
@click.option("--alpha", type=float, default=None,
              help="Subset fraction to record (default: the masks' density).")
@click.option("--block-size", type=int, default=None, help="Models per block in the new store.")
@click.option("--margins-key", default="margins", show_default=True,
              help="Which <key>.npy holds the margins.")
@click.option("--heldout-rows", type=int, default=0, show_default=True,
              help="Mark the last N rows as 'heldout' models (MadryLab's releases append "
                   "their evaluation models to every matrix), so the store can be evaluated.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@_refusals
def import_(src_dir, store, alpha, block_size, margins_key, heldout_rows, progress):
    """Import MadryLab data into STORE: a datamodels directory (masks.npy, margins.npy,
    _completed.npy) or a regression .beton (FFCV; fields mask, targets, idx).

    Streams blocks of rows, so any size fits in memory. Imported models are `random`
    models (the last --heldout-rows `heldout`); rows not completed stay incomplete. The store
    has no job. A .beton needs the `ffcv` extra.
    """
    if os.path.isfile(src_dir):
        from ..store.beton import import_beton

        path = import_beton(src_dir, store, alpha=alpha, block_size=block_size,
                            heldout_rows=heldout_rows, progress=progress)
    else:
        from ..store.madrylab import import_madrylab

        path = import_madrylab(src_dir, store, alpha=alpha, block_size=block_size,
                               margins_key=margins_key, heldout_rows=heldout_rows,
                               progress=progress)
    click.echo(f"imported {src_dir} into {path}")


@main.command()
@click.argument("store", type=click.Path(exists=True))
@click.argument("dst_dir", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["madrylab", "beton"]), default="madrylab",
              show_default=True,
              help="madrylab: a directory of .npy files; beton: one FFCV .beton with the "
                   "fields compute_datamodels.py reads (needs the `ffcv` extra).")
@click.option("--margins-key", default=None,
              help="Name of the margins file (default: the key recorded at import, else 'margins').")
@click.option("--kind", "kinds", multiple=True, metavar="KIND",
              help="beton: export only completed models of this kind (repeatable; default all).")
@click.option("--overwrite", is_flag=True, help="beton: replace an existing file.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@_refusals
def export(store, dst_dir, fmt, margins_key, kinds, overwrite, progress):
    """Write STORE in MadryLab's formats: the .npy layout (masks.npy, margins.npy,
    _completed.npy) in DST_DIR, or with --format beton the regression .beton DST_DIR."""
    if fmt == "beton":
        from ..store.beton import export_beton

        info = export_beton(store, dst_dir, kinds=tuple(kinds) or None, overwrite=overwrite,
                            progress=progress)
        kinds_s = ", ".join(f"{c} {k}" for k, c in info["kinds"].items())
        click.echo(f"exported {info['n_models']} models ({kinds_s}) of {store} to {info['path']}")
        return
    from ..store.madrylab import export_madrylab

    path = export_madrylab(store, dst_dir, margins_key=margins_key, progress=progress)
    click.echo(f"exported {store} to {path}")


def _fit_summary(dm) -> list[str]:
    """A few lines on a datamodels Dataset: validation error, sparsity, chosen λ. The weights
    are read by target blocks (a lazy Dataset is never loaded whole)."""
    import numpy as np

    nnz = np.asarray((dm["weight"] != 0).sum("train").values)
    d = dm.sizes["train"]
    lam = dm["lam"].values
    rel = lam / dm["lambdas"].values[:, 0]
    vm = dm["val_mse"].values
    return [
        f"targets   {nnz.size} datamodels over {d} training examples, "
        f"{dm.attrs['n_models']} models (alpha {dm.attrs['alpha']:g}), selection "
        f"{dm.attrs['selection']}, solver {'+'.join(str(dm.attrs['solvers_used']).split())}, "
        f"{dm.attrs['seconds']:.1f} s",
        f"val MSE   mean {np.nanmean(vm):.4g}, median {np.nanmedian(vm):.4g}",
        f"sparsity  {np.median(nnz):.0f} nonzero weights per target (median; "
        f"{100 * nnz.sum() / (nnz.size * d):.1f}% of all weights)",
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
@click.option("--block-targets", type=int, default=None,
              help="Targets solved and written per block (default: setting "
                   "dmdask.fit.out-block-targets); with the Grams it bounds the memory.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@_refusals
def fit(store, out, alpha, selection, folds, val_fraction, n_lambdas, lambda_ratio, solver,
        targets, scheduler, overwrite, block_targets, progress):
    """Fit one LASSO datamodel per target of STORE and save them to --out.

    Uses the completed `random` models of one alpha: one pass over the masks gathers the
    sufficient statistics, then the lambda path, its validation error, the per-target choice
    of lambda and the refit run from those statistics alone. Weights are in raw-mask space:
    prediction = mask @ weight + bias.

    The datamodels are written to --out block of targets by block as they finish, so the
    weight matrix is never whole in memory. A killed fit rerun with the same options
    resumes with the blocks already written; other options on the same --out are refused
    (--overwrite starts over).
    """
    import shutil

    import numpy as np

    from ..fit.datamodels import fit_datamodels

    tsel = None
    if targets:
        a, b = (int(x) for x in targets.split(":"))
        tsel = np.arange(a, b)
    if os.path.exists(out) and overwrite:
        shutil.rmtree(out) if os.path.isdir(out) else os.remove(out)
    client = None
    if scheduler:
        from distributed import Client

        client = Client(scheduler)
    try:
        dm = fit_datamodels(store, alpha=alpha, selection=selection, folds=folds,
                            val_fraction=val_fraction, n_lambdas=n_lambdas,
                            lambda_ratio=lambda_ratio, solver=solver, targets=tsel,
                            client=client, progress=progress, out=out,
                            block_targets=block_targets)
    finally:
        if client is not None:
            client.close()
    for line in _fit_summary(dm):
        click.echo(line)
    click.echo(f"saved     {out}")


def _client(scheduler):
    if not scheduler:
        return None
    from distributed import Client

    return Client(scheduler)


def _save_result(ds, out: str | None, overwrite: bool = True) -> None:
    """Write an xarray result as Zarr (or netCDF for a .nc path). A run store or fitted
    datamodels at ``out`` are refused: results are recomputable, they are not."""
    if not out:
        return
    _refuse_out_over_source(out)
    if out.endswith(".nc"):
        ds.to_netcdf(out)
    else:
        from ..outputs import write_zarr

        write_zarr(ds, out, overwrite=overwrite)
    click.echo(f"saved     {out}")


def _refuse_out_over_source(out: str) -> None:
    if not os.path.isdir(out):
        return
    import zarr

    try:
        attrs = dict(zarr.open_group(out, mode="r").attrs)
    except Exception:  # not a Zarr group: write_zarr says what it finds there
        return
    what = ("a run store" if isinstance(attrs.get("dmdask"), dict) and "job" in attrs["dmdask"]
            else "fitted datamodels" if "dmdask_datamodels" in attrs else None)
    if what:
        raise DmdaskError(f"--out {out} is {what}: refusing to overwrite it with a result; "
                          "choose another path")


def _load_result(path: str | None):
    import xarray as xr

    if not path:
        return None
    if not os.path.exists(path):
        raise DmdaskError(f"{path}: no such result")
    if path.endswith(".nc"):
        return xr.load_dataset(path)
    return xr.open_zarr(path, consolidated=False).load()


_METRIC_LINES = (("mse", "MSE"), ("excess_mse", "MSE - OPT"), ("r2", "R2"),
                 ("r2_noise_adjusted", "R2 (noise-adj.)"), ("pearson", "Pearson"),
                 ("spearman", "Spearman"), ("auc", "AUC"), ("lds", "LDS"), ("opt", "OPT"))


def _evaluation_summary(ev) -> list[str]:
    a = ev.attrs
    lines = [f"estimator {a['estimator']} ({a['scores_output']}; calibration: "
             f"{a['calibration']})",
             f"held-out  {a['n_heldout_subsets']} subsets, {a['n_heldout_runs']} runs "
             f"({a['n_replicate_runs']} replicates)"]
    for key, label in _METRIC_LINES:
        lines.append(f"{label:<16}{a[f'{key}_mean']: .4f}  [{a[f'{key}_ci_low']:.4f}, "
                     f"{a[f'{key}_ci_high']:.4f}]  ({a[f'{key}_n_used']} targets, "
                     f"{a[f'{key}_n_skipped']} undefined)")
    lines.append(f"AUC pooled {a['auc_pooled']:.4f}; intervals: {a['ci_level']:.0%} "
                 f"{a['ci_method']}")
    return lines


@main.command()
@click.argument("store", type=click.Path(exists=True))
@click.argument("scores", type=click.Path(exists=True))
@click.option("--out", type=click.Path(), default=None,
              help="Save the per-target results (Zarr, or netCDF for a .nc path).")
@click.option("--layout", type=click.Choice(["auto", "target_train", "train_target"]),
              default="auto", show_default=True,
              help="How a plain array is laid out: [targets, train] or [train, targets] "
                   "(auto: from the store's sizes; TRAK memmaps are train_target).")
@click.option("--exp-name", default=None, help="TRAK experiment name (for a TRAK save_dir).")
@click.option("--calibrate", type=click.Choice(["auto", "yes", "no"]), default="auto",
              show_default=True,
              help="Fit the best per-target affine map on the fitting models before MSE/R2/"
                   "AUC; auto: for scores without a bias or that model correctness.")
@click.option("--no-eq9", is_flag=True,
              help="Do not drop the runs that contain a training-example target.")
@click.option("--ci", type=click.Choice(["t", "bootstrap"]), default="t", show_default=True,
              help="Confidence interval over targets.")
@click.option("--alpha", type=float, default=None,
              help="Which alpha's random models calibrate (only if there are several).")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Run on a dask cluster (tcp://host:port) instead of local threads.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@_refusals
def evaluate(store, scores, out, layout, exp_name, calibrate, no_eq9, ci, alpha, scheduler,
             as_json):
    """Evaluate SCORES (an attribution matrix) on the held-out models of STORE.

    SCORES: a datamodels Zarr from `dmdask fit`, a Zarr/.npy array of shape [targets, train]
    or [train, targets], or a TRAK save_dir / scores .mmap. Sign: a positive score means
    the training example's presence raises the target's margin. Prints MSE, R2, Pearson,
    Spearman, AUC and TRAK's LDS (means over targets, with CIs) and the OPT noise floor
    from the replicate models; --out keeps the per-target values.
    """
    from ..analysis.evaluate import evaluate as run
    from ..analysis.scores import load_scores
    from ..store.runstore import open_store

    ds = open_store(store)
    sc = load_scores(scores, ds=ds, layout=layout, exp_name=exp_name)
    cal = {"auto": "auto", "yes": True, "no": False}[calibrate]
    client = _client(scheduler)
    try:
        ev = run(ds, sc, calibrate=cal, eq9=not no_eq9, ci=ci, alpha=alpha, client=client)
    finally:
        if client is not None:
            client.close()
    if as_json:
        click.echo(json.dumps({k: (v if isinstance(v, (str, int, float)) else str(v))
                               for k, v in ev.attrs.items()}, indent=1))
    else:
        for line in _evaluation_summary(ev):
            click.echo(line)
    _save_result(ev, out)


@main.command()
@click.argument("store", type=click.Path(exists=True))
@click.option("--row", "rows", multiple=True, metavar="NAME[:N]",
              help="An estimator and its number of models (default: all fitting models, or "
                   "the estimator's default for model-based ones); repeatable. Default rows: "
                   "the paper's Table 5 plus OLS, ridge and the model-based estimators the "
                   "job supports.")
@click.option("--datamodels", type=click.Path(exists=True), default=None,
              help="Reuse these fitted datamodels for the lasso row with the same models.")
@click.option("--no-model-based", is_flag=True,
              help="Default rows without the estimators that train models themselves.")
@click.option("--out", type=click.Path(), default=None,
              help="Save the comparison (Zarr, or netCDF for a .nc path).")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Run on a dask cluster (tcp://host:port) instead of local threads.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--per-row-targets", is_flag=True,
              help="Average each row over its own defined targets instead of the targets "
                   "every row defines.")
@_refusals
def compare(store, rows, datamodels, no_model_based, out, scheduler, progress,
            per_row_targets):
    """Compare attribution estimators on STORE's held-out models (the paper's Table 5).

    Every row -- estimator, number of models, output type -- is evaluated the same way,
    against the output it models (margin, or correctness 1[margin > 0]): Spearman, MSE, AUC
    and LDS, means over the targets every row defines (their number is printed; LDS with a
    95% CI). Scores without a bias are calibrated by the best per-target affine map with
    slope >= 0 on the row's own number of fitting models before MSE, marked *; Spearman, AUC
    and LDS use the raw scores.
    """
    from ..analysis.compare import compare as run
    from ..analysis.compare import default_rows, format_table, parse_rows

    todo = (parse_rows(rows, store) if rows
            else default_rows(store, include_model_based=not no_model_based))
    client = _client(scheduler)

    def on_row(i, row, sec):
        if progress:
            click.echo(f"[{i + 1}/{len(todo)}] {row[0]} ({row[1]} models, {row[2]}): "
                       f"{sec:.1f} s", err=True)

    try:
        cmp = run(store, todo, datamodels=datamodels, client=client, on_row=on_row,
                  targets="row" if per_row_targets else "common")
    finally:
        if client is not None:
            client.close()
    click.echo(format_table(cmp, markdown=False))
    _save_result(cmp, out)


@main.command("sample-complexity")
@click.argument("store", type=click.Path(exists=True))
@click.option("--sizes", default=None, metavar="N1,N2,...",
              help="Prefix sizes (default: 6 sizes halving down from all fitting models).")
@click.option("--estimator", "estimators", multiple=True,
              type=click.Choice(["lasso", "dom_margin", "ols", "ridge"]),
              help="Estimators to refit per size (default: lasso, dom_margin); repeatable.")
@click.option("--selection", type=click.Choice(["cv", "holdout"]), default="cv",
              show_default=True, help="How LASSO's lambda is chosen inside each prefix.")
@click.option("--out", type=click.Path(), default=None,
              help="Save the curves (Zarr, or netCDF for a .nc path).")
@click.option("--progress/--no-progress", default=True, show_default=True)
@_refusals
def sample_complexity(store, sizes, estimators, selection, out, progress):
    """Held-out MSE, LDS, ... against the number of fitting models (the paper's Figure 6).

    Fits each estimator on nested prefixes of the fitting models from one statistics pass
    and prints the metrics per size next to the OPT noise floor the held-out replicates
    give.
    """
    from ..analysis.complexity import sample_complexity as run

    sz = [int(x) for x in sizes.split(",")] if sizes else None
    sc = run(store, sz, estimators=estimators or ("lasso", "dom_margin"),
             selection=selection, progress=progress)
    click.echo(f"OPT noise floor {float(sc.opt):.4f}; Var f {float(sc.var_actual):.4f}")
    click.echo(f"{'estimator':<12}{'models':>9}{'MSE':>9}{'MSE-OPT':>9}{'R2':>8}"
               f"{'Spearman':>10}{'LDS':>8}")
    for est in sc.estimator.values:
        for n in sc.n_models.values:
            r = sc.sel(estimator=est, n_models=n)
            click.echo(f"{est:<12}{int(n):>9}{float(r.mse):>9.4f}{float(r.excess_mse):>9.4f}"
                       f"{float(r.r2):>8.3f}{float(r.spearman):>10.3f}{float(r.lds):>8.3f}")
    _save_result(sc, out)


@main.command()
@click.argument("store", type=click.Path(exists=True))
@click.option("--output", type=click.Choice(["margin", "correctness"]), default="margin",
              show_default=True, help="Which model output the estimators use.")
@click.option("--sizes", default=None, metavar="N1,N2,...",
              help="Nested prefix sizes (default: a quarter, half and all fitting models).")
@click.option("--groups", type=int, default=10, show_default=True,
              help="Jackknife groups for the sampling error.")
@click.option("--control-scale", type=float, default=1.0, show_default=True,
              help="A wrong constant checked the same way (shows the check can fail).")
@_refusals
def lemma(store, output, sizes, groups, control_scale):
    """Check the influence-OLS lemma (REFERENCE.md 2.5) on STORE.

    Min-norm OLS with intercept should equal (N-1)/N times the difference of means
    (fixed-size subsets; 1 times for Bernoulli) up to sampling error, which shrinks like
    1/sqrt(models). Prints the relative gap and the mean squared jackknife z-score per size,
    for the lemma's constant and for --control-scale.
    """
    from ..analysis.lemma import lemma_check

    sz = [int(x) for x in sizes.split(",")] if sizes else None
    lc = lemma_check(store, sz, output=output, groups=groups, control_scale=control_scale)
    a = lc.attrs
    click.echo(f"identity: {a['identity']}; c = {a['lemma_scale']:.6f}; under the lemma "
               f"mean z^2 ~ {a['expected_mean_z2']:.2f}")
    click.echo(f"{'models':>8}{'gap':>9}{'mean z2':>9}   control c={a['control_scale']:g}: "
               f"{'gap':>7}{'mean z2':>9}")
    for i, n in enumerate(lc.n_models.values):
        r = lc.isel(n_models=i)
        click.echo(f"{int(n):>8}{float(r.rel_diff):>9.4f}{float(r.mean_z2):>9.2f}   "
                   f"{'':>12}{float(r.control_rel_diff):>7.4f}{float(r.control_mean_z2):>9.2f}")


@main.command()
@click.argument("store", type=click.Path(exists=True))
@click.option("--out", default="report.html", show_default=True, type=click.Path(),
              help="The HTML file to write (self-contained: open it in any browser).")
@click.option("--datamodels", type=click.Path(exists=True), default=None,
              help="Fitted datamodels (`dmdask fit --out`); fitted now if not given.")
@click.option("--evaluation", type=click.Path(exists=True), default=None,
              help="Saved `dmdask evaluate --out` of the datamodels (computed if not given).")
@click.option("--comparison", type=click.Path(exists=True), default=None,
              help="Saved `dmdask compare --out` (computed with the store estimators if not "
                   "given).")
@click.option("--sample-complexity", "complexity", type=click.Path(exists=True), default=None,
              help="Saved `dmdask sample-complexity --out` (computed if not given).")
@click.option("--fast", is_flag=True,
              help="Skip what is not given rather than computing it (comparison, curves).")
@click.option("--counterfactuals", "cf", type=click.Path(exists=True), default=None,
              help="Saved `dmdask counterfactual --out` (Figure 8).")
@click.option("--support", "sup", type=click.Path(exists=True), default=None,
              help="Saved `dmdask support --out` (Figure 7).")
@click.option("--mislabel", "mis", type=click.Path(exists=True), default=None,
              help="Saved `dmdask mislabel --out`.")
@click.option("--selection", "sel", type=click.Path(exists=True), default=None,
              help="Saved `dmdask select --out`.")
@click.option("--values", "values_path", type=click.Path(exists=True), default=None,
              help="Saved `dmdask values --out`: adds a data-values section.")
@click.option("--alpha-sim", "alpha_sim", type=click.Path(exists=True), default=None,
              help="Saved `dmdask alpha-sim --out`: adds the App. B figure.")
@click.option("--verification", type=click.Path(exists=True), default=None,
              help="Verdicts of `dmdask verify --json` (one per line) for a section.")
@click.option("--neighbors", "nn", type=click.Path(exists=True), default=None,
              help="Saved `dmdask neighbors --out`: image grids, datamodels beside the "
                   "representation.")
@click.option("--leakage", "leak", type=click.Path(exists=True), default=None,
              help="Saved `dmdask leakage --out`: candidates and recall curves.")
@click.option("--embeddings", "emb", type=click.Path(exists=True), default=None,
              help="Saved `dmdask embed --out`: spectrum and components.")
@click.option("--clusters", "clu", type=click.Path(exists=True), default=None,
              help="Saved `dmdask cluster --out`: purity and cluster grids.")
@click.option("--faithfulness", "faith", type=click.Path(exists=True), default=None,
              help="Saved `dmdask faithfulness --out`: component removal effects.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@_refusals
def report(store, out, datamodels, evaluation, comparison, complexity, fast, cf, sup, mis, sel,
           values_path, alpha_sim, verification, nn, leak, emb, clu, faith, progress):
    """Write one self-contained HTML report on STORE's datamodels.

    Predicted vs actual margins on held-out models, LDS and per-target correlation
    histograms, sample-complexity curves against the OPT noise floor, lambda-path
    validation curves, the estimator comparison table, for image jobs the training
    images with the largest positive and negative weights for a few targets, and the
    counterfactual analyses given (removal effects, data support, mislabelling, selection).
    """
    path = _report(store, out, datamodels=datamodels, evaluation=evaluation,
                   comparison=comparison, complexity=complexity, fast=fast, progress=progress,
                   counterfactuals=_load_result(cf), support=_load_result(sup),
                   mislabel=_load_result(mis), selection=_load_result(sel),
                   values=_load_result(values_path), alpha_sim=_load_result(alpha_sim),
                   verification=_load_verdicts(verification), neighbors=_load_result(nn),
                   leakage=_load_result(leak), embeddings=_load_result(emb),
                   clusters=_load_result(clu), faithfulness=_load_result(faith))
    click.echo(f"report    {path}")


def _report(store, out, *, datamodels=None, evaluation=None, comparison=None,
            complexity=None, fast=False, progress=False, echo=click.echo, **sections):
    import xarray as xr

    from ..analysis.evaluate import evaluation_runs
    from ..errors import InputError
    from ..report.page import write_report
    from ..store.runstore import open_store

    try:  # cheap, and before any fit: what needs held-out models is skipped, not crashed into
        evaluation_runs(open_store(store))
        heldout = True
    except InputError:
        heldout = False
        echo("          no completed held-out models: evaluation, comparison and sample "
             "complexity are left out of the report")
    if datamodels is None:
        from ..fit.datamodels import fit_datamodels

        echo("          fitting datamodels")
        dm = fit_datamodels(store, progress=progress)
    else:
        dm = xr.open_zarr(datamodels, consolidated=False).load()
    ev = _load_result(evaluation)
    if ev is None and heldout:
        from ..analysis.evaluate import evaluate as run_eval

        ev = run_eval(store, dm)
    cmp = _load_result(comparison)
    if cmp is None and heldout and not fast:
        from ..analysis.compare import compare as run_cmp
        from ..analysis.compare import default_rows

        echo("          comparing estimators")
        cmp = run_cmp(store, default_rows(store, include_model_based=False), datamodels=dm)
    sc = _load_result(complexity)
    if sc is None and heldout and not fast:
        from ..analysis.complexity import sample_complexity as run_sc

        echo("          sample-complexity curves")
        sc = run_sc(store)
    return write_report(out, store=store, datamodels=dm, evaluation=ev, comparison=cmp,
                        sample_complexity=sc, **sections)


@main.command()
@click.option("--dir", "workdir", type=click.Path(), default="dmdask-quickstart", show_default=True,
              help="Where the store and results go.")
@click.option("-n", "--n-models", type=int, default=5000, show_default=True,
              help="Random alpha = 0.5 models to train and fit on.")
@click.option("--heldout", type=int, default=200, show_default=True,
              help="Held-out alpha = 0.5 subsets for evaluation (never fitted on).")
@click.option("--replicates", type=int, default=3, show_default=True,
              help="Extra trainings of each held-out subset with new seeds (OPT noise floor, "
                   "replicate-averaged LDS).")
@click.option("--no-model-based", is_flag=True,
              help="Compare only the estimators computed from the store (skip TRAK, "
                   "influence functions, TracInCP, representation similarity).")
@click.option("--curves/--no-curves", default=True, show_default=True,
              help="Draw the sample-complexity curves (refits on nested prefixes of the "
                   "models; the slowest stage when prefixes have fewer models than there are "
                   "training examples).")
@click.option("--counterfactuals/--no-counterfactuals", default=True, show_default=True,
              help="Run small versions of the counterfactual analyses (removals, data "
                   "support, mislabelling, data selection), training their models.")
@click.option("--similarity/--no-similarity", default=True, show_default=True,
              help="Draw the datamodels' nearest neighbours, leakage candidates, principal "
                   "components and spectral clusters (beside the job's representation).")
@click.option("--workers", type=int, default=None, help="Local worker processes (default: one per core).")
@click.option("--job", default=DEFAULT_JOB, show_default=True, help="Job to run.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@_refusals
def quickstart(workdir, n_models, heldout, replicates, no_model_based, curves, counterfactuals,
               similarity, workers, job, progress):
    """Run the whole job end to end on the embedded default (digits MLP, local cluster, CPU).

    Creates DIR/runs.zarr with the random models to fit on, held-out models and their
    replicates; trains them on a LocalCluster; fits the datamodels; evaluates them on the
    held-out models; compares the estimators (the paper's Table 5); computes the
    sample-complexity curves; runs small counterfactual analyses (predicted vs actual removal
    effects, data support, mislabel brittleness, data selection); draws the datamodels'
    nearest neighbours, leakage candidates, principal components and spectral clusters; and
    writes DIR/report.html. Rerunning adds whatever models the store still lacks, resumes the
    training where it stopped and recomputes the rest.
    """
    from ..train import train as run

    os.makedirs(workdir, exist_ok=True)
    store = os.path.join(workdir, "runs.zarr")
    path = lambda name: os.path.join(workdir, name)  # noqa: E731
    click.echo(f"[1/8] run store {store} ({job}, {n_models} random + {heldout} held-out x "
               f"{1 + replicates} runs, alpha = 0.5)")
    _quickstart_store(store, job, n_models, heldout, replicates)
    rep = run(store, workers=workers, progress=progress,
              on_start=lambda d, t: click.echo(f"      training {t} models; dashboard: {d}"))
    if rep.models:
        click.echo(f"      trained {rep.models} models in {rep.wall_seconds:.1f} s "
                   f"({rep.models_per_second:.0f} models/s)")
    dm = _quickstart_fit(store, path("datamodels.zarr"), progress)
    if not heldout:
        click.echo("      no held-out models (--heldout 0): stopping after the fit")
        return
    from ..analysis.compare import compare, default_rows, format_table
    from ..analysis.complexity import sample_complexity
    from ..analysis.evaluate import evaluate

    click.echo(f"[3/8] evaluation on the held-out models -> {path('evaluation.zarr')}")
    ev = evaluate(store, dm)
    for line in _evaluation_summary(ev):
        click.echo("      " + line)
    _save_quiet(ev, path("evaluation.zarr"))
    rows = default_rows(store, include_model_based=not no_model_based)
    click.echo(f"[4/8] estimator comparison ({len(rows)} rows) -> {path('comparison.zarr')}")
    cmp = compare(store, rows, datamodels=dm, progress=False, on_row=lambda i, r, sec: (
        click.echo(f"      {r[0]} ({r[1]} models): {sec:.1f} s") if progress else None))
    for line in format_table(cmp, markdown=False).splitlines():
        click.echo("      " + line)
    _save_quiet(cmp, path("comparison.zarr"))
    sc = None
    if curves:
        click.echo(f"[5/8] sample complexity -> {path('sample_complexity.zarr')}")
        sc = sample_complexity(store, estimators=("lasso", "dom_margin"))
        last = sc.isel(n_models=-1)
        click.echo(f"      OPT {float(sc.opt):.4f}; lasso MSE "
                   + ", ".join(f"{int(n)}: {float(v):.4f}" for n, v in
                               zip(sc.n_models.values, sc.mse.sel(estimator="lasso").values,
                                   strict=True))
                   + f"; LDS at {int(last.n_models)}: "
                   f"{float(last.lds.sel(estimator='lasso')):.3f}")
        _save_quiet(sc, path("sample_complexity.zarr"))
    else:
        click.echo("[5/8] sample complexity skipped (--no-curves)")
    cfr = {}
    if counterfactuals:
        click.echo(f"[6/8] counterfactuals, data support, mislabelling, data selection -> "
                   f"{path('counterfactuals.zarr')}, ...")
        cfr = _quickstart_counterfactuals(store, path, dm, workers, progress)
    else:
        click.echo("[6/8] counterfactuals skipped (--no-counterfactuals)")
    if similarity:
        click.echo(f"[7/8] neighbours, leakage candidates, embeddings, clusters -> "
                   f"{path('neighbors.zarr')}, ...")
        cfr.update(_quickstart_similarity(store, path, dm, not no_model_based, progress))
    else:
        click.echo("[7/8] similarity skipped (--no-similarity)")
    from ..report.page import write_report

    out = write_report(path("report.html"), store=store, datamodels=dm, evaluation=ev,
                       comparison=cmp, sample_complexity=sc, **cfr)
    click.echo(f"[8/8] report {os.path.abspath(out)}")


def _quickstart_counterfactuals(store, path, dm, workers, progress) -> dict:
    """A small version of each counterfactual analysis on one local cluster; the Datasets by
    their report keyword."""
    import numpy as np

    from ..counterfactual import counterfactuals, select, support
    from ..errors import InputError
    from ..train import _client_for
    from .summaries import counterfactual_summary, support_summary

    client, cluster = _client_for(None, workers, None)
    out = {}
    try:
        n_train = dm.sizes["train"]
        small = [k for k in (10, 40, 160) if k <= n_train // 2] or [max(1, n_train // 4)]
        opts = dict(targets=min(10, dm.sizes["target"]), runs=3, client=client,
                    progress=progress)
        cf = counterfactuals(store, dm, k=small, **opts)
        out["counterfactuals"] = cf
        for line in counterfactual_summary(cf):
            click.echo("      " + line)
        for key, mode in (("support", "remove"), ("mislabel", "relabel")):
            try:
                s = support(store, dm, mode=mode, **opts)
            except InputError as e:  # e.g. a job without train_logits: say so, go on
                click.echo(f"      {key} skipped: {e}")
                continue
            out[key] = s
            for line in support_summary(s):
                click.echo("      " + line)
        # the hardest class (lowest mean datamodel bias) leaves room to improve
        lab = np.asarray(dm["target_label"].values)
        bias = np.asarray(dm["bias"].values, np.float64)
        classes, counts = np.unique(lab, return_counts=True)
        big = classes[counts >= 4]  # two halves of at least two targets
        if big.size == 0:
            click.echo("      selection skipped: no class has 4 targets with datamodels")
            return _quickstart_save(out, path)
        hard = int(min(big, key=lambda c: bias[lab == c].mean()))
        ks = [k for k in (50, 200, 800) if k < n_train] or [max(1, n_train // 4)]
        sel = select(store, dm, target_class=hard, k=ks, runs=3, client=client,
                     progress=progress)
        out["selection"] = sel
        acc = sel.accuracy.isel(k=len(ks) // 2)
        click.echo(f"      selection at k = {int(acc.k)} (accuracy on held-apart class-"
                   f"{hard} targets): " + ", ".join(
                       f"{m} {float(acc.sel({'method': m})):.3f}" for m in sel.method.values))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return _quickstart_save(out, path)


def _quickstart_similarity(store, path, dm, representation: bool, progress: bool) -> dict:
    """Neighbours, leakage candidates, PCA and spectral clusters of the datamodels, beside the
    job's penultimate-layer representation where it has one; the Datasets by report keyword."""
    import numpy as np

    from ..errors import InputError, JobError
    from ..similarity import cluster, leakage, neighbors, pca

    rep = {"store": store, "representation": representation}
    try:
        nn = neighbors(dm, 10, **rep)
    except (InputError, JobError) as e:  # a job without a penultimate layer: datamodels alone
        click.echo(f"      representation baseline skipped: {e}")
        rep["representation"] = False
        nn = neighbors(dm, 10, **rep)
    tl = nn.target_label.values[:, None] if "target_label" in nn.coords else None
    if tl is not None:
        shares = [f"{name} {float((nn[f'{name}_label'].values == tl)[nn[name].values >= 0].mean()):.3f}"
                  for name in ("positive", "negative", "nearest") if f"{name}_label" in nn]
        click.echo("      neighbours sharing the target's label: " + ", ".join(shares))
    leak = leakage(store, dm, 10, representation=rep["representation"])
    top = leak.isel(pair=0)
    click.echo(f"      top leakage candidate: target {int(top.pair_target)} with training "
               f"example {int(top.pair_candidate)} (score {float(top.pair_score):.3f})")
    n_fit = dm.sizes["target"]
    emb = pca(dm, max(1, min(50, n_fit // 2)), progress=False, **rep)
    a = emb.attrs
    click.echo(f"      {emb.sizes['component']} principal components explain "
               f"{float(emb.explained_variance_ratio.sum()):.3f} of the embeddings' variance "
               f"(participation ratio {a['participation_ratio']:.1f})")
    labels = np.unique(np.asarray(dm["target_label"].values)) if "target_label" in dm.coords \
        else np.arange(8)
    clu = cluster(dm, int(min(len(labels), max(2, n_fit // 4))), **rep)
    line = f"      {clu.attrs['n_clusters']} spectral clusters"
    if "purity_overall" in clu.attrs:
        line += f", label purity {clu.attrs['purity_overall']:.3f}"
    if "representation_purity_overall" in clu.attrs:
        line += f" (representation {clu.attrs['representation_purity_overall']:.3f})"
    click.echo(line)
    return _quickstart_save({"neighbors": nn, "leakage": leak, "embeddings": emb,
                             "clusters": clu}, path)


def _quickstart_save(out: dict, path) -> dict:
    for key, ds in out.items():
        _save_quiet(ds, path(f"{key}.zarr"))
    return out


def _quickstart_store(store: str, job: str, n_models: int, heldout: int,
                      replicates: int) -> dict[str, int]:
    """Make ``store`` hold what the quickstart asks for, adding only what it lacks; return the
    number of models added per kind.

    Each step looks at what the store holds rather than at what an earlier run meant to do,
    so a rerun after an interruption anywhere (each addition is committed whole or not at
    all) finishes the store: ``n_models`` random models, at least ``heldout`` held-out models,
    and ``replicates`` replicates of every held-out model.
    """
    from collections import Counter

    from ..store.runstore import add_models, create_store, open_store

    create_store(store, job, n_models, 0.5)  # finishes an interrupted creation
    ds = open_store(store)
    kinds = ds.kind.values
    held = [int(i) for i in ds.model.values[kinds == "heldout"]]
    added = {}
    if len(held) < heldout:
        new = add_models(store, "heldout", n=heldout - len(held))
        held += [int(i) for i in new]
        added["heldout"] = len(new)
    if replicates and held:
        have = Counter(int(r) for r in ds.replicate_of.values[kinds == "replicate"])
        missing = [h for h in held for _ in range(replicates - have.get(h, 0))]
        if missing:
            added["replicate"] = len(add_models(store, "replicate", replicate_of=missing))
    return added


def _save_quiet(ds, out):
    from ..outputs import write_zarr

    write_zarr(ds, out)


def _quickstart_fit(store: str, out: str, progress: bool):
    from ..fit.datamodels import fit_datamodels, save_datamodels

    click.echo(f"[2/8] datamodels {out}")
    dm = fit_datamodels(store, progress=progress)
    save_datamodels(dm, out, overwrite=True)
    for line in _fit_summary(dm):
        click.echo("      " + line)
    return dm


@main.command()
@click.argument("store", type=click.Path(exists=True))
@click.option("--method", type=click.Choice(["banzhaf", "shapley", "beta"]), default="banzhaf",
              show_default=True, help="Semivalue: Data Banzhaf (MSR), Data Shapley or "
                                      "Beta-Shapley, from the store's runs (docs/values.md).")
@click.option("--utility", default=None, metavar="NAME[@TARGETS]",
              help="Scalar utility: mean_margin or accuracy, over TARGETS (0,5,9 or 0-99 or "
                   "label=K; default all); then value(train). Default: each target's own "
                   "margin, value(train, target).")
@click.option("--a", "beta_a", type=float, default=1.0, show_default=True,
              help="beta: Beta(a, b) on q (Kwon & Zou's Beta(alpha, beta) is a=beta, b=alpha).")
@click.option("--b", "beta_b", type=float, default=1.0, show_default=True, help="beta: see --a.")
@click.option("--alpha", type=float, default=0.5, show_default=True,
              help="banzhaf: where the point mass sits (0.5: Banzhaf; another α: the "
                   "semivalue a single-α datamodel estimates).")
@click.option("--nodes", type=int, default=None,
              help="shapley/beta: Gauss quadrature nodes over α (default 5).")
@click.option("--runs", type=int, default=None,
              help="Runs per node (default: as many as the store's fitting models); missing "
                   "runs are added and trained.")
@click.option("--workers", type=int, default=None, help="Workers of the training cluster.")
@click.option("--out", type=click.Path(), default=None, help="Save the values (Zarr, or .nc).")
@click.option("--progress/--no-progress", default=True, show_default=True)
@_refusals
def values(store, method, utility, beta_a, beta_b, alpha, nodes, runs, workers, out, progress):
    """Data values of the training examples from the run store's subset runs: Banzhaf,
    Shapley or Beta-Shapley, with standard errors and the number of utility evaluations
    (runs) used; runs the method needs and the store lacks are trained first."""
    import numpy as np

    from ..values.api import values as compute_values

    v = compute_values(store, method, utility, a=beta_a, b=beta_b, alpha=alpha, nodes=nodes,
                       runs=runs, workers=workers, progress=progress,
                       say=(lambda m: click.echo(m, err=True)) if progress else None)
    a = v.attrs
    val, se = v["value"].values, v["value_se"].values
    click.echo(f"{a['method']} values, utility {a['utility']}: {'x'.join(map(str, val.shape))} "
               f"({', '.join(v['value'].dims)}); {a['n_evaluations']} utility evaluations "
               f"(runs) at {v.sizes['node']} α node(s), {a['n_trained_now']} trained now; "
               f"sampling {a['sampling']}")
    flat = val if val.ndim == 1 else val.mean(1)
    top = np.argsort(-flat)[:5]
    click.echo("top training examples: " + ", ".join(
        f"{int(i)} ({flat[i]:.4g})" for i in top))
    click.echo(f"median standard error {np.nanmedian(se):.3g}")
    _save_result(v, out)


@main.command("alpha-sim")
@click.option("-n", "n_train", type=int, default=500, show_default=True,
              help="Training points (an equally sized held-out set is drawn).")
@click.option("-d", "n_features", type=int, default=1000, show_default=True,
              help="Bernoulli features (d > n: the learner is underdetermined).")
@click.option("--levels", type=int, default=8, show_default=True,
              help="Log-spaced frequency levels in [0.005, 0.5].")
@click.option("--alpha", "alphas", type=float, multiple=True,
              help="Subsampling fractions (repeatable; default 0.1 0.2 0.5 0.75 0.9).")
@click.option("--runs-per-n", type=float, default=20.0, show_default=True,
              help="Datamodel runs per α, as a multiple of n (the paper's m = 20n).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(), default=None, help="Save the result (Zarr, or .nc).")
@click.option("--progress/--no-progress", default=True, show_default=True)
@_refusals
def alpha_sim(n_train, n_features, levels, alphas, runs_per_n, seed, out, progress):
    """The paper's App. B simulation (Fig. 16): how well OLS datamodels at each α predict the
    effect of removing a feature's subpopulation, by the feature's frequency."""
    from ..values.alpha_sim import alpha_simulation

    def tick(a, sec):
        if progress:
            click.echo(f"alpha {a:g} done ({sec:.0f} s)", err=True)

    r = alpha_simulation(n=n_train, d=n_features, levels=levels,
                         alphas=alphas or (0.1, 0.2, 0.5, 0.75, 0.9), m_per_n=runs_per_n,
                         seed=seed, on_alpha=tick)
    al = r["alpha"].values
    click.echo("frequency " + "".join(f"{f'a={x:g}':>9}" for x in al) + "   best a")
    for k, p in enumerate(r["frequency"].values):
        click.echo(f"{p:<10.4g}" + "".join(f"{c:>9.3f}" for c in r["corr"].values[k])
                   + f"{r['best_alpha'].values[k]:>9g}")
    _save_result(r, out)



@main.command()
@click.argument("store", type=click.Path(exists=True))
@click.option("--method", type=click.Choice(["exact", "newton", "retrain"]), default="newton",
              show_default=True,
              help="exact: Sherman–Morrison (least-squares jobs); newton: one Newton step with "
                   "leverage (cross-entropy jobs with the model hooks); retrain: train the "
                   "N + 1 sets through the store (any job).")
@click.option("--runs", type=int, default=1, show_default=True,
              help="newton: full-data models averaged; retrain: runs of each set.")
@click.option("--targets", default=None, metavar="0,5,9|0-99|label=K",
              help="Targets to attribute (default all).")
@click.option("--workers", type=int, default=None, help="retrain: workers of the cluster.")
@click.option("--out", type=click.Path(), default=None,
              help="Save the effects as a score Dataset (Zarr, or .nc); `dmdask evaluate` "
                   "reads it.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@_refusals
def loo(store, method, runs, targets, workers, out, progress):
    """Leave-one-out effects f(x; D) − f(x; D∖i) of every training example on the targets'
    margins: exact, by one Newton step, or by retraining (docs/values.md)."""
    import numpy as np

    from ..analysis.estimators import compute
    from ..store.runstore import open_store
    from ..values.utility import parse_utility

    ds = open_store(store)
    tpos = None
    if targets:
        labels = ds["target_label"].values if "target_label" in ds.variables else None
        tpos = parse_utility(f"output@{targets}", ds.sizes["target"], labels).targets
    kw = {"workers": workers, "progress": progress} if method == "retrain" else {}
    sc = compute(ds, f"loo_{method}", n_models=runs, targets=tpos, **kw)
    a = sc.attrs
    v = sc.values
    click.echo(f"loo_{method}: {v.shape[0]} targets x {v.shape[1]} training examples; "
               f"{a.get('n_trainings')} trainings used"
               + (f", {a['n_trained_now']} trained now" if "n_trained_now" in a else "")
               + f"; {a.get('seconds', float('nan')):.1f} s")
    mean = np.nanmean(v, 0)
    top = np.argsort(-mean)[:5]
    click.echo("largest mean effects: " + ", ".join(f"{int(i)} ({mean[i]:.4g})" for i in top))
    _save_result(sc.to_dataset(), out)


# --------------------------------------------------------------------------- verify (issue 19)


def _parse_targets(spec: str | None):
    """``"3"``, ``"0:10"`` or ``"1,4,9"`` -> indices (None: the scores' own)."""
    if not spec:
        return None
    import numpy as np

    try:
        if ":" in spec:
            a, b = spec.split(":", 1)
            return np.arange(int(a or 0), int(b))
        return np.array([int(t) for t in spec.split(",")])
    except ValueError:
        raise DmdaskError(f"--targets must be N, START:STOP or N,N,..., got {spec!r}") from None


@main.command()
@click.option("--store", required=True, type=click.Path(exists=True),
              help="Run store of the job whose attributions are verified (its job trains the "
                   "verifier's models).")
@click.option("--scores", required=True, type=click.Path(),
              help="Claimed scores: a .npy [N] or [targets, N] (datamodel weights: "
                   "prediction = intercept + scores . mask) or a datamodels result (its weight).")
@click.option("--epsilon", type=float, required=True,
              help="Tolerated excess MSE over the best linear attribution (margin² units).")
@click.option("--delta", type=float, required=True, help="Failure probability, in (0, 1).")
@click.option("--protocol", type=click.Choice(["interactive", "non-interactive"]),
              default="interactive", show_default=True,
              help="interactive: Algorithm 1 (dmdask trains the challenge as the prover, the "
                   "verifier spot-checks it: O(1/ε²) verifier trainings); non-interactive: "
                   "the verifier trains everything itself (O(1/ε³)).")
@click.option("--targets", default=None, metavar="N|START:STOP|N,N,...",
              help="Store targets the score rows are for (default: the datamodels' targets, "
                   "or all the store's).")
@click.option("--bound", type=float, default=None,
              help="Output scale b_f (default: 2 standard deviations of the store's margins).")
@click.option("--scale", type=float, default=1.0, show_default=True,
              help="Multiply the scores first (0.5: the a*/2 attack on the naive check).")
@click.option("--atol", type=float, default=0.0, show_default=True,
              help="CHECKEQUIV tolerance on spot-checked margins (0: bitwise).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="The verifier's randomness; rerun with the same seed to resume.")
@click.option("--workdir", type=click.Path(), default=None,
              help="Where the verifier's and the challenge's stores go (default STORE.verify).")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Train on a running cluster (tcp://host:port).")
@click.option("--workers", type=int, default=None, help="Local cluster: worker processes.")
@click.option("--trust-job", "trust_job", multiple=True, metavar="MODULE",
              help="Trust job module MODULE on this machine (as for `dmdask train`).")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
@_refusals
def verify(store, scores, epsilon, delta, protocol, targets, bound, scale, atol, seed, workdir,
           scheduler, workers, trust_job, progress, as_json):
    """Verify claimed attribution scores against the best linear attribution (KPN protocols).

    Prints accept or abort, the estimated optimal error B_≥2 and gap per target, and the
    trainings each side spent. All models are `verify` models of run stores under --workdir,
    trained by the store's job on the cluster; rerun after an interruption to resume.
    """
    from ..store.runstore import read_meta
    from ..verify.protocols import check_tolerances
    from ..verify.training import load_scores, verify_store

    check_tolerances(epsilon, delta)
    meta = read_meta(store)
    a, dm_targets = load_scores(scores, int(meta["n_train"]))
    tsel = _parse_targets(targets)
    tsel = dm_targets if tsel is None else tsel
    opts = {"scheduler": scheduler, "workers": workers, "progress": progress,
            "trust_job": trust_job}
    if not as_json:
        click.echo(f"verifying {a.shape[0]} target(s) of {store} ({protocol}, ε={epsilon:g}, "
                   f"δ={delta:g})", err=True)
    v = verify_store(store, a * scale, epsilon, delta, protocol=protocol, targets=tsel,
                     bound=bound, workdir=workdir, seed=seed, atol=atol, train_options=opts)
    if as_json:
        click.echo(json.dumps(v.to_dict(), default=float))
        return
    p = v.plan
    click.echo(f"decision            {'accept' if v.accepted else 'abort'} ({v.reason})")
    for t, m, b, g in zip(v.extra["targets"], v.mse_hat, v.b_ge2_hat, v.gap_hat, strict=True):
        click.echo(f"target {t:<6}       mse_hat {m:.4g}  B_>=2 (opt. error) {b:.4g}  "
                   f"gap {g:.4g}  (accept iff gap <= {p.threshold:.4g})")
    click.echo(f"verifier trainings  {v.verifier_trainings} ({v.extra['verifier_trained_now']} "
               f"trained now); inferences {v.verifier_inferences}")
    click.echo(f"prover trainings    {v.prover_trainings}")
    click.echo(f"plan                bound {p.bound:.4g}, rho {p.rho:.3g}, |E| {p.n_challenge}, "
               f"|C| {p.n_checks}, |M| {p.n_mse}, m* {p.m_star:.1f}")


def _load_verdicts(path: str | None):
    """Verdicts written by `dmdask verify --json` (one JSON object per line)."""
    if not path:
        return None
    out = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DmdaskError(f"{path}:{i}: not a verdict of `dmdask verify --json` "
                                      f"({e.msg})") from None
    return out


def _refuse_out_over_input(out: str | None, *inputs: str | None) -> None:
    """Refuse an ``--out`` that names one of the command's inputs: ``_save_result``
    overwrites, and would replace the datamodels or run store the result came from."""
    if not out:
        return
    o = os.path.realpath(out)
    for p in inputs:
        if p and os.path.realpath(p) == o:
            raise DmdaskError(f"--out {out} is the input {p}: refusing to overwrite it; "
                              "choose another path for the result")
