"""The run store a report is given (a path or a Dataset), as a Dataset and its path."""

from __future__ import annotations

import os

import xarray as xr

__all__ = ["store_and_path"]


def store_and_path(store) -> tuple[xr.Dataset | None, str | None]:
    """The run store as a Dataset and its path (either may be None)."""
    if store is None:
        return None, None
    if isinstance(store, xr.Dataset):
        meta = store.attrs.get("dmdask", {})
        path = meta.get("path") if isinstance(meta, dict) else None
        return store, path
    from ..store.runstore import open_store

    path = os.path.abspath(os.fspath(store))
    return open_store(path), path
