"""The report's figures, drawn to be read at the width the page shows them (1000 px: 10 in at 100 dpi).

Each experiment keeps one colour in every figure, so one legend per figure names them all; datasets
get their own panels (their tIoU ranges and loss scales differ)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from talbench.report.inputs import Result

WIDTH = 10.0  # inches; at DPI this is the page's figure width, so nothing is scaled down
DPI = 100
LINESTYLES = ("-", "--", ":", "-.")
MATCH_TIOU = 0.5  # a detection is right when it matches an instance of its class at this tIoU


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "legend.fontsize": 9})
    return plt


def colours(results: Sequence[Result]) -> dict[str, Any]:
    """One colour per experiment (tab10, then tab20 beyond ten)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(results) <= 10 else "tab20"]
    return {r.name: cmap(i % cmap.N) for i, r in enumerate(results)}


def by_dataset(results: Sequence[Result]) -> dict[str, list[Result]]:
    groups: dict[str, list[Result]] = {}
    for r in results:
        groups.setdefault(r.title, []).append(r)
    return groups


def _panels(plt: Any, n: int, rows_per: float, cols: int = 2) -> tuple[Any, list[Any]]:
    cols = min(cols, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(WIDTH, rows_per * rows + 0.9), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat[:n])


def _save(fig: Any, path: Path, legend: tuple[list[Any], list[str]] | None = None, ncol: int = 3) -> None:
    if legend:  # one legend for the whole figure, below the panels, where it hides nothing
        fig.legend(*legend, loc="lower center", ncol=ncol, frameon=False, bbox_to_anchor=(0.5, 0.0))
        legend_rows = -(-len(legend[1]) // ncol)
        fig.tight_layout(rect=(0, (0.25 * legend_rows + 0.1) / fig.get_figheight(), 1, 1))
    else:
        fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    import matplotlib.pyplot as plt

    plt.close(fig)


def map_vs_tiou(results: Sequence[Result], path: Path) -> None:
    """mAP against tIoU, a panel per dataset; published values dashed with open markers."""
    from matplotlib.lines import Line2D

    plt, colour = _plt(), colours(results)
    groups = by_dataset(results)
    fig, axes = _panels(plt, len(groups), 3.0)
    for ax, (title, group) in zip(axes, groups.items()):
        for r in group:
            tious = [float(k.split("@", 1)[1]) for k in r.scores["mAP"]]
            ax.plot(tious, [100 * v for v in r.scores["mAP"].values()], marker="o", color=colour[r.name], label=r.name)
            if r.published:
                keys = [k.split("@", 1)[1] for k in r.scores["mAP"]]
                shown = [(t, r.published[k]) for t, k in zip(tious, keys) if k in r.published]
                ax.plot(*zip(*shown), linestyle="--", marker="o", markerfacecolor="white", color=colour[r.name], alpha=0.8)
        ax.set(title=title, xlabel="tIoU threshold", ylabel="mAP (%)", xticks=tious)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colour[r.name], marker="o") for r in results]
    handles += [Line2D([], [], color="grey", marker="o"), Line2D([], [], color="grey", linestyle="--", marker="o", markerfacecolor="white")]
    _save(fig, path, (handles, [r.name for r in results] + ["ours (synthetic twins)", "published (real data)"]))


def precision_recall(results: Sequence[Result], path: Path) -> None:
    """A panel per experiment, a line per tIoU (one colour per threshold value across panels)."""
    from matplotlib.lines import Line2D

    from talbench.plots import draw_precision_recall, tiou_colours

    plt = _plt()
    colours = tiou_colours([column.split("@", 1)[1] for r in results for column in r.precision_recall[1]])
    fig, axes = _panels(plt, len(results), 2.6, cols=3)
    for ax, r in zip(axes, results):
        recall, curves = r.precision_recall
        draw_precision_recall(ax, recall, curves, r.name, colours)
    handles = [Line2D([], [], color=colour, linewidth=2) for colour in colours.values()]
    _save(fig, path, (handles, [f"tIoU {t}" for t in colours]), ncol=min(8, len(colours)))


def training_curves(results: Sequence[Result], path: Path) -> None:
    """Classification and regression loss per epoch (means over seeds): a row each, a column per dataset."""
    from matplotlib.lines import Line2D

    plt, colour = _plt(), colours(results)
    groups = by_dataset(results)
    # within a dataset the lines differ in dash too: Ego4D's experiments lie close together
    dash = {r.name: LINESTYLES[i % len(LINESTYLES)] for group in groups.values() for i, r in enumerate(group)}
    fig, axes = plt.subplots(2, len(groups), figsize=(WIDTH, 5.6), squeeze=False)
    for col, (title, group) in enumerate(groups.items()):
        for r in group:
            epochs = [row["epoch"] + 1 for row in r.history]
            style = {"color": colour[r.name], "linestyle": dash[r.name], "linewidth": 1.6}
            axes[0][col].plot(epochs, [row["cls_loss"] for row in r.history], **style)
            axes[1][col].plot(epochs, [row["reg_loss"] for row in r.history], **style)
        axes[0][col].set_title(title)
        axes[1][col].set_xlabel("epoch")
        for ax in (axes[0][col], axes[1][col]):
            ax.grid(alpha=0.3)
    from matplotlib.ticker import MaxNLocator

    for ax in axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][0].set_ylabel("classification loss")
    axes[1][0].set_ylabel("regression loss")
    handles = [Line2D([], [], color=colour[r.name], linestyle=dash[r.name]) for r in results]
    _save(fig, path, (handles, [r.name for r in results]))


