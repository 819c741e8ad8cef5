"""Stage 5 — similarity from datamodels: which training examples drive each target
(``neighbors``) and which look like leaked targets (``leakage``), next to the nearest
examples in a trained model's representation."""

from .embeddings import Embeddings, embeddings
from .leakage import leakage
from .neighbors import neighbors

__all__ = ["Embeddings", "embeddings", "leakage", "neighbors"]
