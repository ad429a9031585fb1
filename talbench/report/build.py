"""Collect every experiment's outputs and write the report folder: benchmark.md, benchmark.html
(images inlined) and the PNG figures beside the Markdown; all of it at once or nothing."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from talbench.errors import InputError
from talbench.report import figures, tables
from talbench.report.document import Block, Figure, Heading, Table, Text, contents, to_html, to_markdown
from talbench.report.inputs import (
    Result,
    read_curve,
    read_json,
    read_precision_recall,
    read_scores,
    read_tracking,
    split_facts,
    validation,
)
from talbench.report.metadata import LOCAL_UI, device, local_store, relative, run_link, ui_base, versions

TITLE = "talbench benchmark report"
TIMELINE_DETECTIONS = (5, 10)  # at least, at most: as many as the video has instances, within these


@dataclass(frozen=True)
class Written:
    html: Path
    markdown: Path
    experiments: list[str]
    summary: dict[str, float]  # headline metrics of the invocation, for its MLflow parent run


@dataclass
class _Context:
    """What the sections share: the params, where the report lands, and the run's facts."""

    params: dict[str, Any]
    out: Path
    folder: Path  # where the files are being written (renamed to `out` at the end)
    validation_dir: Path
    mlflow_base: str | None
    annotations: dict[str, Any]  # annotation file -> its parsed Annotations
    started: float


def collect(params_path: Path | None, outputs: Path) -> tuple[dict[str, Any], list[Result], dict[str, Any]]:
    """Every experiment of params.yaml, in its order, with its test split; and the parsed annotation files."""
    from talbench.data.registry import load_params
    from talbench.eval.inputs import load_annotations
    from talbench.io import recover_outputs
    from talbench.data.fetch import data_hash
    from talbench.pipeline import resolve_experiment, training_seeds

    _, params = load_params(params_path)
    seeds = training_seeds(params)
    results, annotations = [], {}
    for name in params.get("experiments") or {}:
        exp = resolve_experiment(name, params_path, outputs)
        folder = exp.output
        recover_outputs(folder)  # a stage killed while committing its complete outputs: finish it
        scores = read_scores(folder / "scores.json", name, seeds)
        json_file, subset = exp.config["dataset"]["json_file"], exp.config["val_split"][0]
        if json_file not in annotations:
            annotations[json_file] = load_annotations(json_file)
        num_classes = exp.experiment.dataset.tasks[exp.experiment.task].num_classes
        results.append(Result(
            name=name, dataset=exp.experiment.dataset.name, title=exp.experiment.dataset.title, scores=scores,
            published=(params.get("published") or {}).get(name),
            precision_recall=read_precision_recall(folder / "pr_curve.csv", name),
            history=read_curve(folder / "train_curve.csv", name),
            mlflow=read_tracking(folder / "mlflow.json", name),
            predictions=[read_json(exp.predictions(seed), name)["results"] for seed in seeds],
            split=split_facts(annotations[json_file], subset, num_classes, scores),
            test_set=(json_file, subset), num_classes=num_classes,
            data_version=data_hash(exp.experiment.dataset.name, exp.data_dir), folder=folder,
        ))
    if not results:
        raise InputError(params_path or "params.yaml", "experiments", "experiments", "no experiments to report")
    return params, results, annotations


def compare(results: list[Result], annotations: dict[str, Any]) -> None:
    """Each experiment against the best (by average mAP) scored on the same test videos, seed means paired."""
    from talbench.eval.inputs import ground_truth, parse_predictions
    from talbench.eval.statistics import compare_bootstraps, seed_mean_bootstrap

    for test_set in dict.fromkeys(r.test_set for r in results):
        same = [r for r in results if r.test_set == test_set]
        if len(same) < 2:
            continue
        best = max(same, key=lambda r: r.scores["average_mAP"])
        ann = annotations[test_set[0]]
        truth = ground_truth(ann, test_set[1])
        tious = [float(t) for t in best.scores["tious"]]

        def parsed(r: Result) -> list[Any]:
            return [parse_predictions({"results": p}, ann, r.folder / "predictions", num_classes=r.num_classes)[0]
                    for p in r.predictions]

        # each side resampled once, however many it is compared with: the same draws pair them
        best_boot = seed_mean_bootstrap(truth, parsed(best), tious)
        for r in same:
            if r is not best:
                r.comparison = (best.name, compare_bootstraps(seed_mean_bootstrap(truth, parsed(r), tious), best_boot))


