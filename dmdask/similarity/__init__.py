"""Stage 5 — similarity from datamodels: which training examples drive each target
(``neighbors``), next to the nearest examples in a trained model's representation."""

from .clusters import cluster, spectral_clusters
from .embeddings import Embeddings, embeddings
from .neighbors import neighbors

__all__ = ["Embeddings", "embeddings", "neighbors"]
__all__ += ["cluster", "spectral_clusters"]
