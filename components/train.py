"""Pipeline stage: train one experiment of params.yaml, once per training seed (pipeline.seeds).

    python components/train.py EXPERIMENT [--params params.yaml] [--outputs outputs] [--resume]

Writes outputs/EXPERIMENT/train/seed-<n>/ (last.ckpt, config.yaml, metrics.jsonl, training.json:
the device, resolved precision and seconds of the training) for every seed
and the training curve outputs/EXPERIMENT/train_curve.csv (a DVC plot: the mean over seeds, and
each seed's final_loss), together and only when every seed has finished: until then the runs grow
in outputs/EXPERIMENT/.train-partial/ (checkpointed every epoch, which --resume continues; finished
seeds are kept) and the earlier outputs stay as they were. Per-epoch losses go to each seed's
MLflow run as they come (MLFLOW_TRACKING_URI, default mlruns/) with the machine's CPU, memory and
GPU usage (system/*), never stopping training if tracking is slow; each seed's run ends with its
training, and the stage's log goes to the experiment's run (logs/train.log).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from talbench.commandline import OUTPUTS_HELP, PARAMS_HELP, StageParser
from talbench.errors import exit_status


def arguments() -> StageParser:
    parser = StageParser("train", "Train ActionFormer for one experiment of params.yaml, once per training seed (pipeline.seeds).",
                         writes="OUTPUTS/EXPERIMENT/train/seed-<n>/ (last.ckpt, config.yaml, metrics.jsonl, training.json: seconds, device, precision) and "
                                "OUTPUTS/EXPERIMENT/train_curve.csv; per-epoch losses to MLflow.")
    parser.add_argument("experiment", help="An experiment of params.yaml, e.g. thumos14-i3d.")
    parser.add_argument("--params", type=Path, default=None, help=PARAMS_HELP)
    parser.add_argument("--outputs", type=Path, default=Path("outputs"), help=OUTPUTS_HELP)
    parser.add_argument("--resume", action="store_true", help="Continue the unfinished run in .train-partial/ instead of starting over.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = arguments().parse_args(argv)
    return exit_status(lambda: _train(args))


WORK = ".train-partial"


def _train(args: argparse.Namespace) -> None:
    import tempfile

    from talbench.tracking import attach_log, stage_log

    with tempfile.TemporaryDirectory() as tmp, stage_log(Path(tmp) / "train.log") as log:
        run_id = _train_seeds(args)
        attach_log(run_id, log)


def _train_seeds(args: argparse.Namespace) -> str:
    """Train every seed; the experiment's MLflow run id. Each seed's run spans its training only,
    the experiment's run all of them (finish_run): evaluate's later logging keeps those ends."""
    import shutil

    from talbench.io import recover_outputs, staged_outputs
    from talbench.pipeline import resolve_experiment, tracked_run, write_train_record
    from talbench.tracking import EpochLogger, finish_run, seed_run, system_metrics, tag_precision
    from talbench.training import train

    exp = resolve_experiment(args.experiment, args.params, args.outputs)
    recover_outputs(exp.output, "train")
    _, run_id = tracked_run(exp.name, args.params)
    work = exp.output / WORK
    runs = {seed: work / exp.train_dir(seed).name for seed in exp.seeds}
    for stale in set(work.iterdir() if work.is_dir() else ()) - set(runs.values()):  # seeds no longer asked for
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    histories = {}
    for seed, folder in runs.items():
        seed_run_id = seed_run(run_id, seed, fresh=not args.resume)
        with system_metrics(seed_run_id):
            summary = train(exp.seed_config(seed), folder, resume=args.resume, overwrite=True,
                            on_epoch=EpochLogger(seed_run_id).log_epoch)
        write_train_record(folder, summary, resumed=args.resume)
        histories[seed] = summary["history"]
        tag_precision(seed_run_id, summary["precision"])
        finish_run(seed_run_id)
        print(f"{exp.name}: seed {seed}: trained {summary['steps']} iterations in {summary['seconds']:.0f} s "
              f"({summary['device']}, {summary['precision']})")
    with staged_outputs(exp.output, "train") as tmp:
        _write_curve(tmp / "train_curve.csv", histories)
        work.rename(tmp / "train")
    finish_run(run_id)
    return run_id


def _write_curve(path: Path, histories: dict[int, list[dict]]) -> None:
    """Per epoch: the losses and lr averaged over seeds, and each seed's final_loss."""
    seeds = list(histories)
    fields = ["epoch", "step", "lr", "cls_loss", "reg_loss", "final_loss"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields + [f"final_loss_seed{s}" for s in seeds])
        writer.writeheader()
        for records in zip(*histories.values()):
            row = {k: records[0][k] for k in ("epoch", "step")}
            row |= {k: sum(r[k] for r in records) / len(records) for k in fields[2:]}
            row |= {f"final_loss_seed{s}": r["final_loss"] for s, r in zip(seeds, records)}
            writer.writerow(row)

if __name__ == "__main__":
    sys.exit(main())
