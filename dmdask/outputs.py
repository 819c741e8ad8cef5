"""Outputs that open anywhere: attributes every netCDF and Zarr writer accepts, and Zarr
stores that ``xr.open_zarr(path)`` opens without a warning.

Datasets dmdask returns (datamodels, evaluation, comparison, sample complexity) carry their
provenance in ``attrs``. netCDF accepts only numbers, strings and flat lists of numbers there
(netCDF-3, which scipy writes, not even lists of strings), so :func:`portable_attrs` keeps
those as they are and encodes the rest once, where the Dataset is built: a mapping or nested
list as a JSON string (``json.loads`` gives it back), a list of whitespace-free names as one
space-separated string (the CF ``flag_meanings`` convention; ``str.split`` gives it back),
and ``None`` by leaving the key out (``attrs.get`` still gives None).

:func:`write_zarr` writes consolidated metadata: without it ``xr.open_zarr`` falls back to
reading every array's metadata and warns that it did.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["portable_attrs", "write_zarr"]


def _is_number(v: Any) -> bool:
    return isinstance(v, (bool, int, float, np.bool_, np.integer, np.floating))


def _portable(v: Any) -> Any:
    if isinstance(v, (str, np.str_)):
        return str(v)
    if _is_number(v):
        return v.item() if isinstance(v, np.generic) else v
    if isinstance(v, np.ndarray) and v.ndim <= 1 and v.dtype.kind in "biuf":
        return v
    if isinstance(v, (list, tuple, np.ndarray)):
        items = list(np.asarray(v).tolist()) if isinstance(v, np.ndarray) else list(v)
        if all(_is_number(x) for x in items) and not any(isinstance(x, bool) for x in items):
            return [x.item() if isinstance(x, np.generic) else x for x in items]
        if items and all(isinstance(x, str) and x and not any(c.isspace() for c in x)
                         for x in items):
            return " ".join(items)
    return json.dumps(v, sort_keys=True, default=_json_default)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def portable_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """``attrs`` with every value one that netCDF-3/4 and Zarr writers accept (see the
    module docstring for the encodings); ``None`` values are left out."""
    return {str(k): _portable(v) for k, v in attrs.items() if v is not None}


def write_zarr(ds: xr.Dataset, path: str | os.PathLike, *, overwrite: bool = True) -> str:
    """Write ``ds`` as a Zarr store that ``xr.open_zarr(path)`` opens without a warning."""
    path = os.fspath(path)
    ds = ds.copy()
    ds.attrs = portable_attrs(ds.attrs)
    for v in ds.variables.values():
        v.attrs = portable_attrs(v.attrs)
    with warnings.catch_warnings():
        # zarr 3 notes that consolidated metadata is not yet in the v3 spec; xarray reads it,
        # and without it every xr.open_zarr warns instead
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        ds.to_zarr(path, mode="w" if overwrite else "w-", consolidated=True)
    return path
