"""Datamodel embeddings (REFERENCE.md §4): each target's weight vector e(x) = w(x) ∈ R^N,
normalised to unit L2 norm, ê = e/‖e‖₂, as a lazy Dask array (target, train).

One pass over the weights computes the row norms and finds NaN: a target with a NaN weight is
an error naming it (a fit never writes one; a hand-made Dataset might), an all-zero target has
no direction and is excluded and counted. Nothing is materialised: the result is the weight
array divided by its norms, chunked as the input (both axes), on the configured backend.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import xarray as xr

from ..errors import InputError

__all__ = ["Embeddings", "embeddings", "open_datamodels"]


def open_input(obj, what: str) -> xr.Dataset:
    """``obj`` if a Dataset, else the Zarr store at that path opened lazily; a missing path
    is an :class:`InputError` naming ``what`` it should hold."""
    if isinstance(obj, xr.Dataset):
        return obj
    p = os.fspath(obj)
    if not os.path.exists(p):
        raise InputError(f"{p}: no such {what} store")
    return xr.open_zarr(p)


def open_datamodels(datamodels) -> xr.Dataset:
    """A datamodels Dataset (opened lazily from a Zarr path) with a ``weight(target, train)``."""
    datamodels = open_input(datamodels, "datamodels")
    if "weight" not in datamodels:
        raise InputError("the datamodels Dataset has no weight variable (fit it with `dmdask fit`)")
    return datamodels


@dataclass
class Embeddings:
    """Normalised datamodel embeddings of the kept targets."""

    data: object  # dask array (kept target, train), unit rows
    targets: np.ndarray  # target coordinate values of the kept rows
    kept: np.ndarray  # bool per input target: False for all-zero rows
    n_zero: int  # all-zero targets excluded
    datamodels: xr.Dataset

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.data.shape)


def embeddings(datamodels, *, normalise: bool = True, chunks: tuple[int, int] | None = None
               ) -> Embeddings:
    """The targets' datamodel weights as embeddings, unit-normalised (``normalise=False``: raw
    weights), all-zero targets excluded and counted. ``chunks``: rechunk (rows, columns) first."""
    import dask.array as da

    from ..backend import dask_to_backend, to_numpy
    from ..scheduling import compute

    dm = open_datamodels(datamodels)
    w = dm["weight"].transpose("target", "train").data
    if not isinstance(w, da.Array):
        w = da.from_array(np.asarray(w), chunks=(1024, 4096))
    if chunks is not None:
        w = w.rechunk(chunks)
    w = dask_to_backend(w if np.issubdtype(w.dtype, np.floating) else w.astype(np.float32))
    sq = (w.astype(np.float64) ** 2).sum(axis=1)
    nan = da.isnan(w).any(axis=1)
    sq, nan = (to_numpy(x) for x in compute([sq, nan]))
    targets = np.asarray(dm["target"].values)
    if nan.any():
        bad = targets[nan]
        more = f" and {bad.size - 5} more" if bad.size > 5 else ""
        raise InputError(f"NaN weights in the datamodels of targets {bad[:5].tolist()}{more}: "
                         "refit them (dmdask fit) or drop them before embedding")
    kept = sq > 0
    if not kept.any():
        raise InputError("every datamodel is all zero: nothing to embed (fit with a smaller "
                         "lambda, or check the store's margins)")
    idx = np.flatnonzero(kept)
    e = w if kept.all() else w[idx]
    if normalise:
        norm = np.sqrt(sq[kept]).astype(e.dtype)
        norm = da.from_array(norm, chunks=(e.chunks[0],))
        e = e / dask_to_backend(norm)[:, None]
    return Embeddings(data=e, targets=targets[kept], kept=kept, n_zero=int((~kept).sum()),
                      datamodels=dm)
