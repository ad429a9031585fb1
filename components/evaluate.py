"""Pipeline stage: inference and scoring of one trained experiment, every training seed.

    python components/evaluate.py EXPERIMENT [--params params.yaml] [--outputs outputs]

Writes outputs/EXPERIMENT/predictions/seed-<n>.json (ActivityNet results format, one per seed),
scores.json (what `talbench score` writes, as the mean over seeds, with `seeds`, `std` (the
seed-to-seed spread), `interval` (the bootstrap interval over test videos of the seed mean, for
average mAP and each tIoU's mAP) and `per_seed`), timing.json (seconds of training and of
inference + scoring per seed, and their means: a record of this run, as mlflow.json), metrics.json (DVC metrics, versioned in git:
average mAP with its spread over seeds, mAP and Recall@1x at tIoU 0.5, the number of seeds), and the DVC plots map_vs_tiou.csv, pr_curve.csv (class-mean
precision at 101 recall levels, a column per tIoU, mean over seeds) and pr_curve.png; logs config,
curves, scores, plots, predictions, the stage's log, tags, the dataset inputs and the registered
model (the reference seed's: the first of pipeline.seeds) to the experiment's MLflow run, each
seed's scores and times to its seed run (the experiment run's address in mlflow.json).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from talbench.commandline import OUTPUTS_HELP, PARAMS_HELP, StageParser
from talbench.errors import exit_status


def arguments() -> StageParser:
    parser = StageParser("evaluate", "Detect and score one trained experiment, every training seed; track it in MLflow.",
                         writes="OUTPUTS/EXPERIMENT/: predictions/seed-<n>.json, scores.json, metrics.json, mlflow.json, timing.json, "
                                "map_vs_tiou.csv, pr_curve.csv and pr_curve.png.")
    parser.add_argument("experiment", help="An experiment of params.yaml whose train stage has run, e.g. thumos14-i3d.")
    parser.add_argument("--params", type=Path, default=None, help=PARAMS_HELP)
    parser.add_argument("--outputs", type=Path, default=Path("outputs"), help=OUTPUTS_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = arguments().parse_args(argv)
    return exit_status(lambda: evaluate(args.experiment, args.params, args.outputs))


def evaluate(name: str, params: Path | None, outputs: Path) -> dict:
    import tempfile
    import time

    from talbench.eval.detection import format_table
    from talbench.eval.statistics import bootstrap, combine_seeds, format_seeds, seed_scores
    from talbench.io import recover_outputs, staged_outputs
    from talbench.inference import score_experiment
    from talbench.pipeline import TIMING_RECORD, resolve_experiment
    from talbench.tracking import check_reachable, stage_log
    from talbench.training import load_checkpoint

    exp = resolve_experiment(name, params, outputs)
    recover_outputs(exp.output, "evaluate")
    check_reachable()  # before the work: an unreachable server must not cost an inference
    runs, infer_s = {}, {}
    with tempfile.TemporaryDirectory() as logs, stage_log(Path(logs) / "evaluate.log"):
        for seed in exp.seeds:
            checkpoint = exp.train_dir(seed) / "last.ckpt"
            _, weights, _ = load_checkpoint(checkpoint)
            if seed == exp.seeds[0]:
                reference_weights = weights  # the model registered for the experiment; the others are not kept
            started = time.perf_counter()
            scored = score_experiment(exp, exp.seed_config(seed), weights, checkpoint)
            infer_s[seed] = time.perf_counter() - started
            # the same video resamples for every seed (bootstrap seed SEED): their mean is the seed mean's replicate
            runs[seed] = (scored, bootstrap(scored.truth, scored.predictions, exp.experiment.dataset.tiou_thresholds()))
            print(f"{name}: seed {seed}:\n{format_table(scored.result, scored.label_names)}")
        scores = seed_scores([(seed, scored.scores, spread) for seed, (scored, spread) in runs.items()])
        timing = _timing(exp, infer_s)
        # every output is made in the staging folder and tracked from there; they replace the
        # earlier ones together, only once MLflow has them too
        with staged_outputs(exp.output, "evaluate") as tmp:
            _write_outputs(tmp, name, {seed: run[0] for seed, run in runs.items()}, scores)
            (tmp / TIMING_RECORD).write_text(json.dumps(timing, indent=2) + "\n", encoding="utf-8")
            plots = [tmp / f for f in ("map_vs_tiou.csv", "pr_curve.csv", "pr_curve.png")] + [exp.output / "train_curve.csv"]
            _track(exp, params, reference_weights, {**scores, "timing": timing}, [p for p in plots if p.exists()], tmp, Path(logs))
    print(f"{name}: average mAP {format_seeds(combine_seeds([run[1] for run in runs.values()]))} "
          f"(interval over test videos)")
    return scores


def _timing(exp, infer_s: dict[int, float]) -> dict:
    """timing.json: seconds of training (from each seed's training record) and of
    inference + scoring per seed, and their means (null where a seed has no training record)."""
    from talbench.pipeline import read_train_record

    train_s = {seed: read_train_record(exp.train_dir(seed)).get("train_s") for seed in exp.seeds}

    def mean(values: list) -> float | None:
        return None if not values or None in values else round(sum(values) / len(values), 3)

    return {"train_s": mean(list(train_s.values())), "infer_s": mean(list(infer_s.values())),
            "train_s_per_seed": {str(s): v for s, v in train_s.items()},
            "infer_s_per_seed": {str(s): round(v, 3) for s, v in infer_s.items()}}


def _write_outputs(folder: Path, name: str, scored: dict, scores: dict) -> None:
    import numpy as np

    from talbench.eval.detection import precision_recall_table
    from talbench.plots import save_precision_recall

    (folder / "predictions").mkdir()
    for seed, run in scored.items():
        (folder / "predictions" / f"seed-{seed}.json").write_text(json.dumps(run.results, indent=2) + "\n", encoding="utf-8")
    (folder / "scores.json").write_text(json.dumps(scores, indent=2) + "\n", encoding="utf-8")
    # what `dvc metrics show` and `dvc exp show` compare, a column per number: only numbers every
    # experiment has (0.5 is among every dataset's tIoU thresholds); the full tables stay in scores.json
    headline = {"average_mAP": scores["average_mAP"], "average_mAP_std": (scores["std"] or {}).get("average_mAP"),
                "mAP@0.50": scores["mAP"].get("mAP@0.50"), "R@1x@0.50": scores["recall"].get("R@1x@0.50"),
                "seeds": len(scores["seeds"])}
    (folder / "metrics.json").write_text(json.dumps(headline, indent=2) + "\n", encoding="utf-8")
    with open(folder / "map_vs_tiou.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["tiou", "mAP"])
        writer.writerows(zip((round(float(t), 4) for t in scores["tious"]), scores["mAP"].values()))
    tables = [precision_recall_table(run.result) for run in scored.values()]
    header = tables[0][0]
    mean = np.mean([table for _, table in tables], axis=0).tolist()  # over seeds; recall levels agree
    rows = [[round(value, 4) for value in row] for row in mean]  # small enough to version in git (.gitignore)
    with open(folder / "pr_curve.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])
    curves = {column: [row[i] for row in rows] for i, column in enumerate(header) if i}
    save_precision_recall(folder / "pr_curve.png", [row[0] for row in rows], curves, f"{name}: precision/recall")


def _track(exp, params: Path | None, weights: dict, scores: dict, plots: list[Path], folder: Path, logs: Path) -> None:
    """Everything about this experiment into its MLflow runs; the experiment run's address into `folder`/mlflow.json.

    `weights` are the reference seed's: the model registered for the experiment. `folder` holds the
    staged outputs (predictions/ among them), `logs` this stage's log."""
    from talbench.models import build_model
    from talbench.data.fetch import data_hash
    from talbench.pipeline import TIMING_RECORD, tracked_run
    from talbench.tracking import log_experiment_run, log_seed_run, run_url, tracking_uri

    parent, run_id = tracked_run(exp.name, params)
    timing = scores["timing"]
    for seed in exp.seeds:
        history = [json.loads(line) for line in (exp.train_dir(seed) / "metrics.jsonl").read_text().splitlines()]
        own = {"train_s": timing["train_s_per_seed"][str(seed)], "infer_s": timing["infer_s_per_seed"][str(seed)]}
        log_seed_run(run_id, seed, history=history, metrics={**scores["per_seed"][str(seed)], "timing": own})
    reference = exp.seed_config(exp.seeds[0])
    model = build_model(reference["model"])
    model.load_state_dict(weights)
    logged = log_experiment_run(
        parent, exp.name, config=reference, metrics=scores, model_scores=scores["per_seed"][str(exp.seeds[0])],
        dataset=exp.experiment.dataset.name, task=exp.experiment.task, features=exp.experiment.features,
        data_hash=data_hash(exp.experiment.dataset.name, exp.data_dir), data_dir=exp.data_dir, ran=_what_ran(exp, reference),
        plots=plots, files=[folder / "scores.json", folder / TIMING_RECORD], folders={"predictions": folder / "predictions", "logs": logs}, model=model,
        tags={"seeds": ",".join(map(str, exp.seeds)), "model_seed": str(exp.seeds[0])},
    )
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    experiment_id = MlflowClient(tracking_uri=uri).get_run(logged.run_id).info.experiment_id
    # the UI's address of the run: on a tracking server directly, locally under `mlflow ui`
    base = uri if uri.startswith("http") else "http://127.0.0.1:5000"
    record = {"tracking_uri": uri, "experiment_id": experiment_id, "run_id": logged.run_id, "parent_run_id": parent,
              "model": logged.model_name, "model_version": logged.model_version, "url": run_url(base, experiment_id, logged.run_id)}
    (folder / "mlflow.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def _what_ran(exp, config: dict) -> dict:
    """The params that describe this run rather than the config file: the device training ran on
    (from the reference seed's training record; dropped where there is none), the real output
    folder, the resolved precisions, the inference device."""
    from talbench.pipeline import read_train_record
    from talbench.training import init_distributed, pick_device, resolve_precision

    trained = read_train_record(exp.train_dir(exp.seeds[0]))
    device = pick_device(None, init_distributed())  # as score_experiment picks it
    ran = {"devices": f"['{trained['device']}']" if trained else None, "output_folder": str(exp.output),
           "test_cfg.precision": resolve_precision(config["test_cfg"].get("precision", "auto"), device),
           "inference_device": str(device)}
    return ran | ({"train_cfg.precision": trained["precision"]} if trained else {})


if __name__ == "__main__":
    sys.exit(main())
