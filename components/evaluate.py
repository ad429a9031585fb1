"""Pipeline stage: inference and scoring of one trained experiment.

    python components/evaluate.py EXPERIMENT [--params params.yaml] [--outputs outputs]

Writes outputs/EXPERIMENT/predictions.json (ActivityNet results format), scores.json (what
`talbench score` writes: mAP and AP per class per tIoU, Recall@KxN, counts; plus `interval`, the
bootstrap intervals over test videos of average mAP and each tIoU's mAP), metrics.json (DVC
metrics: average mAP, mAP per tIoU, Recall@KxN), and the DVC plots map_vs_tiou.csv,
pr_curve.csv (class-mean precision at 101 recall levels, a column per tIoU) and pr_curve.png;
logs config, curves, scores, plots, tags and the registered model to the experiment's MLflow run
(its address in mlflow.json).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from talbench.errors import exit_status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Infer and score one trained experiment.")
    parser.add_argument("experiment")
    parser.add_argument("--params", type=Path, default=None)
    parser.add_argument("--outputs", type=Path, default=Path("outputs"))
    args = parser.parse_args(argv)
    return exit_status(lambda: evaluate(args.experiment, args.params, args.outputs))


def evaluate(name: str, params: Path | None, outputs: Path) -> dict:
    from talbench.eval.detection import format_table
    from talbench.eval.statistics import bootstrap, interval_record
    from talbench.io import recover_outputs, staged_outputs
    from talbench.inference import score_experiment
    from talbench.pipeline import resolve_experiment
    from talbench.tracking import check_reachable
    from talbench.training import load_checkpoint

    exp = resolve_experiment(name, params, outputs)
    recover_outputs(exp.output, "evaluate")
    check_reachable()  # before the work: an unreachable server must not cost an inference
    config = exp.config
    checkpoint = exp.output / "train" / "last.ckpt"
    _, weights, _ = load_checkpoint(checkpoint)
    scored = score_experiment(exp, config, weights, checkpoint)
    print(format_table(scored.result, scored.label_names))
    # one training run's numbers carry their uncertainty over test videos (scores.json, MLflow)
    spread = bootstrap(scored.truth, scored.predictions, exp.experiment.dataset.tiou_thresholds())
    scores = {**scored.scores, "interval": interval_record(spread)}
    # every output is made in the staging folder and tracked from there; they replace the
    # earlier ones together, only once MLflow has them too
    with staged_outputs(exp.output, "evaluate") as tmp:
        _write_outputs(tmp, name, scored.results, scores, scored.result)
        plots = [tmp / f for f in ("map_vs_tiou.csv", "pr_curve.csv", "pr_curve.png")] + [exp.output / "train_curve.csv"]
        _track(exp, params, config, weights, scores, [p for p in plots if p.exists()], tmp)
    low, high = spread.interval
    print(f"{name}: average mAP {100 * scores['average_mAP']:.2f} ({100 * spread.level:g}% interval over test videos "
          f"[{100 * low:.2f}, {100 * high:.2f}], one training seed)")
    return scores


def _write_outputs(folder: Path, name: str, results: dict, scores: dict, result) -> None:
    from talbench.eval.detection import precision_recall_table
    from talbench.plots import save_precision_recall

    (folder / "predictions.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (folder / "scores.json").write_text(json.dumps(scores, indent=2) + "\n", encoding="utf-8")
    # the headline numbers only: `dvc metrics show` makes a column of every number in the file
    headline = {k: scores[k] for k in ("average_mAP", "mAP", "recall")}
    (folder / "metrics.json").write_text(json.dumps(headline, indent=2) + "\n", encoding="utf-8")
    with open(folder / "map_vs_tiou.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["tiou", "mAP"])
        writer.writerows(zip((round(float(t), 4) for t in result.tious), (float(m) for m in result.mAP)))
    header, rows = precision_recall_table(result)
    with open(folder / "pr_curve.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])
    curves = {column: [row[i] for row in rows] for i, column in enumerate(header) if i}
    save_precision_recall(folder / "pr_curve.png", [row[0] for row in rows], curves, f"{name}: precision/recall")


def _track(exp, params: Path | None, config: dict, weights: dict, scores: dict, plots: list[Path], folder: Path) -> None:
    """Everything about this experiment into its MLflow run; the run's address into `folder`/mlflow.json."""
    from talbench.models import build_model
    from talbench.pipeline import data_hash, tracked_run
    from talbench.tracking import log_experiment_run, tracking_uri

    parent, _ = tracked_run(exp.name, params)
    model = build_model(config["model"])
    model.load_state_dict(weights)
    history = [json.loads(line) for line in (exp.output / "train" / "metrics.jsonl").read_text().splitlines()]
    logged = log_experiment_run(
        parent, exp.name, config=config, history=history, metrics=scores,
        dataset=exp.experiment.dataset.name, task=exp.experiment.task, features=exp.experiment.features,
        data_hash=data_hash(exp.experiment.dataset.name, exp.data_dir), plots=plots, files=[folder / "scores.json"], model=model,
    )
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    experiment_id = MlflowClient(tracking_uri=uri).get_run(logged.run_id).info.experiment_id
    # the UI's address of the run: on a tracking server directly, locally under `mlflow ui`
    base = uri.rstrip("/") if uri.startswith("http") else "http://127.0.0.1:5000"
    url = f"{base}/#/experiments/{experiment_id}/runs/{logged.run_id}"
    record = {"tracking_uri": uri, "run_id": logged.run_id, "parent_run_id": parent, "model": logged.model_name,
              "model_version": logged.model_version, "url": url}
    (folder / "mlflow.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
