"""Bad params.yaml and ActionFormer configs as a user meets them: `python components/train.py EXPERIMENT`
and `talbench train CONFIG --set k=v` refuse them up front with one line naming the file, the item
and the field (the closest valid key for a misspelling), exit 2, and write nothing."""

from __future__ import annotations

import copy
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from talbench import cli
from talbench.config import DEFAULTS, SECTIONS, Config
from talbench.data.registry import load_params

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
CONFIG = ROOT / "configs/ci/thumos_i3d.yaml"
EXPERIMENT = "thumos14-i3d"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # experiments name their configs relative to the project; tracking (were it reached) stays in tmp
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())


def one_line(capsys: pytest.CaptureFixture[str], code: int, *fragments: str) -> str:
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# -- params.yaml, through the train stage ------------------------------------------------------------


def train_stage(tmp_path: Path, mutate: Callable[[dict[str, Any]], None], experiment: str = EXPERIMENT) -> tuple[int, Path, Path]:
    """Run components/train.py on a copy of params.yaml changed by `mutate`: (exit code, params, outputs)."""
    params = copy.deepcopy(PARAMS)
    params["data"]["root"] = str(tmp_path / "data")  # no data: a stage that got past the checks fails later
    mutate(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return _train_main()([experiment, "--params", str(path), "--outputs", str(tmp_path / "outputs")]), path, tmp_path / "outputs"


def _train_main() -> Callable[[list[str]], int]:
    spec = importlib.util.spec_from_file_location("train_component", ROOT / "components/train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _exp(name: str, **changes: Any) -> Callable[[dict[str, Any]], None]:
    return lambda p: p["experiments"][name].update(changes)


def _rename(mapping_of: Callable[[dict[str, Any]], dict[str, Any]], old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def mutate(p: dict[str, Any]) -> None:
        mapping = mapping_of(p)
        mapping[new] = mapping.pop(old)

    return mutate


def _set(section: str, **values: Any) -> Callable[[dict[str, Any]], None]:
    return lambda p: p.__setitem__(section, {**(p.get(section) or {}), **values})


PARAMS_CASES = {
    # misspelt keys at every level name the closest valid key
    "taks": (_rename(lambda p: p["experiments"]["epic100_noun-slowfast"], "task", "taks"), "epic100_noun-slowfast",
             ["experiments.epic100_noun-slowfast: field 'taks'", "unknown key 'taks' (did you mean 'task'?)"]),
    "overides": (_exp(EXPERIMENT, overides={"opt": {"epochs": 5}}), EXPERIMENT,
                 [f"experiments.{EXPERIMENT}: field 'overides'", "did you mean 'overrides'?"]),
    "top-level": (_rename(lambda p: p, "experiments", "experiment"), EXPERIMENT,
                  ["(top level): field 'experiment'", "did you mean 'experiments'?"]),
    "data key": (_rename(lambda p: p["data"], "source", "sourse"), EXPERIMENT, ["data: field 'sourse'", "did you mean 'source'?"]),
    "synthetic key": (_rename(lambda p: p["synthetic"], "scale", "scael"), EXPERIMENT, ["synthetic: field 'scael'", "did you mean 'scale'?"]),
    "pipeline key": (_rename(lambda p: p["pipeline"], "datasets", "dataset"), EXPERIMENT, ["pipeline: field 'dataset'", "did you mean 'datasets'?"]),
    "override section": (_exp(EXPERIMENT, overrides={"optt": {"epochs": 5}}), EXPERIMENT,
                         [f"experiments.{EXPERIMENT}.overrides: field 'optt'", "did you mean 'opt'?"]),
    "override key": (_exp(EXPERIMENT, overrides={"opt": {"epoch": 5}}), EXPERIMENT,
                     [f"experiments.{EXPERIMENT}.overrides.opt: field 'epoch'", "unknown key 'epoch' (did you mean 'epochs'?)"]),
    # a misspelling in another experiment stops every stage alike
    "other override key": (_exp("anet13_tsp-tsp", overrides={"loader": {"batchsize": 2}}), EXPERIMENT,
                           ["experiments.anet13_tsp-tsp.overrides.loader: field 'batchsize'", "did you mean 'batch_size'?"]),
    # names that must exist in the registry
    "task name": (_exp("epic100_noun-slowfast", task="nuon"), "epic100_noun-slowfast",
                  ["experiments.epic100_noun-slowfast: field 'task'", "unknown 'nuon' (did you mean 'noun'?)"]),
    "dataset name": (_exp("ego4d_mq-egovlp", dataset="ego4d_m"), EXPERIMENT,
                     ["experiments.ego4d_mq-egovlp: field 'dataset'", "did you mean 'ego4d_mq'?"]),
    "feature name": (_exp(EXPERIMENT, features=["i3"]), EXPERIMENT, [f"experiments.{EXPERIMENT}: field 'features'", "did you mean 'i3d'?"]),
    "pipeline dataset": (_set("pipeline", datasets=["thumos15"]), EXPERIMENT, ["pipeline: field 'datasets'", "did you mean 'thumos14'?"]),
    "source": (_set("data", source="reel"), EXPERIMENT, ["data: field 'source'", "did you mean 'real'?"]),
    "scale": (_set("synthetic", scale="smal"), EXPERIMENT, ["synthetic: field 'scale'", "did you mean 'small'?"]),
    # shapes and types
    "experiments list": (lambda p: p.__setitem__("experiments", [EXPERIMENT]), EXPERIMENT,
                         ["(top level): field 'experiments'", "expected a mapping of experiment entries, got ['thumos14-i3d']"]),
    "features string": (_exp(EXPERIMENT, features="i3d"), EXPERIMENT, [f"experiments.{EXPERIMENT}: field 'features'", "got 'i3d'"]),
    "no features": (_exp(EXPERIMENT, features=[]), EXPERIMENT, [f"experiments.{EXPERIMENT}: field 'features'", "one or more"]),
    "config missing": (lambda p: p["experiments"][EXPERIMENT].pop("config"), EXPERIMENT,
                       [f"experiments.{EXPERIMENT}: field 'config'", "required key is missing"]),
    "overrides list": (_exp(EXPERIMENT, overrides=[{"opt": {"epochs": 5}}]), EXPERIMENT, [f"experiments.{EXPERIMENT}: field 'overrides'", "expected config sections"]),
    "override section list": (_exp(EXPERIMENT, overrides={"opt": [5]}), EXPERIMENT,
                              [f"experiments.{EXPERIMENT}.overrides: field 'opt'", "expected a mapping, got [5]"]),
    "seed": (_set("synthetic", seed=-1), EXPERIMENT, ["synthetic: field 'seed'", "expected an integer >= 0, got -1"]),
    "seed bool": (_set("synthetic", seed=True), EXPERIMENT, ["synthetic: field 'seed'", "got True"]),
    "md5": (lambda p: p["synthetic"]["md5"]["thumos14"].update(ci="abc"), EXPERIMENT, ["synthetic.md5.thumos14: field 'ci'", "32 hex digits"]),
    "unpack ratio": (_set("data", max_unpack_ratio=0), EXPERIMENT, ["data: field 'max_unpack_ratio'", "expected a number > 0, or null (the default limit), got 0"]),
    "published": (lambda p: p["published"][EXPERIMENT].update(avg="high"), EXPERIMENT, [f"published.{EXPERIMENT}: field 'avg'", "expected a number, got 'high'"]),
    "data version": (_set("synthetic", version="2026-13-01"), EXPERIMENT, ["synthetic: field 'version'", "expected a date YYYY-MM-DD"]),
    "nightly experiment": (_set("nightly", experiment="thumos14-i3"), EXPERIMENT, ["nightly: field 'experiment'", "did you mean 'thumos14-i3d'?"]),
    "nightly cron": (_set("nightly", schedule="every night"), EXPERIMENT, ["nightly: field 'schedule'", "expected a cron expression"]),
    "nightly margin": (_set("nightly", margin=5), EXPERIMENT, ["nightly: field 'margin'", "a number in [0, 1]", "got 5"]),
    "nightly key": (_rename(lambda p: p["nightly"], "margin", "margn"), EXPERIMENT, ["nightly: field 'margn'", "did you mean 'margin'?"]),
    # override values are checked with the config and reported where they were written
    "override value": (_exp(EXPERIMENT, overrides={"opt": {"epochs": "ten"}}), EXPERIMENT,
                       [f"experiments.{EXPERIMENT}.overrides.opt: field 'epochs'", "expected an integer >= 1, got 'ten'"]),
    "override width": (_exp(EXPERIMENT, overrides={"model": {"n_head": 3}}), EXPERIMENT,
                       [f"experiments.{EXPERIMENT}.overrides.model: field 'n_head'", "divisor of the attention width 128"]),
}


@pytest.mark.parametrize("case", PARAMS_CASES)
def test_bad_params_stop_the_train_stage_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    mutate, experiment, fragments = PARAMS_CASES[case]
    code, path, outputs = train_stage(tmp_path, mutate, experiment)
    line = one_line(capsys, code, f"error: {path}: ", *fragments)
    assert "Traceback" not in line and not outputs.exists()


def test_yaml_syntax_error_in_params_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("data:\n\tsource: synthetic\n")  # a tab indent
    code = _train_main()([EXPERIMENT, "--params", str(path), "--outputs", str(tmp_path / "outputs")])
    one_line(capsys, code, str(path), "not valid YAML")
    assert not (tmp_path / "outputs").exists()


def test_shipped_params_and_new_data_keys_are_accepted(tmp_path: Path) -> None:
    load_params(ROOT / "params.yaml")
    params = copy.deepcopy(PARAMS)
    params["data"]["max_unpack_ratio"] = 50
    params["experiments"]["epic100_noun-slowfast"]["task"] = None  # null: the dataset's first task
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    assert load_params(path)[1]["data"]["max_unpack_ratio"] == 50


# -- configs, through `talbench train CONFIG --set k=v` --------------------------------------------------


def talbench(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["talbench", *args])
    with pytest.raises(SystemExit) as stop:
        cli.main()
    return int(stop.value.code or 0)


CONFIG_CASES = [
    # (--set, item: field, needle)
    ("opt.epochs=ten", "opt: field 'epochs'", "expected an integer >= 1, got 'ten'"),
    ("opt.epochs=true", "opt: field 'epochs'", "expected an integer >= 1, got True"),
    ("opt.epochs=2.5", "opt: field 'epochs'", "expected an integer >= 1, got 2.5"),
    ("opt.learning_rate=-0.001", "opt: field 'learning_rate'", "expected a number > 0, got -0.001"),
    ("opt.learning_rate=1e-3", "opt: field 'learning_rate'", "YAML reads 1e-3 as text"),
    ("opt.warmup_epochs=-1", "opt: field 'warmup_epochs'", "expected an integer >= 0, got -1"),
    ("opt.type=adamw", "opt: field 'type'", "unknown 'adamw' (did you mean 'AdamW'?)"),
    ("opt.schedule_type=cosin", "opt: field 'schedule_type'", "did you mean 'cosine'?"),
    ("opt.warmup=1", "opt: field 'warmup'", "expected true or false, got 1"),
    ("loader.batch_size=0", "loader: field 'batch_size'", "expected an integer >= 1, got 0"),
    ("loader.num_workers=-1", "loader: field 'num_workers'", "expected an integer >= 0, got -1"),
    ("model.n_head=3", "model: field 'n_head'", "expected a divisor of the attention width 128"),
    ("model.embd_dim=[64, 64]", "model: field 'embd_dim'", "one width per feature type of dataset.input_dim"),
    ("model.fpn_dim=64", "model: field 'fpn_dim'", "expected 128"),
    ("model.regression_range=[[0, 4], [4, 8]]", "model: field 'regression_range'", "expected 6 ranges, one per pyramid level"),
    ("model.backbone_arch=[2, 2, 3]", "model: field 'regression_range'", "expected 4 ranges"),
    ("model.regression_range=[[0, 4], [4, 8], [8, 16], [16, 32], [64, 32], [64, 10000]]", "model: field 'regression_range'", "low < high"),
    ("model.n_mha_win_size=[9, 9]", "model: field 'n_mha_win_size'", "expected 6 windows"),
    ("model.head_kernel_size=4", "model: field 'head_kernel_size'", "odd integer"),
    ("model.scale_factor=3", "model: field 'scale_factor'", "expected 2"),
    ("model.use_rel_pe=true", "model: field 'use_rel_pe'", "not implemented"),
    ("test_cfg.nms_method=sfot", "test_cfg: field 'nms_method'", "unknown 'sfot' (did you mean 'soft'?); valid: hard, none, soft"),
    ("test_cfg.max_seg_num=0", "test_cfg: field 'max_seg_num'", "expected an integer >= 1, got 0"),
    ("test_cfg.iou_threshold=1.5", "test_cfg: field 'iou_threshold'", "expected a number in [0, 1], got 1.5"),
    ("test_cfg.min_score=-0.1", "test_cfg: field 'min_score'", "got -0.1"),
    ("test_cfg.nms_sigma=0", "test_cfg: field 'nms_sigma'", "expected a number > 0, got 0"),
    ("test_cfg.chunk_overlap=1", "test_cfg: field 'chunk_overlap'", "expected a number in [0, 1)"),
    ("train_cfg.precision=fp16", "train_cfg: field 'precision'", "expected auto, fp32 or bf16, got 'fp16'"),
    ("test_cfg.precision=half", "test_cfg: field 'precision'", "expected auto, fp32 or bf16, got 'half'"),
    ("train_cfg.center_sample_radius=-1", "train_cfg: field 'center_sample_radius'", "expected a number >= 0, got -1"),
    ("train_cfg.center_sample=box", "train_cfg: field 'center_sample'", "valid: none, radius"),
    ("train_cfg.cls_prior_prob=0", "train_cfg: field 'cls_prior_prob'", "expected a number in (0, 1)"),
    ("train_cfg.head_empty_cls=[20]", "train_cfg: field 'head_empty_cls'", "below dataset.num_classes (20)"),
    ("train_cfg.droppath=.nan", "train_cfg: field 'droppath'", "got nan"),
    ("dataset.crop_ratio=[0.9]", "dataset: field 'crop_ratio'", "[min, max]"),
    ("dataset.trunc_thresh=2", "dataset: field 'trunc_thresh'", "expected a number in [0, 1], got 2"),
    ("dataset.file_ext=.npx", "dataset: field 'file_ext'", "did you mean '.npz'?"),
    ("dataset.input_dim=[1024, 1024]", "dataset: field 'input_dim'", "one width per feature folder (1)"),
    ("ema.decay=1.5", "ema: field 'decay'", "got 1.5"),
    ("init_rand_seed=-3", "(top level): field 'init_rand_seed'", "expected an integer >= 0, got -3"),
    ("opt.epoch=3", "opt: field 'epoch'", "unknown key 'epoch' (did you mean 'epochs'?)"),
]


@pytest.mark.parametrize(("setting", "where", "needle"), CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_values_stop_training_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                       setting: str, where: str, needle: str) -> None:
    run = tmp_path / "run"
    code = talbench(monkeypatch, "train", str(CONFIG), "--output", str(run), "--set", setting)
    one_line(capsys, code, f"error: {CONFIG}: {where}: ", needle)
    assert not run.exists()


@pytest.mark.parametrize(
    ("text", "where", "needle"),
    [
        ("dataset_name: thumos\nopt: {epochs: 3}\n", "dataset: field 'json_file'", "expected the path of the annotation file, got null"),
        ("dataset_name: thumos\nopt: [3]\n", "opt: field 'opt'", "expected a mapping, got list"),
        ("dataset_name: thumos\nopt:\n\tepochs: 3\n", "-: field '-'", "not valid YAML"),
        ("dataset_name: thumos\ndataset: {json_file: a.json, feat_folder: f, use_abs_pe: true}\n", "dataset: field 'use_abs_pe'", "unknown key"),
        ("dataset_name: thumos\ndataset: {json_file: a.json, feat_folder: f}\nloader: {batch_size: yes}\n",
         "loader: field 'batch_size'", "expected an integer >= 1, got True"),
    ],
    ids=["no annotation file", "section a list", "tab", "key in the wrong section", "yes for a number"],
)
def test_bad_config_files_stop_training_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                      text: str, where: str, needle: str) -> None:
    config, run = tmp_path / "bad.yaml", tmp_path / "run"
    config.write_text(text)
    code = talbench(monkeypatch, "train", str(config), "--output", str(run), "--set", "opt.epochs=3")
    one_line(capsys, code, f"error: {config}: {where}: ", needle)
    assert not run.exists()


def test_every_default_key_has_a_declared_type() -> None:
    sections = {name: field.annotation for name, field in Config.model_fields.items() if name in SECTIONS}
    assert set(Config.model_fields) == set(DEFAULTS)
    for name, model in sections.items():
        assert set(model.model_fields) == set(DEFAULTS[name]), name  # type: ignore[union-attr]
