"""Number formatting shared by every report section (a leaf: tasks, report and tune import it)."""

from __future__ import annotations


def pct(x: float | None) -> str:
    """A fraction as a percentage with 2 decimals; ``–`` when undefined."""
    return "–" if x is None else f"{100 * x:.2f}"


def num(x: float | None, fmt: str = "{:.2f}") -> str:
    return "–" if x is None else fmt.format(x)


def sec(ms: float | None) -> str:
    """Milliseconds shown as seconds (per-case latencies of 3D segmentation)."""
    return "–" if ms is None else f"{ms / 1e3:.3f}s"


def dice(x: float | None) -> str:
    return "–" if x is None else f"{x:.4f}"


def cell(text: object) -> str:
    """A value (a sample id, a metadata group, a reason) shown as itself inside a markdown
    table cell: a ``|`` cannot end the cell, a newline the row, and ``<...>`` is text, not
    HTML."""
    s = str(text).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
    return " ".join(s.splitlines())
