"""The `talbench` command line: thin wrappers that do I/O and call the library.

Heavy imports stay inside the commands so `talbench --help` answers at once. Help, --version and
usage errors look as those of the stage commands (talbench.commandline).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from talbench.commandline import OUTPUTS_HELP, PARAMS_HELP, VERSION_HELP, usage_error, version_line
from talbench.errors import BAD_INPUT, InputError, exit_status

# plain help (no rich panels): it is read in logs as often as on a terminal
app = typer.Typer(add_completion=False, rich_markup_mode=None, help="Reproducible temporal action localization benchmarks.")

ParamsOption = Annotated[Optional[Path], typer.Option("--params", help=PARAMS_HELP)]


def _show_version(asked: bool) -> None:
    if asked:
        print(version_line())
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", help=VERSION_HELP, is_eager=True, callback=_show_version)] = False,
) -> None:
    pass


def _twins(params: Optional[Path], likes: list[str], scale: str, seed: int, out: Path, unpack: bool, check_md5: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    from talbench.data.archive import safe_extract
    from talbench.data.fetch import verify_md5
    from talbench.data.registry import load_params, load_registry
    from talbench.data.synthetic import PROFILES, SCALES, recorded_md5, write_twin

    if scale not in SCALES:
        raise InputError("--scale", scale, "scale", f"expected one of {', '.join(SCALES)}")
    registry = load_registry(params)
    _, raw = load_params(params)
    for like in likes:
        if like not in PROFILES:
            from talbench.data.registry import unknown

            raise InputError("LIKE", like, "like", unknown(like, PROFILES))
    stats_table = Table(title=f"Synthetic twins, scale {scale}, seed {seed}")
    for col in ("twin", "subset", "videos", "instances", "classes", "video s", "action s"):
        stats_table.add_column(col, justify="left" if col in ("twin", "subset") else "right")
    archive_table = Table(title=f"Archives in {out}")
    for col in ("archive", "MiB", "files", "md5"):
        archive_table.add_column(col, justify="right" if col in ("MiB", "files") else "left")
    for like in likes:
        summary = write_twin(registry.dataset(like), scale, seed, out)
        expected = recorded_md5(raw, like, scale, seed)
        if check_md5 and expected is not None:
            verify_md5(summary.archive, expected, like)  # before unpacking: a mismatch unpacks nothing
        if unpack:
            safe_extract(summary.archive, out)
        status = "" if expected is None else (" (as recorded)" if expected == summary.md5 else f" (params.yaml has {expected})")
        for subset, stats in summary.subsets.items():
            stats_table.add_row(like, subset, *(str(stats[k]) for k in ("videos", "instances", "classes", "mean_duration_s", "mean_action_s")))
        archive_table.add_row(summary.archive.name, f"{summary.size_bytes / 2**20:.1f}", str(summary.feature_files), summary.md5 + status)
    console = Console()
    console.print(stats_table)
    console.print(archive_table)


# the options of `synth` and `synth-all`
ScaleOption = Annotated[str, typer.Option(help="ci (about a minute of training), small, or full (the real sizes).")]
SeedOption = Annotated[int, typer.Option(help="The same seed gives a byte-identical archive.")]
TwinOutOption = Annotated[Path, typer.Option("--out", help="Folder for the archives and, unpacked, the datasets.")]
UnpackOption = Annotated[bool, typer.Option(help="Also unpack each archive into --out, laid out like the real dataset.")]
CheckMd5Option = Annotated[bool, typer.Option(help="Fail if an archive's md5 differs from the one params.yaml records (seed 0).")]


@app.command()
def synth(
    like: Annotated[str, typer.Argument(help="Which real dataset to twin: thumos14, anet13_tsp, epic100 or ego4d_mq.")],
    scale: ScaleOption = "ci",
    seed: SeedOption = 0,
    out: TwinOutOption = Path("data/synthetic"),
    unpack: UnpackOption = True,
    check_md5: CheckMd5Option = False,
    params: ParamsOption = None,
) -> None:
    """Make the synthetic twin of one dataset, in its real format.

    Writes: OUT/LIKE-SCALE-seedSEED.zip and, with --unpack, the dataset's folder in OUT.
    """
    _twins(params, [like], scale, seed, out, unpack, check_md5)


@app.command("synth-all")
def synth_all(
    scale: ScaleOption = "ci",
    seed: SeedOption = 0,
    out: TwinOutOption = Path("data/synthetic"),
    unpack: UnpackOption = True,
    check_md5: CheckMd5Option = False,
    params: ParamsOption = None,
) -> None:
    """Make the synthetic twins of all four benchmark datasets.

    Prints their statistics and archives.

    Writes: one archive per dataset in OUT and, with --unpack, each dataset's folder in OUT.
    """
    from talbench.data.synthetic import PROFILES

    _twins(params, list(PROFILES), scale, seed, out, unpack, check_md5)


@app.command()
def score(
    annotations: Annotated[Path, typer.Option(help="Ground truth in the ActivityNet/ActionFormer annotation format.")],
    predictions: Annotated[Path, typer.Option(help='Detections in the ActivityNet results format: {"results": {video_id: [{"label", "score", "segment"}]}}.')],
    subset: Annotated[str, typer.Option(help="Subset of the annotations to score against (case-insensitive).")] = "test",
    tiou: Annotated[Optional[str], typer.Option(help="Thresholds: '0.3,0.5,0.7' (exact) or '0.3:0.7:5' (np.linspace, as the reference).")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="Registry dataset (e.g. thumos14): its tIoU thresholds and label space.")] = None,
    top_k: Annotated[str, typer.Option(help="K of Recall@KxN, comma-separated.")] = "1,5",
    out: Annotated[Optional[Path], typer.Option(help="Write the metrics JSON here (atomically).")] = None,
    strict: Annotated[bool, typer.Option(help="Predictions on videos missing from the annotations are an error, not false positives.")] = False,
    per_class: Annotated[bool, typer.Option(help="Also print AP per class.")] = False,
    params: ParamsOption = None,
) -> None:
    """Score detections with the ActivityNet protocol.

    Prints mAP per tIoU, average mAP, Recall@KxN and, with --per-class, AP per class.

    Writes: the metrics JSON to --out, when given (the table is printed either way).
    """
    from talbench.eval.detection import evaluate_detection, format_table, result_to_dict
    from talbench.eval.inputs import ground_truth, load_annotations, load_predictions
    from talbench.io import check_output_file, write_json

    if out is not None:
        check_output_file(out)
    thresholds, num_classes = _protocol(tiou, dataset, params)
    try:
        ks = tuple(int(k) for k in top_k.split(","))
    except ValueError:
        raise InputError("--top-k", top_k, "top_k", "expected comma-separated integers, e.g. 1,5") from None
    gt_file = load_annotations(annotations)
    preds, warnings = load_predictions(predictions, gt_file, strict=strict, num_classes=num_classes)
    result = evaluate_detection(ground_truth(gt_file, subset), preds, thresholds, top_k=ks)
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    print(format_table(result, gt_file.label_names, per_class=per_class))
    if out is not None:
        write_json(out, result_to_dict(result, gt_file.label_names))


def _protocol(tiou: Optional[str], dataset: Optional[str], params: Optional[Path]):
    """The tIoU thresholds, and the label space (None: the annotations'), from --tiou or a registry dataset."""
    if tiou is not None and dataset is not None:
        raise InputError("--tiou", tiou, "tiou", "give either --tiou or --dataset, not both")
    if dataset is None:
        return _parse_tious(tiou or "0.5:0.95:10"), None
    from talbench.data.registry import load_registry

    spec = load_registry(params).dataset(dataset)
    # the dataset's whole label space: a predicted class without ground truth is not a typo
    return spec.tiou_thresholds(), max(task.num_classes for task in spec.tasks.values())


def _prediction_files(path: Path) -> list[Path]:
    """A predictions file, or a folder of them (one per training seed: outputs/<experiment>/predictions)."""
    if not path.is_dir():
        return [path]
    files = sorted(path.glob("*.json"))
    if not files:
        raise InputError(path, "-", "predictions", "a folder without prediction files (*.json)")
    return files


def _compared_predictions(paths: tuple[Path, Path], annotations, subset: str, videos: set[str], num_classes: int | None) -> list:
    """Both sides' prediction sets (a list per side: one per seed), refused unless they all list the same
    videos, all of them `subset` videos: the paired bootstrap resamples test videos, so each must be
    one, and scored for every set."""
    from talbench.data.formats import read_json, top_level
    from talbench.eval.inputs import parse_predictions

    first, loaded = None, []
    for side in paths:
        sets = []
        for path in _prediction_files(side):
            obj = read_json(path)
            preds, _ = parse_predictions(obj, annotations, path, strict=True, num_classes=num_classes)  # strict: unknown videos are errors
            results = top_level(obj, path, "results")
            outside = next((video for video in results if video not in videos), None)
            if outside is not None:
                problem = f"not a '{subset}' video of {annotations.path}: the bootstrap resamples the {len(videos)} '{subset}' videos only"
                raise InputError(path, outside, "video id", problem)
            first = first or (path, set(results))
            only_first, only_here = sorted(first[1] - set(results)), sorted(set(results) - first[1])
            if only_first or only_here:
                video, where = (only_first[0], f"listed in {first[0]} but not here") if only_first else (only_here[0], f"not listed in {first[0]}")
                raise InputError(path, video, "video id", f"{where}: A and B must be scored on the same test videos")
            sets.append(preds)
        loaded.append(sets)
    return loaded


@app.command()
def compare(
    a: Annotated[Path, typer.Argument(metavar="A", help="Predictions A (ActivityNet results JSON), or a folder of them, one per training seed (outputs/<experiment>/predictions): then A is their seed mean.")],
    b: Annotated[Path, typer.Argument(metavar="B", help="Predictions B (a file or a folder), on the same test videos.")],
    gt: Annotated[Path, typer.Option("--gt", help="Ground truth (annotation file) both are scored against.")],
    subset: Annotated[str, typer.Option(help="Subset of the annotations: the test videos resampled (case-insensitive).")] = "test",
    tious: Annotated[Optional[str], typer.Option("--tious", "--tiou", help="Thresholds: '0.3,0.5,0.7' or '0.3:0.7:5' (default ActivityNet's 0.5:0.95:10).")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="Registry dataset (e.g. ego4d_mq): its tIoU thresholds and label space.")] = None,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples of the test videos.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the resamples: the same seed gives the same result.")] = 0,
    level: Annotated[float, typer.Option(help="Confidence level of the intervals and the verdict.")] = 0.95,
    out: Annotated[Optional[Path], typer.Option(help="Write the comparison JSON here (atomically).")] = None,
    params: ParamsOption = None,
) -> None:
    """Compare two sets of predictions by a paired bootstrap.

    Resamples the test videos: is A's average mAP (or seed mean) better than B's, worse, or not distinguishable?

    Writes: the comparison JSON to --out, when given (the verdict is printed either way).
    """
    from talbench.eval.inputs import ground_truth, load_annotations
    from talbench.eval.statistics import comparison_to_dict, format_comparison, paired_bootstrap
    from talbench.io import check_output_file, write_json

    if out is not None:
        check_output_file(out)
    if resamples < 1:
        raise InputError("--resamples", str(resamples), "resamples", "expected a positive number of resamples, e.g. 1000")
    if not 0.0 < level < 1.0:
        raise InputError("--level", str(level), "level", "expected a confidence level between 0 and 1, e.g. 0.95")
    thresholds, num_classes = _protocol(tious, dataset, params)
    annotations = load_annotations(gt)
    truth = ground_truth(annotations, subset)
    preds_a, preds_b = _compared_predictions((a, b), annotations, subset, set(truth.videos.tolist()), num_classes)
    try:
        result = paired_bootstrap(truth, preds_a, truth, preds_b, thresholds, resamples=resamples, seed=seed, level=level)
    except ValueError as exc:  # a resample without ground truth: too few annotated test videos
        raise InputError(gt, f"subset '{subset}'", "annotations", str(exc)) from None
    print(format_comparison(result, str(a), str(b)))
    if out is not None:
        write_json(out, comparison_to_dict(result, str(a), str(b)))


