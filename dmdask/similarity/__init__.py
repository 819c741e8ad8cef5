"""Stage 5 — similarity from datamodels: which training examples drive each target
(``neighbors``), next to the nearest examples in a trained model's representation."""

from .embeddings import Embeddings, embeddings
from .faithfulness import faithfulness
from .neighbors import neighbors
from .pca import pca

__all__ = ["Embeddings", "embeddings", "faithfulness", "neighbors", "pca"]
