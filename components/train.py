"""Pipeline stage: train one experiment of params.yaml.

    python components/train.py EXPERIMENT [--params params.yaml] [--outputs outputs] [--resume]

Writes outputs/EXPERIMENT/train/ (last.ckpt, config.yaml, metrics.jsonl) and the training curve
outputs/EXPERIMENT/train_curve.csv (a DVC plot), together and only when training has finished:
until then the run grows in outputs/EXPERIMENT/.train-partial/ (checkpointed every epoch, which
--resume continues) and the earlier outputs stay as they were. Per-epoch losses go to the
experiment's MLflow run as they come (MLFLOW_TRACKING_URI, default mlruns/) with the machine's
CPU, memory and GPU usage (system/*), never stopping training if tracking is slow.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from talbench.errors import exit_status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train ActionFormer for one experiment.")
    parser.add_argument("experiment")
    parser.add_argument("--params", type=Path, default=None)
    parser.add_argument("--outputs", type=Path, default=Path("outputs"))
    parser.add_argument("--resume", action="store_true", help="continue the unfinished run in .train-partial/ instead of starting over")
    args = parser.parse_args(argv)
    return exit_status(lambda: _train(args))


WORK = ".train-partial"


def _train(args: argparse.Namespace) -> None:
    from talbench.io import recover_outputs, staged_outputs
    from talbench.pipeline import resolve_experiment, tracked_run
    from talbench.tracking import EpochLogger, system_metrics
    from talbench.training import train

    exp = resolve_experiment(args.experiment, args.params, args.outputs)
    recover_outputs(exp.output, "train")
    _, run_id = tracked_run(exp.name, args.params)
    with system_metrics(run_id):
        summary = train(exp.config, exp.output / WORK, resume=args.resume, overwrite=True, on_epoch=EpochLogger(run_id).log_epoch)
    with staged_outputs(exp.output, "train") as tmp:
        with open(tmp / "train_curve.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["epoch", "step", "lr", "cls_loss", "reg_loss", "final_loss"])
            writer.writeheader()
            writer.writerows(summary["history"])
        (exp.output / WORK).rename(tmp / "train")
    print(f"{exp.name}: trained {summary['steps']} iterations in {summary['seconds']:.0f} s")

if __name__ == "__main__":
    sys.exit(main())