SetOption = Annotated[Optional[list[str]], typer.Option("--set", help="Override a config value, e.g. --set opt.epochs=3 (repeatable).")]
DeviceOption = Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:1 ... (default: CUDA when present).")]


def _overrides(pairs: Optional[list[str]]) -> dict:
    import yaml

    result = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError("--set", pair, "set", "expected section.key=value")
        result[key] = yaml.safe_load(value)
    return result


def _config(config: Path, params: Optional[Path], sets: Optional[list[str]]) -> dict:
    from talbench.config import load_config
    from talbench.data.registry import load_registry

    resolved, notes = load_config(config, load_registry(params), _overrides(sets))
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return resolved


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="An ActionFormer YAML config (the published layout).")],
    output: Annotated[Path, typer.Option("--out", "--output", help="Run folder: checkpoints (last.ckpt), config.yaml, metrics.jsonl.")],
    resume: Annotated[bool, typer.Option(help="Continue from OUT/last.ckpt if it exists.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Start over in a folder that holds a run; its files are replaced when the first epoch ends.")] = False,
    device: DeviceOption = None,
    sets: SetOption = None,
    params: ParamsOption = None,
) -> None:
    """Train ActionFormer from a config; works under torchrun.

    A checkpoint is written atomically every epoch.

    Writes: OUT/last.ckpt (every epoch), OUT/config.yaml and OUT/metrics.jsonl (a line per epoch).
    """
    from talbench.training import train as run_training

    if resume and overwrite:
        raise InputError("--overwrite", "-", "overwrite", "--resume continues a run, --overwrite starts over: give one")
    summary = run_training(_config(config, params, sets), output, resume=resume, overwrite=overwrite, device=device)
    if "history" in summary and summary["history"]:
        last = summary["history"][-1]
        print(f"trained {summary['steps']} iterations in {summary['seconds']:.0f} s ({summary['precision']}); last epoch loss {last['final_loss']:.4f}; checkpoint {output / 'last.ckpt'}")


