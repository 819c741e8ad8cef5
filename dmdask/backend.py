"""Array backend: NumPy or CuPy chunks, chosen by the setting ``dmdask.array.backend``.

Array code in dmdask asks the chunk it holds for its namespace (:func:`get_namespace`), the
``array_api_compat`` way, so one function runs on NumPy and CuPy chunks. Moving data to the
chosen backend is explicit (:func:`to_backend`, :func:`dask_to_backend`); a CuPy backend that
cannot be had is an error, never a silent NumPy fallback.
"""

from __future__ import annotations

import numpy as np

from . import config, optional
from .errors import DmdaskError

BACKENDS = ("numpy", "cupy")


def backend_name(name: str | None = None) -> str:
    """The backend in force: ``name`` if given, else the setting ``dmdask.array.backend``."""
    name = name or config.get("array.backend", "numpy")
    if name not in BACKENDS:
        raise DmdaskError(f"dmdask.array.backend must be one of {BACKENDS}, not {name!r}")
    return name


def namespace(name: str | None = None):
    """The array module of a backend (``numpy`` or ``cupy``; CuPy must be importable)."""
    name = backend_name(name)
    if name == "numpy":
        return np
    cp = optional.cupy()
    if not optional.has_gpu():
        raise DmdaskError("dmdask.array.backend is 'cupy' but CuPy sees no CUDA device")
    return cp


def is_cupy(x) -> bool:
    return type(x).__module__.split(".")[0] == "cupy"


def get_namespace(*arrays):
    """The array module of the given arrays (CuPy if any is a CuPy array, else NumPy)."""
    for a in arrays:
        if is_cupy(a):
            import cupy

            return cupy
    return np


def to_backend(x, name: str | None = None):
    """``x`` as an array of the backend (a copy to the device for CuPy)."""
    return namespace(name).asarray(x)


def to_numpy(x) -> np.ndarray:
    """A NumPy copy of a NumPy or CuPy array (host transfer for CuPy)."""
    if is_cupy(x):
        return x.get()
    return np.asarray(x)


def dask_to_backend(arr, name: str | None = None):
    """A dask array whose chunks are of the chosen backend."""
    name = backend_name(name)
    if name == "numpy":
        return arr
    cp = namespace(name)
    return arr.map_blocks(cp.asarray, dtype=arr.dtype, meta=cp.empty((0,) * arr.ndim, arr.dtype))