def lanes(segments: Sequence[tuple[float, float]]) -> list[int]:
    """A lane per segment so that no two segments of a lane overlap (first fit, in order of start)."""
    ends: list[float] = []
    lane = [0] * len(segments)
    for i in sorted(range(len(segments)), key=lambda i: segments[i][0]):
        start, end = segments[i]
        free = next((k for k, last in enumerate(ends) if last <= start), len(ends))
        ends[free:free + 1] = [end]
        lane[i] = free
    return lane


def _tiou(a: tuple[float, float], b: tuple[float, float]) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def matches(detections: Sequence[dict[str, Any]], truth: Sequence[tuple[str, float, float]]) -> list[bool]:
    """Whether each detection (in score order) takes an instance of its class at tIoU >= MATCH_TIOU
    not taken by a higher-scored one: the evaluation's rule at one threshold."""
    taken: set[int] = set()
    out = []
    for d in detections:
        candidates = [(_tiou(tuple(d["segment"]), (s, e)), j) for j, (label, s, e) in enumerate(truth)
                      if label == d["label"] and j not in taken]
        best = max(candidates, default=(0.0, -1))
        if best[0] >= MATCH_TIOU:
            taken.add(best[1])
        out.append(best[0] >= MATCH_TIOU)
    return out


def _bars(ax: Any, items: Sequence[tuple[float, float, str, Any]], base: float, seconds_per_char: float) -> int:
    """Lane-stacked opaque bars, each labelled inside where its label fits, else just after it (a lane
    holds bars and labels that do not overlap); returns the number of lanes used."""
    limit = ax.get_xlim()[1]
    text = [(len(label) + 1) * seconds_per_char for _, _, label, _ in items]
    inside = [end - start > width for (start, end, _, _), width in zip(items, text)]
    before = [not fits and end + width > limit for (_, end, _, _), width, fits in zip(items, text, inside)]  # at the right edge
    extents = [(s - w if left else s, e if fits or left else e + w) for (s, e, _, _), w, fits, left in zip(items, text, inside, before)]
    lane = lanes(extents)
    for (start, end, label, colour), k, fits, left in zip(items, lane, inside, before):
        y = base + k
        ax.broken_barh([(start, end - start)], (y + 0.1, 0.8), facecolor=colour, edgecolor="white", linewidth=0.5)
        x = start + seconds_per_char / 2 if fits else start - seconds_per_char / 2 if left else end + seconds_per_char / 2
        ax.text(x, y + 0.5, label, va="center", ha="right" if left else "left", fontsize=8,
                color="white" if fits else "#1f2328", clip_on=True)
    return max(lane, default=-1) + 1


def timeline(video: str, duration: float, truth: Sequence[tuple[str, float, float]], detections: Sequence[dict[str, Any]],
             path: Path) -> dict[str, int]:
    """Ground truth (class, start, end) under the top-scored detections of one video (class names,
    in score order), each with its class and score, green where it matches an instance (tIoU 0.5),
    red where not. Returns the counts drawn."""
    from matplotlib.patches import Patch

    plt = _plt()
    right = matches(detections, truth)
    fig, ax = plt.subplots(figsize=(WIDTH, 1.0))  # resized below, once the lanes are known
    ax.set_xlim(0, duration)
    seconds_per_char = duration / (0.8 * WIDTH * DPI) * 5.2  # a character at font size 8 is ~5.2 px wide
    found = _bars(ax, [(d["segment"][0], d["segment"][1], f"{d['label']} {d['score']:.2f}", "#2da44e" if ok else "#cf222e")
                       for d, ok in zip(detections, right)], 0, seconds_per_char)
    gt_base = max(found, 1) + 0.5
    gt = _bars(ax, [(s, e, label, "#57606a") for label, s, e in truth], gt_base, seconds_per_char)
    ax.set_ylim(gt_base + gt, 0)
    ax.set_yticks([max(found, 1) / 2, gt_base + gt / 2], [f"top {len(detections)}\ndetections", "ground\ntruth"])
    ax.axhline(gt_base - 0.25, color="#d0d7de", linewidth=1)
    ax.set_xlabel(f"seconds, test video {video}")
    fig.set_figheight(0.32 * (gt_base + gt) + 1.2)
    legend = [Patch(color="#2da44e", label="matches an instance (tIoU ≥ 0.5)"), Patch(color="#cf222e", label="no match"),
              Patch(color="#57606a", label="ground truth")]
    ax.legend(handles=legend, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return {"detections": len(detections), "right": sum(right), "instances": len(truth)}