def _run_section(ctx: _Context, results: list[Result]) -> list[Block]:
    from talbench.pipeline import training_seeds
    from talbench.tracking.mlflow_tracking import git_commit

    params = ctx.params
    seeds = training_seeds(params)
    source = (params.get("data") or {}).get("source", "synthetic")
    synthetic = params.get("synthetic") or {}
    data = (f"synthetic twins (scale `{synthetic.get('scale')}`, seed `{synthetic.get('seed')}`)" if source == "synthetic"
            else "the real datasets")
    versions_of = dict.fromkeys((r.dataset, r.data_version) for r in results)
    timing = [r.scores["timing"] for r in results]
    train = sum(t["train_s"] * len(seeds) for t in timing if t["train_s"] is not None)  # none: no training record
    infer = sum(t["infer_s"] * len(seeds) for t in timing if t["infer_s"] is not None)
    lines = [
        f"- **Date**: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- **Code**: git commit `{git_commit()}`",
        f"- **Data**: {data}; data versions (archive md5): " + ", ".join(f"{d} `{v}`" for d, v in versions_of),
        f"- **Device**: {device()}",
        "- **Libraries**: " + ", ".join(f"{k} {v}" for k, v in versions().items()),
        f"- **Wall time**: training {train:.0f} s, inference and scoring {infer:.0f} s (all experiments and seeds); "
        f"this report {time.monotonic() - ctx.started:.0f} s",
        f"- **Seeds**: {_seeds_sentence(seeds)}",
        f"- **MLflow**: {_mlflow_line(ctx, results)}",
    ]
    return [Heading(2, "Run"), Text("\n".join(lines))]


def _seeds_sentence(seeds: list[int]) -> str:
    from talbench.eval.statistics import LEVEL, RESAMPLES, SEED

    if len(seeds) > 1:
        text = (f"each experiment is trained with {len(seeds)} seeds (pipeline.seeds: {', '.join(map(str, seeds))}): its "
                f"numbers are means over the seeds, ± the standard deviation between seeds.")
    else:
        text = (f"each experiment is one training run (seed {seeds[0]}): single-seed numbers, the spread over seeds is "
                f"not measured (set pipeline.seeds to several seeds).")
    return text + (f" Intervals are {100 * LEVEL:g}% bootstrap intervals over the test videos of the seed mean "
                   f"({RESAMPLES} resamples, seed {SEED}, basic bootstrap).")


def _mlflow_line(ctx: _Context, results: list[Result]) -> str:
    record = next((r.mlflow for r in results if r.mlflow), None)
    if record is None:
        return "not tracked"
    parent = run_link(record, ctx.mlflow_base, record["parent_run_id"])
    if ctx.mlflow_base:
        return f"the parent {parent} of this invocation, with one child run per experiment"
    return (f"the parent {parent} of this invocation, one child run per experiment, in the store "
            f"`{local_store(record['tracking_uri'])}`. Open it with `{LOCAL_UI.format(uri=local_store(record['tracking_uri']))}` "
            f"(set `report.mlflow_url` in params.yaml, or TALBENCH_MLFLOW_UI_URL, to the UI's address to get links here)")


def _dataset_section(ctx: _Context, title: str, group: list[Result], level: str) -> list[Block]:
    blocks: list[Block] = [Heading(3, title), tables.map_table(group, level)]
    if comparison := tables.comparison_table(group, level):
        blocks.append(comparison)
    blocks.append(tables.recall_table(group))
    links = [f"- **{r.name}**: MLflow {run_link(r.mlflow, ctx.mlflow_base) if r.mlflow else 'not tracked'}; "
             + ", ".join(f"[{label}]({relative(r.folder / file, ctx.out)})" for label, file in _ARTEFACTS)
             for r in group]
    links.append(f"- **{group[0].dataset} data**: {_validation_status(ctx, group[0].dataset)}")
    return blocks + [Text("Runs and artefacts:\n\n" + "\n".join(links))]


_ARTEFACTS = (("scores", "scores.json"), ("DVC metrics", "metrics.json"), ("predictions", "predictions"),
              ("precision/recall", "pr_curve.png"), ("training curve", "train_curve.csv"))


def _validation_status(ctx: _Context, dataset: str) -> str:
    result = validation(dataset, ctx.validation_dir)
    if result is None:
        return "not validated"
    checks = result["expectations"]
    status = f"{'passed' if result['success'] else 'FAILED'} ({sum(bool(c.get('success')) for c in checks)}/{len(checks)} expectations)"
    docs = result.get("data_docs")
    link = f", [Data Docs]({relative(docs, ctx.out)})" if docs and Path(docs).exists() else ", no Data Docs"
    return f"validation {status}{link}"


def _figures(ctx: _Context, results: list[Result]) -> list[Block]:
    figures.map_vs_tiou(results, ctx.folder / "map_vs_tiou.png")
    figures.precision_recall(results, ctx.folder / "precision_recall.png")
    figures.training_curves(results, ctx.folder / "training_curves.png")
    return [
        Heading(2, "Figures"),
        Heading(3, "mAP against tIoU"),
        Figure("map_vs_tiou.png", "mAP against tIoU, a panel per dataset",
               "Solid: ours (mean over seeds); dashed, open markers: published (real data)."),
        Heading(3, "Precision and recall"),
        Figure("precision_recall.png", "precision/recall per experiment",
               "Interpolated precision, mean over classes and seeds, one line per tIoU threshold."),
        Heading(3, "Training curves"),
        Figure("training_curves.png", "training losses per dataset",
               "Classification (top) and regression (bottom) loss per epoch, mean over seeds."),
        Heading(3, "Detections on one test video"),
        Text("Per dataset, the test video with the most instances; per experiment, the top-scored detections of the "
             "reference seed with their class and score, green where they match an instance of their class at "
             "tIoU 0.5 (each instance matched once, highest score first), red where not."),
        *_timelines(ctx, results),
    ]


