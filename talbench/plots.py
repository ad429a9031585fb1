"""Figures shared by the evaluate stage (one experiment, logged to MLflow) and the report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def tiou_colours(tious: Sequence[str]) -> dict[str, Any]:
    """A colour per threshold ('0.50'), from dark (low) to light (high), spread evenly over the ones given."""
    from matplotlib import colormaps

    ordered = sorted(set(tious), key=float)
    step = 0.85 / max(1, len(ordered) - 1)  # up to 0.85: the palest yellows are unreadable on white
    return {t: colormaps["viridis"](i * step) for i, t in enumerate(ordered)}


def draw_precision_recall(ax: Any, recall: Sequence[float], curves: Mapping[str, Sequence[float]], title: str = "",
                          colours: Mapping[str, Any] | None = None) -> None:
    """One line per tIoU threshold; `curves` maps 'precision@0.50'-style columns to precisions; `colours`
    (by threshold) lets several axes share one legend."""
    tious = [column.split("@", 1)[1] for column in curves]
    colours = colours or tiou_colours(tious)
    for tiou, precision in zip(tious, curves.values()):
        ax.plot(recall, [100 * p for p in precision], label=f"tIoU {tiou}", linewidth=1.4, color=colours[tiou])
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 101)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision (%)")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)


def read_precision_recall(path: Any) -> tuple[list[float], dict[str, list[float]]]:
    """(recall levels, {column: precisions}) from a pr_curve.csv written by the evaluate stage."""
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or "recall" not in rows[0]:
        raise ValueError("expected a header 'recall,precision@<tIoU>,...' and one row per recall level")
    columns = [c for c in rows[0] if c.startswith("precision@")]
    return [float(r["recall"]) for r in rows], {c: [float(r[c]) for r in rows] for c in columns}


def save_precision_recall(path: Any, recall: Sequence[float], curves: Mapping[str, Sequence[float]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    draw_precision_recall(ax, recall, curves, title)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))  # beside the axes: no curve hidden
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
