"""Figures as PNG bytes (matplotlib, Agg: no display needed): what every plot shares."""

from __future__ import annotations

import io


def figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (5.0, 4.5)):
    """``(pyplot, figure, axes[rows][cols])`` on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False)
    return plt, fig, axes


def png(plt, fig) -> bytes:
    """The figure as PNG bytes (closed afterwards)."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()