@app.command()
def infer(
    config: Annotated[Path, typer.Argument(help="The ActionFormer YAML config (its data paths are used).")],
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint written by `talbench train`.")],
    out: Annotated[Path, typer.Option(help="Detections in the ActivityNet results format.")],
    split: Annotated[str, typer.Option(help="test (the config's val_split), train, or a subset name.")] = "test",
    device: DeviceOption = None,
    raw_weights: Annotated[bool, typer.Option(help="Use the raw weights instead of the EMA weights.")] = False,
    sets: SetOption = None,
    params: ParamsOption = None,
) -> None:
    """Detect actions in every video of a split.

    Writes: OUT, the detections in the ActivityNet results format (what `talbench score` reads).
    """
    from talbench.data.dataset import VideoDataset
    from talbench.inference import check_class_agnostic, predict
    from talbench.io import check_output_file, write_json
    from talbench.training import load_checkpoint, pick_device, init_distributed

    check_output_file(out)
    resolved = _config(config, params, sets)
    dev = pick_device(device, init_distributed())
    subsets = {"test": resolved["val_split"], "train": resolved["train_split"]}.get(split, [split])
    _, weights, which = load_checkpoint(checkpoint, "cpu", prefer_ema=not raw_weights)
    dataset = VideoDataset(resolved["dataset"], subsets, is_training=False)
    if problem := check_class_agnostic(resolved, dataset.label_names):
        raise InputError(config, "test_cfg", "ext_score_file", problem)
    results = predict(resolved, weights, dataset, dev, source=checkpoint)
    write_json(out, results)
    print(f"{len(results['results'])} videos, {sum(map(len, results['results'].values()))} detections ({which} weights) -> {out}")


