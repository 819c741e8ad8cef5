"""Optional dependencies, imported lazily in this one place.

Core dmdask needs only numpy/dask/xarray/zarr. ``torch`` (jobs), ``cupy`` and ``dask_cuda``
(GPU path), ``matplotlib`` (reports), ``trak`` (the ``traker`` package: the TRAK
estimator) and ``ffcv`` (``.beton`` files) are imported through these helpers so that a missing
extra gives one clear error naming the extra to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import DmdaskError

_EXTRA = {"torch": "torch", "cupy": "gpu", "dask_cuda": "gpu", "matplotlib": "viz",
          "trak": "model", "ffcv": "ffcv"}


def has(name: str) -> bool:
    """True if the optional module ``name`` can be imported."""
    try:
        importlib.import_module(name)
    except Exception:
        return False
    return True


def require(name: str) -> ModuleType:
    """Import optional module ``name`` or raise a DmdaskError naming the extra that provides it."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        extra = _EXTRA.get(name.split(".")[0], name)
        raise DmdaskError(
            f"{name} is needed for this but is not installed: pip install 'dmdask[{extra}]' ({e})"
        ) from e


def torch() -> ModuleType:
    return require("torch")


def ffcv() -> ModuleType:
    return require("ffcv")


def cupy() -> ModuleType:
    return require("cupy")


def has_gpu() -> bool:
    """True if CuPy imports and sees at least one CUDA device."""
    if not has("cupy"):
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False
