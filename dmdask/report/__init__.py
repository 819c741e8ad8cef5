"""Stage 5 — one self-contained HTML page of every analysis of a store."""

from .images import ImageSource, image_source
from .page import (
    FIGURE_IDS,
    PredictedActual,
    predicted_vs_actual,
    render_report,
    resolve_images,
    write_report,
)

__all__ = [
    "FIGURE_IDS",
    "ImageSource",
    "PredictedActual",
    "image_source",
    "predicted_vs_actual",
    "render_report",
    "resolve_images",
    "write_report",
]
