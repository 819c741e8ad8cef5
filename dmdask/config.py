"""dmdask settings live in ``dask.config`` under the ``dmdask`` namespace.

The defaults ship in ``dmdask.yaml`` next to this module and are merged with
``dask.config.update_defaults`` (dask's recipe for downstream libraries), so users override
them the dask way: a YAML file in ``~/.config/dask/``, ``DASK_DMDASK__...`` environment
variables, or ``dask.config.set``.
"""

from __future__ import annotations

import os
from typing import Any

import dask.config
import yaml

_DEFAULTS_FILE = os.path.join(os.path.dirname(__file__), "dmdask.yaml")

with open(_DEFAULTS_FILE) as _f:
    DEFAULTS: dict = yaml.safe_load(_f)

dask.config.update_defaults(DEFAULTS)


def get(key: str, default: Any = None) -> Any:
    """Return the setting ``dmdask.<key>`` (e.g. ``get("store.block-size")``)."""
    return dask.config.get(f"dmdask.{key}", default=default)
