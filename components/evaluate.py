"""Pipeline stage: inference and scoring of one trained experiment, every training seed.

    python components/evaluate.py EXPERIMENT [--params params.yaml] [--outputs outputs]

Writes outputs/EXPERIMENT/predictions/seed-<n>.json (ActivityNet results format, one per seed),
scores.json (what `talbench score` writes, as the mean over seeds, with `seeds`, `std` (the
seed-to-seed spread), `interval` (the bootstrap interval over test videos of the seed mean, for
average mAP and each tIoU's mAP) and `per_seed`), metrics.json (DVC metrics: average mAP with its
spread, mAP per tIoU, Recall@KxN), and the DVC plots map_vs_tiou.csv, pr_curve.csv (class-mean
precision at 101 recall levels, a column per tIoU, mean over seeds) and pr_curve.png; logs config,
curves, scores, plots, tags and the registered model (the reference seed's: the first of
pipeline.seeds) to the experiment's MLflow run, each seed's scores to its seed run (the
experiment run's address in mlflow.json).
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
    from talbench.eval.statistics import bootstrap, combine_seeds, format_seeds, seed_scores
    from talbench.io import recover_outputs, staged_outputs
    from talbench.inference import score_experiment
    from talbench.pipeline import resolve_experiment
    from talbench.tracking import check_reachable
    from talbench.training import load_checkpoint

    exp = resolve_experiment(name, params, outputs)
    recover_outputs(exp.output, "evaluate")
    check_reachable()  # before the work: an unreachable server must not cost an inference
    runs = {}
    for seed in exp.seeds:
        checkpoint = exp.train_dir(seed) / "last.ckpt"
        _, weights, _ = load_checkpoint(checkpoint)
        if seed == exp.seeds[0]:
            reference_weights = weights  # the model registered for the experiment; the others are not kept
        scored = score_experiment(exp, exp.seed_config(seed), weights, checkpoint)
        # the same video resamples for every seed (bootstrap seed SEED): their mean is the seed mean's replicate
        runs[seed] = (scored, bootstrap(scored.truth, scored.predictions, exp.experiment.dataset.tiou_thresholds()))
        print(f"{name}: seed {seed}:\n{format_table(scored.result, scored.label_names)}")
    scores = seed_scores([(seed, scored.scores, spread) for seed, (scored, spread) in runs.items()])
    # every output is made in the staging folder and tracked from there; they replace the
    # earlier ones together, only once MLflow has them too
    with staged_outputs(exp.output, "evaluate") as tmp:
        _write_outputs(tmp, name, {seed: run[0] for seed, run in runs.items()}, scores)
        plots = [tmp / f for f in ("map_vs_tiou.csv", "pr_curve.csv", "pr_curve.png")] + [exp.output / "train_curve.csv"]
        _track(exp, params, reference_weights, scores, [p for p in plots if p.exists()], tmp)
    print(f"{name}: average mAP {format_seeds(combine_seeds([run[1] for run in runs.values()]))} "
          f"(interval over test videos)")
    return scores


def _write_outputs(folder: Path, name: str, scored: dict, scores: dict) -> None:
    import numpy as np

    from talbench.eval.detection import precision_recall_table
    from talbench.plots import save_precision_recall

    (folder / "predictions").mkdir()
    for seed, run in scored.items():
        (folder / "predictions" / f"seed-{seed}.json").write_text(json.dumps(run.results, indent=2) + "\n", encoding="utf-8")
    (folder / "scores.json").write_text(json.dumps(scores, indent=2) + "\n", encoding="utf-8")
    # the headline numbers only: `dvc metrics show` makes a column of every number in the file
    headline = {k: scores[k] for k in ("average_mAP", "mAP", "recall")}
    headline |= {"average_mAP_std": (scores["std"] or {}).get("average_mAP"), "seeds": len(scores["seeds"])}
    (folder / "metrics.json").write_text(json.dumps(headline, indent=2) + "\n", encoding="utf-8")
    with open(folder / "map_vs_tiou.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["tiou", "mAP"])
        writer.writerows(zip((round(float(t), 4) for t in scores["tious"]), scores["mAP"].values()))
    tables = [precision_recall_table(run.result) for run in scored.values()]
    header = tables[0][0]
    mean = np.mean([table for _, table in tables], axis=0).tolist()  # over seeds; recall levels agree
    rows = [[round(row[0], 4), *row[1:]] for row in mean]
    with open(folder / "pr_curve.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])
    curves = {column: [row[i] for row in rows] for i, column in enumerate(header) if i}
    save_precision_recall(folder / "pr_curve.png", [row[0] for row in rows], curves, f"{name}: precision/recall")


def _track(exp, params: Path | None, weights: dict, scores: dict, plots: list[Path], folder: Path) -> None:
    """Everything about this experiment into its MLflow runs; the experiment run's address into `folder`/mlflow.json.

    `weights` are the reference seed's: the model registered for the experiment."""
    from talbench.models import build_model
    from talbench.pipeline import data_hash, tracked_run
    from talbench.tracking import log_experiment_run, log_seed_run, tracking_uri

    parent, run_id = tracked_run(exp.name, params)
    for seed in exp.seeds:
        history = [json.loads(line) for line in (exp.train_dir(seed) / "metrics.jsonl").read_text().splitlines()]
        log_seed_run(run_id, seed, history=history, metrics=scores["per_seed"][str(seed)])
    reference = exp.seed_config(exp.seeds[0])
    model = build_model(reference["model"])
    model.load_state_dict(weights)
    logged = log_experiment_run(
        parent, exp.name, config=reference, metrics=scores,
        dataset=exp.experiment.dataset.name, task=exp.experiment.task, features=exp.experiment.features,
        data_hash=data_hash(exp.experiment.dataset.name, exp.data_dir), plots=plots, files=[folder / "scores.json"], model=model,
        tags={"seeds": ",".join(map(str, exp.seeds)), "model_seed": str(exp.seeds[0])},
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
