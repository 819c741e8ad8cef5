"""Stage 6 — one self-contained HTML page of every analysis of a store (``page``; images from
the store's job in ``images``; ``html`` building blocks; ``counterfactual`` sections)."""

from . import page as _page
from .page import *  # noqa: F403  (the names of page.__all__)

__all__ = list(_page.__all__)
