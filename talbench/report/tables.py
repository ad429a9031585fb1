"""The report's tables, in the layout of published tables: mAP (%) per tIoU, then the average;
every number with two decimals, ours and the published alike; published rows apart, in italics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from talbench.report.document import Table, slug
from talbench.report.inputs import Result

DASH = "—"
HEADLINE_TIOU = "0.50"  # Recall@1x at tIoU 0.5 is Ego4D's headline number; every dataset here scores 0.5


def percent(value: float | None) -> str:
    """A fraction (0-1) as a percentage with two decimals."""
    return DASH if value is None else f"{100 * value:.2f}"


def points(value: float | None) -> str:
    """A number already in percent (the published tables') with the same two decimals."""
    return DASH if value is None else f"{float(value):.2f}"


def signed(value: float | None) -> str:
    return DASH if value is None else f"{float(value):+.2f}"


def seconds(value: float | None) -> str:
    return DASH if value is None else f"{value:.1f}"


def mean_std(mean: float, std: float | None) -> str:
    return percent(mean) if std is None else f"{percent(mean)} ± {percent(std)}"


def thresholds(scores: Mapping[str, Any]) -> list[str]:
    """The dataset's tIoU thresholds as its score keys write them ('0.30', ...)."""
    return [key.split("@", 1)[1] for key in scores["mAP"]]


def published_value(published: Mapping[str, float] | None, key: str) -> float | None:
    if not published:
        return None
    value = published.get(key)
    return None if value is None else float(value)


def difference(result: Result) -> float | None:
    """Ours minus published, average mAP in points."""
    published = published_value(result.published, "avg")
    return None if published is None else 100 * result.scores["average_mAP"] - published


def spread(scores: Mapping[str, Any]) -> str:
    std = scores["std"]
    return f"{percent(std['average_mAP'])} (n={len(scores['seeds'])})" if std else "single seed"


def summary_table(results: Sequence[Result]) -> Table:
    header = ["experiment", "dataset", "avg mAP (%), ours", "published", "difference", f"Recall@1x @ {HEADLINE_TIOU} (%)",
              "seeds", "test videos", "test instances", "training (s/seed)", "inference (s/seed)"]
    rows = []
    for r in results:
        s = r.scores
        recall = s["recall"].get(f"R@1x@{HEADLINE_TIOU}")
        rows.append([f"[{r.name}](#{slug(r.title)})", r.dataset, f"**{mean_std(s['average_mAP'], (s['std'] or {}).get('average_mAP'))}**",
                     points(published_value(r.published, "avg")), signed(difference(r)), percent(recall),
                     str(len(s["seeds"])), str(r.split.videos), str(r.split.instances),
                     seconds(s["timing"]["train_s"]), seconds(s["timing"]["infer_s"])])
    return Table(header, rows, text_columns=2, caption="Average mAP over the tIoU thresholds of each dataset, mean ± std over the "
                                       "training seeds; difference = ours − published, in points")


def map_table(group: Sequence[Result], level: str) -> Table:
    """One dataset's experiments: mAP at each tIoU and the average, the seed spread and the interval."""
    keys = thresholds(group[0].scores)
    header = ["experiment", *keys, "avg", "± std (seeds)", f"avg, {level} interval"]
    rows, published = [], []
    for r in group:
        s = r.scores
        low, high = s["interval"]["average_mAP"]
        rows.append([r.name, *(percent(s["mAP"][f"mAP@{k}"]) for k in keys), f"**{percent(s['average_mAP'])}**",
                     spread(s), f"[{percent(low)}, {percent(high)}]"])
        if r.published:
            published.append([f"{r.name} (published, real data)", *(points(published_value(r.published, k)) for k in keys),
                              points(published_value(r.published, "avg")), "", ""])
    return Table(header, rows, caption="mAP (%) @ tIoU: ours (mean over seeds), then the published results",
                 group=("mAP (%) @ tIoU", 1, len(keys) + 1), published=published)


def recall_table(group: Sequence[Result]) -> Table:
    """Recall@KxN at every threshold: the share of instances found among the top K×N detections of a video."""
    keys = thresholds(group[0].scores)
    top_k = group[0].scores.get("top_k") or sorted({int(k.split("@")[1][:-1]) for k in group[0].scores["recall"]})
    rows = [[r.name, f"{k}x", *(percent(r.scores["recall"].get(f"R@{k}x@{t}")) for t in keys)] for r in group for k in top_k]
    return Table(["experiment", "top", *keys], rows, caption="Recall (%) @ tIoU, top K×N detections of a video with N instances",
                 group=("Recall (%) @ tIoU", 2, len(keys) + 1))


def comparison_table(group: Sequence[Result], level: str) -> Table | None:
    rows = [[r.name, best, percent(c.difference), f"[{percent(c.interval[0])}, {percent(c.interval[1])}]", c.verdict]
            for r in group if r.comparison for best, c in [r.comparison]]
    if not rows:
        return None
    return Table(["experiment", "best", "difference", f"{level} interval", "verdict"], rows,
                 caption=f"Against the best on the same test videos: paired bootstrap of the seed means, {level}")


def class_ap(scores: Mapping[str, Any], name: str) -> float | None:
    """A class's AP averaged over the thresholds (as average mAP is), or None where it was not scored."""
    per_tiou = scores["AP_per_class"].get(name)
    return None if per_tiou is None else sum(per_tiou.values()) / len(per_tiou)


def class_table(group: Sequence[Result]) -> Table:
    """AP per class (averaged over tIoU) of the experiments scored on one test split, classes by test instances."""
    split = group[0].split
    rows = [[name, str(count), *(percent(class_ap(r.scores, name)) for r in group)] for name, count in split.per_class.items()]
    return Table(["class", "test instances", *(r.name for r in group)], rows,
                 caption="AP (%) per class, averaged over the tIoU thresholds; classes with the most test instances first")


def unscored_classes(split: Any, num_classes: int) -> str:
    """The sentence that says which classes the test split has no instance of."""
    scored = len(split.per_class)
    if not split.unscored and not split.unnamed:
        return f"All {scored} classes have test instances."
    names = ", ".join(split.unscored) or "none named"
    unnamed = (f" ({split.unnamed} more {'class is' if split.unnamed == 1 else 'classes are'} named by no annotation)"
               if split.unnamed else "")
    return (f"{scored} of {num_classes} classes have test instances; these have none, so the protocol does not score "
            f"them: {names}{unnamed}.")
