"""Stage 5 — one self-contained HTML page of every analysis of a store (``page``; images from
the store's job in ``images``)."""

from . import page as _page
from .page import *  # noqa: F403  (the names of page.__all__)

__all__ = list(_page.__all__)
