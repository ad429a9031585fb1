"""talbench_benchmark: the benchmark of dvc.yaml for the experiments chosen at trigger time.

Manual trigger. The tasks come from the one stage graph (dvc.yaml expanded by
`talbench.pipeline.stage_graph`): one task per kind of stage, mapped over the run's datasets or
experiments, ordered as the graph's inputs and outputs order them. Each task runs exactly the
stage's command (plus `--params params.yaml`, and `--resume` for a retried training) in the run's
own workspace; see `talbench.orchestration`.

Light at parse time: yaml, the stage graph and Airflow's SDK only.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, dag, get_current_context, task

from talbench.io import read_yaml_mapping
from talbench.orchestration import PROJECT, RETRIES, TRAIN_POOL, mapped_kinds, stage_kinds
from talbench.pipeline import experiment_names, stage_graph, training_seeds
from talbench.runners import RUNNERS, default_runner


_PARAMS = read_yaml_mapping(PROJECT / "params.yaml")
_GRAPH = stage_graph(_PARAMS, PROJECT / "dvc.yaml")
_KINDS = stage_kinds(_GRAPH)  # kind -> the kinds it reads from, in graph order
_MAPPED = mapped_kinds(_GRAPH)
_EXPERIMENTS = experiment_names(_PARAMS)


@dag(
    dag_id="talbench_benchmark",
    description="talbench: fetch, validate, train, evaluate and report the chosen experiments (dvc.yaml's stages)",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["talbench"],
    doc_md=__doc__,
    default_args=RETRIES,
    params={
        "experiments": Param(
            _EXPERIMENTS,
            type="array",
            items={"type": "string", "enum": _EXPERIMENTS},
            examples=_EXPERIMENTS,
            minItems=1,
            uniqueItems=True,
            title="Experiments",
            description="The experiments of params.yaml to run (dataset, task, features, recipe); "
                        "their datasets are fetched and validated.",
        ),
        "epochs": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            title="Epochs",
            description="Override the recipe's training epochs for every chosen experiment "
                        "(experiments.<name>.overrides.opt.epochs); empty keeps each recipe's own.",
        ),
        "seeds": Param(
            training_seeds(_PARAMS),
            type="array",
            items={"type": "integer", "minimum": 0},
            minItems=1,
            uniqueItems=True,
            title="Training seeds",
            description="Train every chosen experiment once per seed (pipeline.seeds); the report and MLflow "
                        "show the mean ± std over seeds. The first seed's model is the one registered.",
        ),
        "overrides": Param(
            {},
            type="object",
            additionalProperties={"type": "object"},
            title="Recipe overrides",
            description="More recipe overrides for every chosen experiment, {section: {key: value}}, e.g. "
                        '{"model": {"embd_dim": 64}, "opt": {"warmup_epochs": 0}}; merged into '
                        "experiments.<name>.overrides and checked by the stages like params.yaml's.",
        ),
        "scale": Param(
            _PARAMS.get("synthetic", {}).get("scale", "ci"),
            type="string",
            enum=["ci", "small", "full"],
            title="Synthetic twin scale",
            description="Size of the synthetic datasets (data.source: synthetic): ci trains in about a "
                        "minute on 2 CPU cores, small in a few minutes, full has the real sizes.",
        ),
        "runner": Param(
            default_runner(),
            type="string",
            enum=list(RUNNERS),
            title="Runner",
            description="Where the stage commands run: local (a subprocess on the Airflow worker, with its "
                        "Python), docker (the project image, a GPU requested) or kubernetes (a pod with an "
                        "nvidia.com/gpu limit); images, GPUs, node selector and tolerations come from "
                        "params.yaml's runners section. The default is the deployment's TALBENCH_RUNNER.",
        ),
    },
)
def talbench_benchmark():
    @task
    def prepare_workspace() -> str:
        """The run's workspace (its params.yaml narrowed to the chosen experiments) and its stages."""
        from talbench.orchestration import prepare, refused_as_failure

        context = get_current_context()
        params = context["params"]
        with refused_as_failure():  # an unknown experiment (the form refuses it already), bad params
            prepared = prepare(context["run_id"], params["experiments"], epochs=params["epochs"],
                               seeds=params["seeds"], scale=params["scale"], overrides=params["overrides"])
        print(f"workspace {prepared['workspace']}: stages {prepared['stages']}")
        return prepared["workspace"]

    @task
    def stages(workspace: str, kind: str) -> list[str]:
        """The names of the workspace's stages of one kind (e.g. train@thumos14-i3d): what `kind` maps over."""
        from talbench.orchestration import workspace_graph

        return [stage.name for stage in workspace_graph(workspace) if stage.stage == kind]

    @task(map_index_template="{{ stage_name }}")
    def run(workspace: str, name: str) -> dict:
        """Run one stage of dvc.yaml (e.g. train@thumos14-i3d) in the run's workspace, or reuse its
        cached outputs; XCom says which: {"stage": name, "reused": bool}."""
        from talbench.runners import run_task_stage

        context = get_current_context()
        context["stage_name"] = name
        return run_task_stage(context, workspace, name)

    @task
    def report(workspace: str, name: str) -> dict:
        """The last stage: the benchmark report; its path and the run's MLflow parent run go to XCom."""
        from talbench.orchestration import run_summary
        from talbench.runners import run_task_stage

        run_task_stage(get_current_context(), workspace, name)
        summary = run_summary(workspace)
        print(f"report: {summary['report']}; MLflow parent run {summary['mlflow_parent_run']} in {summary['tracking_uri']}")
        return summary

    workspace = prepare_workspace()
    tasks = {}
    for kind, ups in _KINDS.items():
        options = {"task_id": kind}
        if kind == "train":
            options["pool"] = TRAIN_POOL
        if kind in _MAPPED:
            names = stages.override(task_id=f"{kind}_stages")(workspace=workspace, kind=kind)
            tasks[kind] = run.override(**options).partial(workspace=workspace).expand(name=names)
        else:
            names = [stage.name for stage in _GRAPH if stage.stage == kind]
            fn = report if kind == "report" else run
            tasks[kind] = fn.override(**options)(workspace=workspace, name=names[0])
        for up in ups:
            tasks[up] >> tasks[kind]


talbench_benchmark()
