"""The datamodels output written block by block: a Zarr store that a fit fills one block of
targets at a time, so the whole ``weight(target, train)`` matrix is never in memory and a
killed fit resumes with the blocks already written.

Write protocol (the run store's, :mod:`dmdask.store.runstore`):

* **Creation** builds the empty store (every variable, coordinate and attribute; arrays
  chunked by ``block`` targets) beside the path and renames it into place: a killed creation
  leaves nothing at the path.
* **A block** is one chunk along ``target`` of every per-target variable. Its data are
  written as whole chunks, then its commit mark ``block_done[b]`` (one chunk of its own),
  last. Local chunk writes are atomic (zarr ≥ 3.1.3 writes a temporary file and renames
  it): a killed writer leaves the block uncommitted, and the next fit writes it again whole.
* **The request** (the fit's options, the store's fingerprint, the models and the targets:
  :func:`dmdask.fit.blockwise.fit_request`) is stored in ``attrs['fit_request']``; a rerun on
  the same output with another request is refused with an error naming each difference.
* **Finish**: once every block is committed, the attributes known only at the end
  (``seconds``, ``solvers_used``) are set and the metadata consolidated; :func:`open_fit`
  refuses an output whose blocks are not all committed.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import numpy as np
import xarray as xr

from ..errors import InputError
from ..outputs import portable_attrs

__all__ = ["FitOutput", "open_fit", "request_differences"]

_DONE = "block_done"


def request_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old → new`` for each entry where two fit requests differ."""
    out = []
    for k in sorted(set(old) | set(new)):
        if old.get(k) != new.get(k):
            out.append(f"{k}: {old.get(k)!r} in the output, {new.get(k)!r} now")
    return out


def _jsonable(request: dict[str, Any]) -> dict[str, Any]:
    """The request as it reads back from JSON (tuples → lists, NumPy → Python)."""
    return json.loads(json.dumps(request, sort_keys=True, default=_default))


def _default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


class FitOutput:
    """An output store opened for writing blocks (see the module docstring)."""

    def __init__(self, path: str):
        import zarr

        self.path = path
        self.group = zarr.open_group(path, mode="r+")
        self.block = int(self.group.attrs["fit_block"])
        self.n_target = int(self.group["weight"].shape[0])
        self.n_blocks = -(-self.n_target // self.block)

    # ------------------------------------------------------------ create / reopen
    @classmethod
    def open_or_create(cls, path, request: dict[str, Any], template: xr.Dataset,
                       block: int) -> FitOutput:
        """Reopen ``path`` for this request (refused where its request differs), or create
        it from ``template`` (coordinates and attributes; data variables lazily zero)."""
        path = os.fspath(path)
        request = _jsonable(request)
        if os.path.exists(path):
            old = _read_request(path)
            diff = request_differences(old, request)
            if diff:
                raise InputError(f"{path}: already exists and holds a fit with other "
                                 f"options; refusing to continue it ({'; '.join(diff)}); use "
                                 "another --out or --overwrite")
            return cls(path)
        from ..store.runstore import building

        with building(path) as draft:
            _create(draft, request, template, block)
        return cls(path)

    # ------------------------------------------------------------------ blocks
    def done(self) -> np.ndarray:
        """[n_blocks] bool: which blocks are committed."""
        return np.asarray(self.group[_DONE][:], bool)

    def block_slice(self, b: int) -> slice:
        return slice(b * self.block, min((b + 1) * self.block, self.n_target))

    def write_block(self, b: int, values: dict[str, np.ndarray]) -> None:
        """Write block ``b``'s rows of every per-target variable (whole chunks), then its
        commit mark."""
        sl = self.block_slice(b)
        for name, v in values.items():
            arr = self.group[name]
            v = np.asarray(v)
            want = (sl.stop - sl.start, *arr.shape[1:])
            if v.shape != want:
                raise InputError(f"block {b}: {name} has shape {v.shape}, expected {want}")
            arr[sl] = v.astype(arr.dtype, copy=False)
        self.group[_DONE][b] = True

    @property
    def finished(self) -> bool:
        return bool(self.group.attrs.get("fit_finished", 0))

    def finish(self, attrs: dict[str, Any]) -> None:
        """Set the attributes known at the end and consolidate the metadata."""
        import zarr

        self.group.attrs.update(portable_attrs({**attrs, "fit_finished": 1}))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
            zarr.consolidate_metadata(self.path)


def _read_request(path: str) -> dict[str, Any]:
    import zarr

    try:
        g = zarr.open_group(path, mode="r")
        raw = g.attrs["fit_request"]
    except Exception:
        raise InputError(f"{path}: already exists and is not a blockwise datamodels "
                         "output; use another --out or --overwrite") from None
    return json.loads(raw) if isinstance(raw, str) else dict(raw)


def _create(path: str, request: dict[str, Any], template: xr.Dataset, block: int) -> None:
    """The empty output: the template's variables as lazy zeros chunked by ``block``
    targets (``to_zarr(compute=False)`` writes metadata and coordinates only), then the
    commit marks."""
    import dask.array as da

    T = template.sizes["target"]
    n_blocks = -(-T // block)
    ds = template.copy()
    for name, v in ds.data_vars.items():
        chunks = tuple(block if d == "target" else s for d, s in zip(v.dims, v.shape,
                                                                       strict=True))
        ds[name] = (v.dims, da.zeros(v.shape, dtype=v.dtype, chunks=chunks), v.attrs)
        ds[name].encoding = {"chunks": chunks}
    ds[_DONE] = (("fit_block",), da.zeros(n_blocks, dtype=bool, chunks=1),
                 {"description": "commit mark of each block of targets, written last"})
    ds[_DONE].encoding = {"chunks": (1,)}
    ds.attrs = portable_attrs({**ds.attrs, "fit_block": int(block),
                               "fit_request": json.dumps(request, sort_keys=True)})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        ds.to_zarr(path, mode="w-", compute=False, consolidated=True)


def open_fit(path, *, require_complete: bool = True) -> xr.Dataset:
    """A blockwise datamodels output as a lazy Dataset (dask arrays chunked by its blocks).
    Refuses, naming them, an output whose blocks are not all committed."""
    path = os.fspath(path)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        ds = xr.open_zarr(path, consolidated=False)
    if _DONE in ds:
        done = np.asarray(ds[_DONE].values, bool)
        if require_complete and not done.all():
            miss = np.flatnonzero(~done)
            raise InputError(f"{path}: {miss.size} of {done.size} target blocks are not "
                             f"written yet (e.g. {miss[:5].tolist()}); rerun the same fit "
                             "to finish it")
        if require_complete and not ds.attrs.get("fit_finished"):
            raise InputError(f"{path}: every block is written but the fit did not finish; "
                             "rerun the same fit to finish it")
        ds = ds.drop_vars(_DONE)
    return ds
