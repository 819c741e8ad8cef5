"""Stage 1 — the run store: one Zarr v3 group of models × examples.

``runstore`` holds the schema, the write protocol and the public entry points (re-exported
here); ``sampling`` draws the masks and seeds; ``jobspec`` resolves and checks the learning
algorithm a store names; ``lease`` serialises trainings and growths of one store;
``madrylab`` converts to and from MadryLab's ``.npy`` layout.
"""

from . import runstore as _runstore
from .runstore import *  # noqa: F403  (the names of runstore.__all__)

__all__ = list(_runstore.__all__)
