"""Stage 5 — similarity from datamodels: which training examples drive each target
(``neighbors``) and which look like leaked targets (``leakage``), next to the nearest
examples in a trained model's representation; datamodel embeddings, their principal components
and how faithful those are (``embeddings``, ``pca``, ``faithfulness``), and their spectral
clusters (``cluster``)."""

from .clusters import cluster, spectral_clusters
from .embeddings import Embeddings, embeddings
from .faithfulness import faithfulness
from .leakage import leakage
from .neighbors import neighbors
from .pca import pca

__all__ = ["Embeddings", "cluster", "embeddings", "faithfulness", "leakage", "neighbors", "pca",
           "spectral_clusters"]
