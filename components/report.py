"""Pipeline stage: one benchmark report over every experiment, Markdown and self-contained HTML.

    python components/report.py [--params params.yaml] [--outputs outputs] [--validation reports/validation] [--out reports/benchmark]

Reads each experiment's scores.json, predictions/seed-<n>.json, pr_curve.csv and train_curve.csv, the
validation results and (when tracked) the MLflow run of each experiment; writes
reports/benchmark/benchmark.md, reports/benchmark/benchmark.html (plots embedded) and the PNG plots
beside them. Numbers are means over the training seeds (pipeline.seeds) with their spread, or
labelled single-seed; every average mAP carries its bootstrap interval over the test videos, and
the experiments scored on the same test videos are compared with the best of them by a paired
bootstrap of the seed means (talbench.eval.statistics).
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from talbench.errors import InputError, exit_status

if TYPE_CHECKING:
    from talbench.data.formats import Video


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the benchmark report.")
    parser.add_argument("--params", type=Path, default=None)
    parser.add_argument("--outputs", type=Path, default=Path("outputs"))
    parser.add_argument("--validation", type=Path, default=Path("reports/validation"))
    parser.add_argument("--out", type=Path, default=Path("reports/benchmark"))
    args = parser.parse_args(argv)
    return exit_status(lambda: print(f"report: {write_report(args.params, args.outputs, args.validation, args.out)}"))


def _read_json(path: Path, item: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, item, "-", "missing: run its pipeline stage first (dvc repro)") from None
    except json.JSONDecodeError as exc:
        raise InputError(path, item, "-", f"not valid JSON ({exc})") from None


def _scores(path: Path, item: str, seeds: list[int]) -> dict[str, Any]:
    scores = _read_json(path, item)
    for key in ("interval", "seeds", "std"):
        if key not in scores:
            raise InputError(path, item, key, "written by an older evaluate stage, run it again (dvc repro)")
    if scores["seeds"] != seeds:
        raise InputError(path, item, "seeds", f"scored for seeds {scores['seeds']}, params.yaml's pipeline.seeds are "
                                              f"{seeds}: run the pipeline again (dvc repro)")
    return scores


def _read_precision_recall(path: Path, item: str) -> tuple[list[float], dict[str, list[float]]]:
    from talbench.plots import read_precision_recall

    try:
        return read_precision_recall(path)
    except FileNotFoundError:
        raise InputError(path, item, "-", "missing: run its pipeline stage first (dvc repro)") from None
    except (ValueError, KeyError) as exc:
        raise InputError(path, item, "recall", f"not a precision/recall table ({exc})") from None


def _read_curve(path: Path, item: str) -> list[tuple[int, float]]:
    """(epoch, final loss averaged over seeds) from train_curve.csv; none when it is missing."""
    import csv

    if not path.exists():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return [(int(row["epoch"]), float(row["final_loss"])) for row in csv.DictReader(f)]
    except (KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
        raise InputError(path, item, "final_loss", f"not a training curve (columns epoch, final_loss: {exc})") from None


def collect(params_path: Path | None, outputs: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from talbench.data.registry import load_params
    from talbench.io import recover_outputs
    from talbench.pipeline import training_seeds

    _, params = load_params(params_path)
    seeds = training_seeds(params)
    rows = []
    for name, entry in (params.get("experiments") or {}).items():
        folder = outputs / name
        recover_outputs(folder)  # a stage killed while committing its complete outputs: finish it
        rows.append({
            "name": name,
            "dataset": entry["dataset"],
            "metrics": _scores(folder / "scores.json", name, seeds),
            "precision_recall": _read_precision_recall(folder / "pr_curve.csv", name),
            # per seed, the first (the reference seed) first: its detections are drawn
            "predictions": [_read_json(folder / "predictions" / f"seed-{seed}.json", name)["results"] for seed in seeds],
            "history": _read_curve(folder / "train_curve.csv", name),
            "mlflow": _read_json(folder / "mlflow.json", name) if (folder / "mlflow.json").exists() else None,
            "published": (params.get("published") or {}).get(name),
        })
    return params, rows


def _plot_map_vs_tiou(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for row in rows:
        m = row["metrics"]
        ax.plot(m["tious"], [100 * v for v in m["mAP"].values()], marker="o", label=row["name"])
    ax.set_xlabel("tIoU threshold")
    ax.set_ylabel("mAP (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_precision_recall(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib.pyplot as plt

    from talbench.plots import draw_precision_recall

    cols = min(4, len(rows))
    n_rows = -(-len(rows) // cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(3.2 * cols, 2.8 * n_rows), squeeze=False)
    for ax, row in zip(axes.flat, rows):
        recall, curves = row["precision_recall"]
        draw_precision_recall(ax, recall, curves, row["name"])
        ax.legend(fontsize=5)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_training(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for row in rows:
        if row["history"]:
            ax.plot([epoch + 1 for epoch, _ in row["history"]], [loss for _, loss in row["history"]], label=row["name"])
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (cls + reg), mean over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_timeline(row: dict[str, Any], annotations: dict[str, Video], subset: str, path: Path) -> str | None:
    """Ground truth against the top detections on the test video with the most instances."""
    import matplotlib.pyplot as plt

    videos = {v: a for v, a in annotations.items() if a.subset.lower() == subset.lower() and a.instances}
    if not videos:
        return None
    vid = max(videos, key=lambda v: len(videos[v].instances))
    gt = videos[vid].instances
    preds = sorted(row["predictions"][0].get(vid, []), key=lambda p: -p["score"])[: max(10, len(gt))]
    fig, ax = plt.subplots(figsize=(9, 2.2))
    for a in gt:
        ax.broken_barh([(a.start, a.end - a.start)], (1.1, 0.8), color="tab:green", alpha=0.7)
    for p in preds:
        ax.broken_barh([(p["segment"][0], p["segment"][1] - p["segment"][0])], (0.1, 0.8), color="tab:blue", alpha=min(1.0, 0.2 + p["score"]))
    ax.set_yticks([0.5, 1.5], ["predicted", "ground truth"])
    ax.set_xlim(0, videos[vid].duration or max(a.end for a in gt))
    ax.set_xlabel(f"seconds ({vid})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return vid


def _test_set(row: dict[str, Any], exp, annotations) -> None:
    """What a paired comparison of the experiment needs, into `row`: its test videos, parsed ground
    truth and predictions, and the dataset's thresholds."""
    from talbench.eval.inputs import ground_truth, parse_predictions

    spec = exp.experiment.dataset
    truth = ground_truth(annotations, exp.config["val_split"][0])
    row["parsed"] = [parse_predictions({"results": results}, annotations, exp.predictions(seed),
                                       num_classes=spec.tasks[exp.experiment.task].num_classes)[0]
                     for seed, results in zip(exp.seeds, row["predictions"])]
    row["truth"], row["tious"] = truth, spec.tiou_thresholds()
    row["test_set"] = (exp.config["dataset"]["json_file"], exp.config["val_split"][0])