def _timelines(ctx: _Context, results: list[Result]) -> list[Block]:
    blocks: list[Block] = []
    for r in results:
        ann = ctx.annotations[r.test_set[0]]
        videos = {v: a for v, a in ann.videos.items() if a.subset.lower() == r.test_set[1].lower() and a.instances}
        video = max(videos, key=lambda v: (len(videos[v].instances), v))
        truth = [(a.label, a.start, a.end) for a in videos[video].instances]
        shown = min(TIMELINE_DETECTIONS[1], max(TIMELINE_DETECTIONS[0], len(truth)))
        detections = sorted(r.predictions[0].get(video, []), key=lambda d: -d["score"])[:shown]
        named = [d | {"label": ann.label_names.get(d["label"], str(d["label"])) if isinstance(d["label"], int) else d["label"]}
                 for d in detections]
        duration = videos[video].duration or max(end for _, _, end in truth)
        drawn = figures.timeline(video, duration, truth, named, ctx.folder / f"timeline_{r.name}.png")
        blocks += [Text(f"**{r.name}**: {drawn['right']} of the top {drawn['detections']} detections match one of the "
                        f"{drawn['instances']} instances of {video}."),
                   Figure(f"timeline_{r.name}.png", f"timeline of {r.name} on {video}")]
    return blocks


def _class_sections(results: list[Result]) -> list[Block]:
    blocks: list[Block] = [Heading(2, "AP per class")]
    for test_set in dict.fromkeys(r.test_set for r in results):
        group = [r for r in results if r.test_set == test_set]
        split = group[0].split
        blocks += [Heading(3, f"{group[0].title}, {Path(test_set[0]).stem} ({test_set[1]})"),
                   Text(tables.unscored_classes(split, group[0].num_classes)), tables.class_table(group)]
    return blocks


def _validation_section(ctx: _Context) -> list[Block]:
    rows = [[dataset, _validation_status(ctx, dataset)] for dataset in (ctx.params.get("pipeline") or {}).get("datasets", [])]
    return [Heading(2, "Data validation"), Table(["dataset", "result"], rows, text_columns=2)]


def _blocks(ctx: _Context, results: list[Result]) -> list[Block]:
    from talbench.eval.statistics import LEVEL

    level = f"{100 * LEVEL:g}%"
    source = (ctx.params.get("data") or {}).get("source", "synthetic")
    intro = ("Numbers are for the synthetic twins of the datasets; published numbers are for the real datasets and are "
             "shown for orientation only." if source == "synthetic" else "Numbers are for the real datasets.")
    body: list[Block] = [Heading(2, "Summary"), tables.summary_table(results), Heading(2, "Results per dataset")]
    for title, group in figures.by_dataset(results).items():
        body += _dataset_section(ctx, title, group, level)
    body += _figures(ctx, results) + _class_sections(results) + _validation_section(ctx)
    body = _run_section(ctx, results) + body  # last: its wall time includes the figures'
    return [Heading(1, TITLE), Text(intro), Heading(2, "Contents"), contents(body), *body]


def summary(results: list[Result], report_s: float) -> dict[str, float]:
    """The invocation's headline metrics: each experiment's average mAP (and its seed spread)."""
    out = {f"average_mAP/{r.name}": float(r.scores["average_mAP"]) for r in results}
    out |= {f"average_mAP_std/{r.name}": float(r.scores["std"]["average_mAP"]) for r in results if r.scores["std"]}
    return out | {"report_s": report_s}


def write_report(params_path: Path | None, outputs: Path, validation_dir: Path, out: Path) -> Written:
    from talbench.io import atomic_path

    started = time.monotonic()
    params, results, annotations = collect(params_path, outputs)
    compare(results, annotations)
    base = None
    if record := next((r.mlflow for r in results if r.mlflow), None):
        base = ui_base((params.get("report") or {}).get("mlflow_url"), record["tracking_uri"])
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        ctx = _Context(params, out, tmp, validation_dir, base, annotations, started)
        blocks = _blocks(ctx, results)
        report_s = time.monotonic() - started
        (tmp / "benchmark.md").write_text(to_markdown(blocks), encoding="utf-8")
        (tmp / "benchmark.html").write_text(to_html(blocks, tmp, TITLE), encoding="utf-8")
    return Written(out / "benchmark.html", out / "benchmark.md", [r.name for r in results], summary(results, report_s))