def _parse_tious(spec: str):
    from talbench.eval.detection import tiou_thresholds

    try:
        return tiou_thresholds(spec)
    except ValueError as exc:
        raise InputError("--tiou", spec, "tiou", str(exc)) from None


@app.command()
def summary(
    outputs: Annotated[Path, typer.Option(help=OUTPUTS_HELP)] = Path("outputs"),
    report: Annotated[Path, typer.Option(help="Folder of the benchmark report (the report stage's --out).")] = Path("reports/benchmark"),
    started: Annotated[Optional[float], typer.Option(help="When the run began, in seconds since the epoch (`date +%s`): adds the total wall time.")] = None,
    params: ParamsOption = None,
) -> None:
    """Print one table of the results of every experiment.

    For each experiment of params.yaml: average mAP (mean ± std over the training seeds), the
    seeds, training and inference time per seed; then where the report and the MLflow runs are.
    `make run` prints it after `dvc repro`. An experiment without scores (its evaluate stage did
    not finish) is an error.

    Writes: nothing.
    """
    from talbench.data.registry import load_params
    from talbench.eval.detection import text_table
    from talbench.pipeline import experiment_names
    from talbench.progress import format_duration

    _, raw = load_params(params)
    results = {name: _experiment_results(outputs / name, name) for name in experiment_names(raw)}
    header = ["experiment", "average mAP (%)", "seeds", "train / seed", "infer / seed"]
    print("\n".join(text_table(header, [[name, *_summary_cells(scores)] for name, (scores, _) in results.items()])))
    if started is not None:
        import time

        print(f"total wall time: {format_duration(time.time() - started)}")
    pages = sorted(str(page) for page in (*report.glob("*.html"), *report.glob("*.md")))
    print(f"report: {', '.join(pages) if pages else f'none in {report}: the report stage has not run'}")
    for store in sorted({tracked["tracking_uri"] for _, tracked in results.values() if tracked}):
        hint = "" if store.startswith("http") else f" (browse: mlflow ui --backend-store-uri {store})"
        print(f"MLflow: {store}{hint}")


