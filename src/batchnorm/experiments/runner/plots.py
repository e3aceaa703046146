"""The one plotting setup: matplotlib's Agg canvas (no pyplot, no global state), one style,
mean curves with seed bands, and atomic saving.

>>> save_plot(path, (8, 5), draw)   # doctest: +SKIP

``draw(figure)`` adds the axes and artists; it runs inside the shared :data:`STYLE`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from batchnorm.files import atomic_write

__all__ = ["STYLE", "mean_band", "save_plot"]

STYLE: dict[str, Any] = {
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.fontsize": "small",
    "legend.title_fontsize": "small",
    "savefig.bbox": "tight",
}


def save_plot(path: str | Path, figsize: tuple[float, float],
              draw: Callable[[Figure], None], *, dpi: int = 130) -> None:
    """A new figure of ``figsize`` inches, drawn by ``draw``, written to ``path`` atomically."""
    path = Path(path)
    with matplotlib.rc_context(STYLE):
        figure = Figure(figsize=figsize)
        FigureCanvasAgg(figure)
        draw(figure)
        atomic_write(path, lambda handle: figure.savefig(handle, format=path.suffix[1:],
                                                         dpi=dpi))


def mean_band(axis: Any, steps: Any, table: np.ndarray, color: str | None = None,
              label: str | None = None, **line: Any) -> None:
    """``table`` is (seeds, steps): its mean over seeds as a line and, with several seeds,
    their range (min to max) as a band of the same colour."""
    (drawn,) = axis.plot(steps, table.mean(axis=0), color=color, label=label, **line)
    if table.shape[0] > 1:
        axis.fill_between(steps, table.min(axis=0), table.max(axis=0),
                          color=drawn.get_color(), alpha=0.2, linewidth=0)
