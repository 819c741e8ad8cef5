"""``dmdask import-datamodels`` (MadryLab's released datamodels in) and ``dmdask
export-scores`` (attributions out as TRAK's scores memmap or dattri's tensor)."""

from __future__ import annotations

import click

from .commands import _refusals, main


@main.command("import-datamodels")
@click.argument("released", type=click.Path(exists=True))
@click.option("--store", required=True, type=click.Path(exists=True),
              help="The run store of the masks and margins the datamodels were fitted on "
                   "(e.g. made by `dmdask import ... --heldout-rows N`).")
@click.option("--out", required=True, type=click.Path(),
              help="Where to write the datamodels Dataset (Zarr).")
@click.option("--space", type=click.Choice(["auto", "raw", "standardised"]), default="auto",
              show_default=True,
              help="The space of the released weights: auto detects it on the store's "
                   "held-out models and refuses when unclear.")
@click.option("--target-start", type=int, default=0, show_default=True,
              help="The store target of the file's first column (compute_datamodels.py's "
                   "target_start_ind).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
@_refusals
def import_datamodels_(released, store, out, space, target_start, overwrite):
    """Import MadryLab's released datamodels (RELEASED: a datamodels.pt with weight
    [n_train, n_targets], bias, lam, or fast_l1's output directory holding it) as a
    dmdask datamodels Dataset in raw-mask space, usable by evaluate, compare, report, …
    """
    from ..fit.released import import_datamodels

    dm = import_datamodels(released, store, space=space, target_start=target_start, out=out,
                           overwrite=overwrite)
    a = dm.attrs
    line = f"space     {a['imported_space']}"
    if space == "auto" and "space_p_value" in a:
        line += (f" (held-out MSE raw {a['space_mse_raw']:.4g}, standardised "
                 f"{a['space_mse_standardised']:.4g}; standardised better on "
                 f"{a['space_targets_standardised_better']} targets, raw on "
                 f"{a['space_targets_raw_better']}; sign test p = {a['space_p_value']:.2g})")
    click.echo(line)
    click.echo(f"{dm.sizes['target']} targets × {dm.sizes['train']} training examples")
    click.echo(f"saved     {out}")


@main.command("export-scores")
@click.argument("result", type=click.Path(exists=True))
@click.option("--format", "fmt", type=click.Choice(["trak", "dattri"]), required=True,
              help="trak: <OUT>/scores/<experiment>.mmap + experiments.json (or OUT itself "
                   "if it ends in .mmap), float32 [n_train, n_targets]; dattri: a train × "
                   "test tensor, OUT ending in .pt or .npy.")
@click.option("--out", required=True, type=click.Path(), help="TRAK save_dir or file.")
@click.option("--experiment", default="dmdask", show_default=True,
              help="TRAK experiment name.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "float64"]),
              default="float32", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing file.")
@_refusals
def export_scores_(result, fmt, out, experiment, dtype, overwrite):
    """Write RESULT (a datamodels Zarr from `dmdask fit`/`import-datamodels`, or any score
    Zarr/.npy of shape [targets, train]) in TRAK's or dattri's layout."""
    from ..analysis.export_scores import export_scores

    path = export_scores(result, out, format=fmt, experiment=experiment, overwrite=overwrite,
                         dtype=dtype)
    click.echo(f"saved     {path}")
