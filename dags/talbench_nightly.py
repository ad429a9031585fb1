"""talbench_nightly: retrain the production model on tonight's data; promote it only if it is better.

Scheduled by params.yaml's `nightly.schedule` (cron, UTC), and also run when new data lands: an
event on the Asset `talbench-data-<dataset>` (POST /api/v2/assets/events, or a DAG with it as an
outlet; its `extra` may name the data version: {"version": "2026-12-02"}). One run at a time, no
catch-up.

Tonight's data version is the run's date (for the synthetic twins: more annotated training videos,
the same test split; real data: what its fetch stage gives). The tasks are dvc.yaml's stages for
the production experiment (`nightly.experiment`) and its dataset, in the night's own workspace: a
failing validation stops the night there and the champion stays. Then components/promote.py
registers the new model as the `challenger` of `nightly.model` and moves `champion` to it only
when it is better with confidence `nightly.level`: the paired-bootstrap interval of its average
mAP minus the champion's, on the same test split, lies wholly above `nightly.margin`.
The decision, both scores and the interval are tags on the model version, in the task log and in XCom.

Light at parse time: yaml, the stage graph and Airflow's SDK only.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, get_current_context, task

from talbench.io import read_yaml_mapping
from talbench.orchestration import PROJECT, RETRIES, TRAIN_POOL, nightly_graph
from talbench.pipeline import upstream
from talbench.runners import RUNNERS, default_runner

_PARAMS = read_yaml_mapping(PROJECT / "params.yaml")
_NIGHTLY = _PARAMS["nightly"]
_GRAPH = nightly_graph(_PARAMS, PROJECT / "dvc.yaml")
DATA = Asset(name=f"talbench-data-{_PARAMS['experiments'][_NIGHTLY['experiment']]['dataset']}",
             uri=f"talbench://data/{_PARAMS['experiments'][_NIGHTLY['experiment']]['dataset']}", group="talbench")


@dag(
    dag_id="talbench_nightly",
    description=f"talbench: retrain {_NIGHTLY['experiment']} on tonight's data, promote it if it beats the champion",
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable(_NIGHTLY.get("schedule", "0 2 * * *"), timezone="UTC"),
                                 assets=DATA),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["talbench"],
    doc_md=__doc__,
    default_args=RETRIES,
    params={
        "data_version": Param(
            None, type=["null", "string"], format="date", title="Data version",
            description="The data version to train on (YYYY-MM-DD); empty: the run's date, or the version a "
                        "triggering asset event names.",
        ),
        "epochs": Param(
            None, type=["null", "integer"], minimum=1, title="Epochs",
            description="Override the production recipe's training epochs for this run; empty keeps the recipe's.",
        ),
        "overrides": Param(
            {}, type="object", additionalProperties={"type": "object"}, title="Recipe overrides",
            description='More recipe overrides for this run, {section: {key: value}}, e.g. {"opt": {"warmup_epochs": 0}}.',
        ),
        "runner": Param(
            default_runner(), type="string", enum=list(RUNNERS), title="Runner",
            description="Where the stage commands run (local, docker, kubernetes; see params.yaml's runners); "
                        "the default is the deployment's TALBENCH_RUNNER. The promotion itself runs on the worker.",
        ),
        "margin": Param(
            None, type=["null", "number"], minimum=0, maximum=1, title="Promotion margin",
            description=f"Average mAP (0-1) the whole confidence interval of the challenger's gain over the champion "
                        f"must exceed; empty: nightly.margin ({_NIGHTLY.get('margin', 0.0)}).",
        ),
    },
)
def talbench_nightly():
    @task
    def prepare_night() -> dict:
        """The night's workspace, its data version and the tracking store (small metadata only)."""
        from talbench.orchestration import prepare_night as prepare, refused_as_failure

        context = get_current_context()
        params = context["params"]
        with refused_as_failure():  # no nightly section, bad params
            prepared = prepare(context["run_id"], params["data_version"] or _data_version(context),
                               epochs=params["epochs"], overrides=params["overrides"], margin=params["margin"])
        print(f"night {context['run_id']}: data version {prepared['data_version']}, workspace {prepared['workspace']}, "
              f"tracking {prepared['tracking_uri']}")
        return prepared

    @task
    def run(night: dict, name: str) -> dict:
        """One stage of dvc.yaml for the production experiment, in the night's workspace."""
        from talbench.runners import run_task_stage

        return run_task_stage(get_current_context(), night["workspace"], name, tracking_uri=night["tracking_uri"])

    @task
    def promote(night: dict) -> dict:
        """Register the challenger; move `champion` only if it beats the champion by the margin."""
        from talbench.orchestration import run_promotion

        decision = run_promotion(night["workspace"], night["tracking_uri"], emit=print)
        keys = ("model", "version", "promoted", "challenger_score", "champion_score", "champion_version",
                "difference", "interval", "level", "margin", "reason")
        return {key: decision[key] for key in keys} | {"data_version": night["data_version"]}

    night = prepare_night()
    tasks = {}
    for stage in _GRAPH:
        options = {"task_id": stage.name.replace("@", "__")} | ({"pool": TRAIN_POOL} if stage.stage == "train" else {})
        tasks[stage.name] = run.override(**options)(night, stage.name)
    for stage in _GRAPH:
        night >> tasks[stage.name]
        for up in upstream(_GRAPH, stage):
            tasks[up.name] >> tasks[stage.name]
    evaluated = [tasks[s.name] for s in _GRAPH if s.stage == "evaluate"]
    evaluated >> promote(night)


def _data_version(context) -> str:
    """Tonight's data version: the one a triggering asset event names, else the date the run is for."""
    for events in (context.get("triggering_asset_events") or {}).values():
        for event in events:
            if version := (event.extra or {}).get("version"):
                return str(version)
    when = context.get("logical_date") or context["dag_run"].run_after
    return when.date().isoformat()


talbench_nightly()
