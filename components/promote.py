"""Nightly step: register tonight's model as the challenger and promote it if it beats the champion.

    python components/promote.py [--params params.yaml] [--outputs outputs]

Runs after the evaluate stage of params.yaml's `nightly.experiment` (the production experiment):
registers the model evaluate logged (outputs/EXPERIMENT/mlflow.json) as a new version of
`nightly.model` (default talbench-<experiment>-production) with the alias `challenger`, re-scores
the current `champion` on the same test split, compares the two by a paired bootstrap over the
test videos, and moves `champion` to the new version only when the whole `nightly.level`
interval of the gain in average mAP lies above `nightly.margin` (the first version is promoted).
The decision, both scores, the gain with its interval and the data version are tags on the
version and in outputs/EXPERIMENT/promotion.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from talbench.commandline import OUTPUTS_HELP, PARAMS_HELP, StageParser
from talbench.errors import InputError, exit_status


def arguments() -> StageParser:
    parser = StageParser("promote", "Register tonight's model (nightly.experiment) and promote it if it beats the champion.",
                         writes="OUTPUTS/EXPERIMENT/promotion.json; a model version, its tags and aliases in the MLflow registry.")
    parser.add_argument("--params", type=Path, default=None, help=PARAMS_HELP)
    parser.add_argument("--outputs", type=Path, default=Path("outputs"), help=OUTPUTS_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = arguments().parse_args(argv)
    return exit_status(lambda: promote_tonight(args.params, args.outputs))


def promote_tonight(params_path: Path | None, outputs: Path) -> dict[str, Any]:
    from talbench.data.registry import NightlyParams, load_params
    from talbench.io import write_json
    from talbench.data.fetch import data_hash
    from talbench.pipeline import resolve_experiment
    from talbench.tracking import check_reachable
    from talbench.tracking.mlflow_tracking import tracking_uri
    from talbench.tracking.promotion import promote, register_challenger

    path, params = load_params(params_path)
    if not params.get("nightly"):
        raise InputError(path, "nightly", "nightly", "no nightly section: name the production experiment (nightly.experiment)")
    nightly = NightlyParams.model_validate(params["nightly"])
    exp = resolve_experiment(nightly.experiment, params_path, outputs)
    check_reachable()
    record, scores = _read(exp.output / "mlflow.json", nightly.experiment), _read(exp.output / "scores.json", nightly.experiment)
    source = _logged_model(record, exp.output / "mlflow.json")
    version = register_challenger(nightly.model_name, source, record["run_id"])
    data_version = (params.get("synthetic") or {}).get("version") if (params.get("data") or {}).get("source", "synthetic") == "synthetic" else None
    lineage = {"talbench.data_version": data_version or "base", "talbench.data_hash": data_hash(exp.experiment.dataset.name, exp.data_dir),
               "talbench.run_id": record["run_id"]}
    reference = (scores.get("per_seed") or {}).get(str(exp.seeds[0]), scores)  # the registered model is this seed's
    decision = promote(nightly.model_name, version, float(reference["average_mAP"]), nightly.margin,
                       lambda champion: _against(exp, nightly, champion), lineage)
    summary = {**decision.as_dict(), **lineage, "tracking_uri": tracking_uri()}
    write_json(exp.output / "promotion.json", summary)
    verdict = "promoted to champion" if decision.promoted else f"not promoted: champion stays version {decision.champion_version}"
    champion = "none" if decision.champion_score is None else f"{100 * decision.champion_score:.2f} (version {decision.champion_version})"
    print(f"{decision.model} version {version}: average mAP {100 * decision.challenger_score:.2f}, champion {champion}: "
          f"{verdict} ({decision.reason})")
    return summary


def _read(path: Path, experiment: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, experiment, "file", "not found: run the evaluate stage of this experiment first") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(path, experiment, "file", f"not JSON ({exc})") from None


def _logged_model(record: dict[str, Any], path: Path) -> str:
    """The logged model (models:/m-...) behind the version evaluate registered."""
    from talbench.tracking.mlflow_tracking import tracking_client

    if not record.get("model") or not record.get("model_version") or not record.get("run_id"):
        raise InputError(path, "mlflow", "model_version", "evaluate recorded no registered model version")
    return tracking_client().get_model_version(record["model"], str(record["model_version"])).source


def _against(exp, nightly, champion: str):
    """The challenger (evaluate's predictions) against a champion version, re-scored on tonight's
    test split with its own model and test settings: a paired bootstrap over the test videos."""
    from talbench.eval.inputs import load_annotations, load_predictions
    from talbench.eval.statistics import paired_bootstrap
    from talbench.tracking.promotion import Evidence

    scored = _score_version(exp, nightly.model_name, champion)
    spec = exp.experiment.dataset
    annotations = load_annotations(exp.config["dataset"]["json_file"])
    challenger, _ = load_predictions(exp.predictions(exp.seeds[0]), annotations,
                                     num_classes=spec.tasks[exp.experiment.task].num_classes)
    result = paired_bootstrap(scored.truth, challenger, scored.truth, scored.predictions, spec.tiou_thresholds(),
                              resamples=nightly.resamples, seed=0, level=nightly.level)
    return Evidence(float(scored.scores["average_mAP"]), result.difference, result.interval, nightly.level)


def _score_version(exp, model: str, version: str):
    """A registered version scored on tonight's test split: its own model and test settings, tonight's data."""
    import tempfile

    import torch

    from talbench.config import finalize
    from talbench.io import read_yaml_mapping
    from talbench.inference import score_experiment
    from talbench.tracking.mlflow_tracking import CONFIG_FILE, WEIGHTS_FILE, model_files

    uri = f"models:/{model}/{version}"
    with tempfile.TemporaryDirectory() as tmp:
        folder = model_files(uri, tmp)
        own = read_yaml_mapping(folder / CONFIG_FILE)
        weights = torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    config = finalize({**exp.config, "model": own["model"], "test_cfg": own["test_cfg"]})
    scored = score_experiment(exp, config, weights, uri)
    print(f"champion {uri}: average mAP {100 * scored.scores['average_mAP']:.2f} on tonight's test split")
    return scored


if __name__ == "__main__":
    sys.exit(main())