def _comparisons(group: list[dict[str, Any]]) -> list[tuple[str, str, Any]]:
    """Each experiment against the best (by average mAP) of those scored on the same test videos,
    seed mean against seed mean."""
    from talbench.eval.statistics import paired_bootstrap

    out = []
    for test_set in dict.fromkeys(row["test_set"] for row in group):
        same = [row for row in group if row["test_set"] == test_set]
        best = max(same, key=lambda row: row["metrics"]["average_mAP"])
        for row in same:
            if row is not best:
                result = paired_bootstrap(row["truth"], row["parsed"], best["truth"], best["parsed"], row["tious"])
                out.append((row["name"], best["name"], result))
    return out


def write_report(params_path: Path | None, outputs: Path, validation_dir: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from talbench.eval.inputs import load_annotations
    from talbench.io import atomic_path
    from talbench.pipeline import resolve_experiment

    params, rows = collect(params_path, outputs)
    if not rows:
        raise InputError(params_path or "params.yaml", "experiments", "experiments", "no experiments to report")
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        _plot_map_vs_tiou(rows, tmp / "map_vs_tiou.png")
        _plot_precision_recall(rows, tmp / "precision_recall.png")
        _plot_training(rows, tmp / "training_curves.png")
        timelines = []
        for row in rows:
            exp = resolve_experiment(row["name"], params_path, outputs)
            annotations = load_annotations(exp.config["dataset"]["json_file"])
            _test_set(row, exp, annotations)
            png = tmp / f"timeline_{row['name']}.png"
            vid = _plot_timeline(row, annotations.videos, exp.config["val_split"][0], png)
            if vid:
                timelines.append((row["name"], vid, png.name))
        validation = _validation_summary(params, validation_dir)
        markdown = _markdown(params, rows, timelines, validation)
        (tmp / "benchmark.md").write_text(markdown, encoding="utf-8")
        (tmp / "benchmark.html").write_text(_html(markdown, tmp), encoding="utf-8")
    return out / "benchmark.html"


def _validation_summary(params: dict[str, Any], validation_dir: Path) -> list[tuple[str, str]]:
    rows = []
    for name in (params.get("pipeline") or {}).get("datasets", []):
        path = validation_dir / name / "validation.json"
        if path.exists():
            result = _read_json(path, name)
            checks = result.get("expectations", [])
            passed = sum(bool(c.get("success")) for c in checks)
            rows.append((name, f"{'passed' if result.get('success') else 'FAILED'} ({passed}/{len(checks)} expectations)"))
        else:
            rows.append((name, "not validated"))
    return rows


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def _markdown(params: dict[str, Any], rows: list[dict[str, Any]], timelines: list[tuple[str, str, str]], validation: list[tuple[str, str]]) -> str:
    source = (params.get("data") or {}).get("source", "synthetic")
    lines = ["# talbench benchmark report", ""]
    if source == "synthetic":
        lines += [f"Data: synthetic twins (scale `{(params.get('synthetic') or {}).get('scale')}`, seed "
                  f"`{(params.get('synthetic') or {}).get('seed')}`). Published numbers are for the real datasets and are shown for orientation only.", ""]
    else:
        lines += ["Data: the real datasets.", ""]
    from talbench.eval.statistics import LEVEL, RESAMPLES, SEED
    from talbench.pipeline import training_seeds

    level = f"{100 * LEVEL:g}%"
    seeds = training_seeds(params)
    if len(seeds) > 1:
        lines += [f"Each experiment is trained with {len(seeds)} seeds (pipeline.seeds: {', '.join(map(str, seeds))}): "
                  f"its numbers are means over the seeds, ± the standard deviation between seeds."]
    else:
        lines += [f"Each experiment is one training run (seed {seeds[0]}): single-seed numbers, the spread over "
                  f"seeds is not measured (set pipeline.seeds to several seeds)."]
    lines[-1] += (f" Intervals are {level} bootstrap intervals over the test videos of the seed mean ({RESAMPLES} "
                  f"resamples, seed {SEED}, basic bootstrap; `talbench compare` gives the same for one seed).")
    lines += [""]
    by_dataset: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_dataset.setdefault(row["dataset"], []).append(row)
    for dataset, group in by_dataset.items():
        keys = list(group[0]["metrics"]["mAP"])
        tious = [k.split("@")[1] for k in keys]
        lines += [f"## {dataset}", "", "| experiment | " + " | ".join(tious) + f" | avg | ± std (seeds) | avg, {level} interval |",
                  "|---" * (len(tious) + 4) + "|"]
        for row in group:
            m = row["metrics"]
            low, high = m["interval"]["average_mAP"]  # evaluate's bootstrap, as in MLflow
            spread = f"{_fmt(m['std']['average_mAP'])} (n={len(m['seeds'])})" if m["std"] else "single seed"
            lines.append(f"| {row['name']} | " + " | ".join(_fmt(m["mAP"][k]) for k in keys)
                         + f" | **{_fmt(m['average_mAP'])}** | {spread} | [{_fmt(low)}, {_fmt(high)}] |")
            if row["published"]:
                pub = row["published"]
                lines.append(f"| {row['name']} (published, real data) | " + " | ".join(str(pub.get(t, pub.get(float(t), "—"))) for t in tious) + f" | {pub.get('avg', '—')} | — | — |")
        if comparisons := _comparisons(group):
            lines += ["", f"Against the best on the same test videos (paired bootstrap, {level}):", "",
                      f"| experiment | best | difference | {level} interval | verdict |", "|---|---|---|---|---|"]
            lines += [f"| {name} | {best} | {_fmt(r.difference)} | [{_fmt(r.interval[0])}, {_fmt(r.interval[1])}] | {r.verdict} |"
                      for name, best, r in comparisons]
        recall_keys = [k for k in group[0]["metrics"]["recall"] if k.startswith("R@1x")]
        lines += ["", "Recall@1x: " + "; ".join(f"{row['name']} " + ", ".join(f"{k.split('@')[2]}: {_fmt(row['metrics']['recall'][k])}" for k in recall_keys[:3]) for row in group), ""]
        for row in group:
            if row["mlflow"]:
                lines.append(f"MLflow run of {row['name']}: {row['mlflow'].get('url') or row['mlflow'].get('run_id')}")
        lines.append("")
    lines += ["## mAP against tIoU", "", "![mAP vs tIoU](map_vs_tiou.png)", ""]
    lines += ["## Precision/recall (interpolated precision, mean over classes, one line per tIoU)", "",
              "![precision/recall](precision_recall.png)", ""]
    lines += ["## Training curves", "", "![training curves](training_curves.png)", ""]
    lines += ["## Example timelines (green: ground truth, blue: top detections of the first seed)", ""]
    for name, vid, png in timelines:
        lines += [f"**{name}** — {vid}", "", f"![{name}]({png})", ""]
    lines += ["## AP per class (middle threshold)", ""]
    for row in rows:
        per_class = row["metrics"]["AP_per_class"]
        keys = list(next(iter(per_class.values())).keys()) if per_class else []
        if keys:
            mid = keys[len(keys) // 2]
            best = sorted(per_class.items(), key=lambda kv: -kv[1][mid])
            shown = ", ".join(f"{c} {_fmt(v[mid])}" for c, v in best)
            lines += [f"- **{row['name']}** ({mid}): {shown}"]
    lines += ["", "## Data validation", "", "| dataset | result |", "|---|---|"]
    lines += [f"| {name} | {status} |" for name, status in validation]
    return "\n".join(lines) + "\n"


def _html(markdown: str, folder: Path) -> str:
    """A small Markdown subset to HTML, images inlined so the page stands alone."""
    body, in_table = [], False
    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            tag = "th" if not in_table else "td"
            body.append(("<table>" if not in_table else "") + "<tr>" + "".join(f"<{tag}>{_inline(c)}</{tag}>" for c in cells) + "</tr>")
            in_table = True
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("![") and "](" in line:
            src = line[line.index("](") + 2: -1]
            data = base64.b64encode((folder / src).read_bytes()).decode()
            body.append(f'<img alt="{html.escape(src)}" src="data:image/png;base64,{data}">')
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("- "):
            body.append(f"<p>• {_inline(line[2:])}</p>")
        elif line:
            body.append(f"<p>{_inline(line)}</p>")
    if in_table:
        body.append("</table>")
    style = "body{font-family:sans-serif;max-width:1000px;margin:auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}"
    return f"<!doctype html><html><head><meta charset='utf-8'><title>talbench benchmark report</title><style>{style}</style></head><body>{''.join(body)}</body></html>\n"


def _inline(text: str) -> str:
    escaped = html.escape(text)
    while escaped.count("**") >= 2:
        escaped = escaped.replace("**", "<b>", 1).replace("**", "</b>", 1)
    return escaped.replace("`", "")


if __name__ == "__main__":
    sys.exit(main())
