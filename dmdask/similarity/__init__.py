"""Stage 5 — similarity from datamodels: which training examples drive each target
(``neighbors``), next to the nearest examples in a trained model's representation."""

from .neighbors import neighbors

__all__ = ["neighbors"]
