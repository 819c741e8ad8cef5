"""Attribution scores out, in the layouts other tools read.

* ``format="trak"``: TRAK's (traker 0.3) ``<save_dir>/scores/<experiment>.mmap``, an ``.npy``
  file made with ``numpy.lib.format.open_memmap``, ``[n_train, n_targets]`` (train examples
  down, targets across, as ``TRAKer.finalize_scores`` writes and its saver reads; float32 by
  default, TRAKer's default ``use_half_precision=True`` writes float16: ``dtype``), and
  ``<save_dir>/experiments.json`` with ``{experiment: {"num_targets", "scores_path",
  "scores_finalized": 1}}`` (other experiments there are kept). A path ending in ``.mmap`` is
  written as that one file, without ``experiments.json``.
* ``format="dattri"``: a ``[n_train, n_test]`` tensor, train × test, the layout of dattri's
  attributors and of its ``lds(score, ground_truth)``: ``.pt`` (``torch.save`` of a tensor)
  or ``.npy``, float32 by default.

The sign is dmdask's, TRAK's and dattri's: a positive score means the training example's
presence raises the target's output. Columns are the Dataset's targets in its order. The TRAK
memmap is filled from a datamodels Dataset (or Zarr) one block of targets at a time, so the
weight matrix is never whole in memory; dattri's tensor is built whole (``torch.save`` needs it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..errors import InputError

__all__ = ["FORMATS", "export_scores"]

FORMATS = ("trak", "dattri")
_BLOCK = 256  # targets per copy: 256 × n_train float64 at a time


def _score_array(obj: Any) -> xr.DataArray:
    """The (lazy where possible) ``(target, train)`` DataArray of an attribution."""
    from .scores import load_scores

    if isinstance(obj, (str, os.PathLike)) and Path(obj).is_dir() and not (
            Path(obj) / "scores").is_dir():
        try:
            obj = xr.open_zarr(os.fspath(obj), consolidated=False)
        except Exception:
            pass  # a bare Zarr array: load_scores reads it
    if isinstance(obj, xr.Dataset):
        name = "weight" if "weight" in obj else "score" if "score" in obj else None
        if name is None:
            raise InputError(f"Dataset has no 'weight' or 'score' variable (variables: "
                             f"{list(obj.data_vars)})")
        da = obj[name]
        if set(da.dims) != {"target", "train"}:
            raise InputError(f"'{name}' has dims {da.dims}, expected (target, train)")
        return da.transpose("target", "train")
    if isinstance(obj, xr.DataArray) and set(obj.dims) == {"target", "train"}:
        return obj.transpose("target", "train")
    # TRAK's memmaps (a .mmap or a save dir) are [n_train, n_targets]; the other arrays and
    # .npy files taken here are [n_target, n_train]
    trak = isinstance(obj, (str, os.PathLike)) and (
        Path(obj).suffix == ".mmap" or (Path(obj) / "scores").is_dir())
    return load_scores(obj, layout="train_target" if trak else "target_train")


def _refuse_existing(p: Path, overwrite: bool) -> None:
    if p.exists() and not overwrite:
        raise InputError(f"{p}: already exists; refusing to overwrite it (pass overwrite=True "
                         "/ --overwrite)")


def _copy_blocks(da: xr.DataArray, out: np.ndarray) -> None:
    """``out[train, target] = da[target, train]``, one block of targets at a time."""
    n_t = da.sizes["target"]
    for s in range(0, n_t, _BLOCK):
        blk = np.asarray(da.isel(target=slice(s, s + _BLOCK)).values, np.float64)
        if not np.isfinite(blk).all():
            bad = s + int(np.flatnonzero(~np.isfinite(blk).all(axis=1))[0])
            raise InputError(f"scores of target position {bad} hold NaN or inf; fill or drop "
                             "them before exporting")
        out[:, s:s + blk.shape[0]] = blk.T


def export_scores(scores: Any, path: str | os.PathLike, *, format: str = "trak",
                  experiment: str = "dmdask", overwrite: bool = False,
                  dtype: str = "float32") -> str:
    """Write an attribution (a datamodels Dataset or its Zarr path, a score Dataset or
    DataArray, a ``[n_target, n_train]`` array or ``.npy``, a TRAK ``.mmap``) as TRAK's
    scores memmap or dattri's tensor (see the module docstring); return the file written. Refuses an existing file unless
    ``overwrite``; writes to a temporary file renamed into place."""
    if format not in FORMATS:
        raise InputError(f"format must be one of {', '.join(FORMATS)}, not {format!r}")
    dt = np.dtype(dtype)
    if dt.kind != "f":
        raise InputError(f"dtype must be a float type, got {dtype!r}")
    da = _score_array(scores)
    n_target, n_train = da.sizes["target"], da.sizes["train"]
    p = Path(path)
    if format == "trak":
        if not experiment or "/" in experiment or experiment.startswith("."):
            raise InputError(f"experiment must be a plain name, got {experiment!r}")
        single = p.suffix == ".mmap"
        target = p if single else p / "scores" / f"{experiment}.mmap"
        _refuse_existing(target, overwrite)
        exp_file = p / "experiments.json"
        exps = {} if single else _experiments(exp_file)  # refused before anything is written
        made = _missing_dirs(target.parent)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + f".writing-{os.getpid()}")
        try:
            mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=dt, shape=(n_train, n_target))
            _copy_blocks(da, mm)
            mm.flush()
            del mm
            os.replace(tmp, target)
        except BaseException:
            if tmp.exists():
                tmp.unlink()
            for d in made:  # the folders this call made, innermost first, if still empty
                if d.is_dir() and not any(d.iterdir()):
                    d.rmdir()
            raise
        finally:
            if tmp.exists():
                tmp.unlink()
        if not single:
            exps[experiment] = {"num_targets": int(n_target), "scores_path": str(target),
                                "scores_finalized": 1}
            exp_file.write_text(json.dumps(exps))
        return str(target)
    if p.suffix not in (".pt", ".npy"):
        raise InputError(f"{p}: dattri's tensor is written as .pt (torch) or .npy; name the "
                         "file with one of those suffixes")
    _refuse_existing(p, overwrite)
    p.parent.mkdir(parents=True, exist_ok=True)
    out = np.empty((n_train, n_target), dt)
    _copy_blocks(da, out)
    tmp = p.with_name(p.name + f".writing-{os.getpid()}")
    try:
        if p.suffix == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, out)
        else:
            from .. import optional

            torch = optional.torch()
            torch.save(torch.from_numpy(out), tmp)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return str(p)


def _experiments(path: Path) -> dict:
    """TRAK's ``experiments.json`` (empty when absent); refuses one that is not a JSON object."""
    if not path.exists():
        return {}
    try:
        exps = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not readable as TRAK's experiments.json ({e})") from None
    if not isinstance(exps, dict):
        raise InputError(f"{path}: not TRAK's experiments.json (a JSON object of experiments)")
    return exps


def _missing_dirs(d: Path) -> list[Path]:
    """``d`` and its ancestors that do not exist yet, innermost first."""
    out = []
    while not d.exists() and d != d.parent:
        out.append(d)
        d = d.parent
    return out
