"""Stage 5 — similarity from datamodels: which training examples drive each target
(``neighbors``) and which look like leaked targets (``leakage``), next to the nearest
examples in a trained model's representation; datamodel embeddings and their spectral clusters
(``embeddings``, ``cluster``)."""

from .clusters import cluster, spectral_clusters
from .embeddings import Embeddings, embeddings
from .leakage import leakage
from .neighbors import neighbors

__all__ = ["Embeddings", "cluster", "embeddings", "leakage", "neighbors", "spectral_clusters"]
