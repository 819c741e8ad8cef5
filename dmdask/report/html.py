"""HTML and figure building blocks shared by the report's sections: escaping, "missing"
paragraphs, sections, and matplotlib figures (Agg, no pyplot) inlined as base64 PNGs."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np

_DPI = 100  # 100 dpi keeps a full digits page near 1 MB while staying legible


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _mpl():
    """matplotlib's Figure and Agg canvas, without pyplot: no global backend switch and no
    global figure registry in the caller's process."""
    from ..optional import require

    require("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    return Figure, FigureCanvasAgg


def _horizontal() -> dict[str, Any]:
    """Horizontal boxes: ``orientation=`` from matplotlib 3.10 on (``vert=`` is deprecated
    there), ``vert=False`` before."""
    import matplotlib

    major, minor = (int(x) for x in matplotlib.__version__.split(".")[:2])
    return {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}


def _no_minor_labels(ax) -> None:
    """Log axes spanning less than a decade label their minor ticks, which overlap."""
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())


def _new_fig(w: float, h: float):
    Figure, Canvas = _mpl()
    fig = Figure(figsize=(w, h), dpi=_DPI, layout="constrained")
    Canvas(fig)
    return fig


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.canvas.print_png(buf)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(fig_id: str, fig, caption: str, alt: str) -> str:
    w, h = (int(round(v)) for v in fig.get_size_inches() * fig.dpi)
    return (f'<figure id="{fig_id}"><img src="data:image/png;base64,{_png(fig)}" '
            f'width="{w}" height="{h}" alt="{_esc(alt)}"><figcaption>{caption}</figcaption>'
            "</figure>")


def _missing(text: str) -> str:
    return f'<p class="missing">{text}</p>'


def _malformed(ds, dim: str, required, what: str) -> str | None:
    """A "missing" paragraph when ``ds`` lacks ``dim`` or a required variable, else None."""
    if dim not in ds.dims:
        return _missing(f"The {what} has no <code>{dim}</code> dimension.")
    lack = [v for v in required if v not in ds]
    if lack:
        return _missing(f"The {what} lacks the variables " + ", ".join(lack) + ".")
    return None


def _fmt(v: Any, nd: int = 3) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return _esc(v)
    if not np.isfinite(f):
        return "—"
    return f"{f:.{nd}f}"


def _section(sec_id: str, title: str, body: str) -> str:
    return f'<section id="{sec_id}"><h2>{_esc(title)}</h2>{body}</section>'


def show_image(ax, img) -> None:
    """Draw one example image on a matplotlib axis, without ticks."""
    # uint8 (the job hook's type) on its full 0..255 scale, so images are comparable;
    # anything else autoscaled per image
    scale = {"vmin": 0, "vmax": 255} if img.dtype == np.uint8 else {}
    if img.ndim == 2:
        ax.imshow(img, cmap="gray_r", interpolation="nearest", **scale)
    else:
        ax.imshow(img, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