def _experiment_results(folder: Path, name: str) -> tuple[dict, dict | None]:
    """An experiment's scores.json with its timing.json as `timing`, and mlflow.json (None when not
    tracked); no scores is an error."""
    from talbench.data.formats import read_json

    path = folder / "scores.json"
    if not path.is_file():
        raise InputError(path, name, "scores", "missing: the experiment's evaluate stage has not finished; run `make run` (dvc repro)")
    scores = read_json(path)
    for key in ("average_mAP", "seeds"):
        if key not in scores:
            raise InputError(path, name, key, "missing: written by an older evaluate stage; run it again (dvc repro)")
    from talbench.pipeline import TIMING_RECORD

    timing = folder / TIMING_RECORD
    scores["timing"] = read_json(timing) if timing.is_file() else {}
    tracked = folder / "mlflow.json"
    return scores, read_json(tracked) if tracked.is_file() else None


def _summary_cells(scores: dict) -> list[str]:
    """average mAP ± its seed-to-seed std (in %), seeds, mean train and infer time per seed."""
    from talbench.progress import format_duration

    std = (scores.get("std") or {}).get("average_mAP")
    value = f"{100 * scores['average_mAP']:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")
    timing = scores.get("timing") or {}
    times = [format_duration(timing[key]) if key in timing else "-" for key in ("train_s", "infer_s")]
    return [value, ",".join(map(str, scores["seeds"])), *times]


def main() -> None:
    command = typer.main.get_command(app)
    try:
        status = exit_status(lambda: command.main(sys.argv[1:] or ["--help"], prog_name="talbench", standalone_mode=False))
    except typer.TyperException as exc:  # a mistake in the command line itself (click's usage errors)
        where = exc.ctx.command_path if getattr(exc, "ctx", None) else "talbench"
        print(usage_error(where, exc.format_message()), file=sys.stderr)
        status = BAD_INPUT
    sys.exit(status)


if __name__ == "__main__":
    main()
