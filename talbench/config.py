"""ActionFormer YAML configs: the published layout, its defaults, and strict key checking.

A config written for the original ActionFormer (sections dataset, model, opt, loader, train_cfg,
test_cfg) loads unchanged. Where the original silently falls back to EPIC-Kitchens defaults for
missing dataset keys, talbench takes them from the dataset registry and says so. Every key is
typed below (one pydantic model per section) and checked once, after merging and overrides:
an unknown key, a wrong type or a value out of range is one line naming the key (and, for a
misspelling, the closest valid one), before anything is trained or written.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from pydantic import AfterValidator, Field, field_validator, model_validator

from talbench.data.registry import Registry, unknown
from talbench.errors import InputError
from talbench.io import read_yaml_mapping
from talbench.schema import Bool, Count, Fraction, Natural, NonNegative, Number, Positive, Problem, Strict, Text, check

DEFAULTS: dict[str, Any] = {
    "init_rand_seed": 1234567891,
    "dataset_name": "epic",
    "devices": ["cuda:0"],
    "train_split": ["training"],
    "val_split": ["validation"],
    "model_name": "LocPointTransformer",
    "output_folder": "./ckpt/",
    "dataset": {
        "json_file": None,
        "feat_folder": None,
        "file_prefix": None,
        "file_ext": ".npy",
        "feat_stride": 16,
        "num_frames": 32,
        "default_fps": None,
        "input_dim": 2304,
        "num_classes": 97,
        "downsample_rate": 1,
        "max_seq_len": 2304,
        "trunc_thresh": 0.5,
        "crop_ratio": None,
        "force_upsampling": False,
    },
    "loader": {"batch_size": 8, "num_workers": 4},
    "model": {
        "backbone_type": "convTransformer",
        "fpn_type": "identity",
        "backbone_arch": [2, 2, 5],
        "scale_factor": 2,
        "regression_range": [[0, 4], [4, 8], [8, 16], [16, 32], [32, 64], [64, 10000]],
        "n_head": 4,
        "n_mha_win_size": -1,
        "embd_kernel_size": 3,
        "embd_dim": 512,
        "embd_with_ln": True,
        "fpn_dim": 512,
        "fpn_with_ln": True,
        "head_dim": 512,
        "head_kernel_size": 3,
        "head_num_layers": 3,
        "head_with_ln": True,
        "max_buffer_len_factor": 6.0,
        "use_abs_pe": False,
        "use_rel_pe": False,
    },
    "train_cfg": {
        "center_sample": "radius",
        "center_sample_radius": 1.5,
        "loss_weight": 1.0,
        "cls_prior_prob": 0.01,
        "init_loss_norm": 2000,
        "clip_grad_l2norm": -1,
        "head_empty_cls": [],
        "dropout": 0.1,
        "droppath": 0.1,
        "label_smoothing": 0.0,
        # talbench: bf16 autocast where the hardware computes bf16 natively (CUDA, CPUs with
        # AVX512-BF16 or AMX), else fp32; or "fp32" / "bf16" to choose
        "precision": "auto",
    },
    "test_cfg": {
        "pre_nms_thresh": 0.001,
        "pre_nms_topk": 5000,
        "iou_threshold": 0.1,
        "min_score": 0.01,
        "max_seg_num": 1000,
        "nms_method": "soft",
        "nms_sigma": 0.5,
        "duration_thresh": 0.05,
        "multiclass_nms": True,
        "ext_score_file": None,
        "voting_thresh": 0.75,
        # talbench: bounded-memory inference on long videos (0: whole video at once)
        "chunk_size": 0,
        "chunk_overlap": 0.25,
        "precision": "auto",  # talbench: as train_cfg.precision, for inference
    },
    "opt": {
        "type": "AdamW",
        "momentum": 0.9,
        "weight_decay": 0.0,
        "learning_rate": 1e-3,
        "epochs": 30,
        "warmup": True,
        "warmup_epochs": 5,
        "schedule_type": "cosine",
        "schedule_steps": [],
        "schedule_gamma": 0.1,
    },
    # talbench: model EMA. The published decay (0.999) needs thousands of iterations; with
    # warm-up the decay grows with the step count, min(decay, (1 + step) / (10 + step)), so short
    # runs are not scored on near-initial weights.
    "ema": {"enabled": True, "decay": 0.999, "warmup": True},
}

# ActionFormer's dataset_name → the registry entry whose facts fill missing dataset keys.
DATASET_NAMES = {"thumos": "thumos14", "anet": "anet13_tsp", "epic": "epic100", "ego4d": "ego4d_mq"}
# The sections of a config: mappings merged key by key into DEFAULTS.
SECTIONS = ("dataset", "loader", "model", "train_cfg", "test_cfg", "opt", "ema")


# ---------------------------------------------------------------- the types of DEFAULTS' keys
# One model per section; every key of DEFAULTS is declared here (a key missing on either side
# fails every load_config). Values are validated, never converted: the code reads the dicts.

Width = Annotated[int, Field(ge=1)]
Widths = Annotated[Width | list[Width], Field(description="an integer >= 1, or a list of them (one per feature type)")]
UnitOpen = Annotated[float, Field(ge=0, lt=1, description="a number in [0, 1)")]
Splits = Annotated[str | list[str], Field(description="a subset name or a list of them")]
OptionalPath = Annotated[str | None, Field(description="a path or null")]


def _odd(value: int) -> int:
    if value < 1 or value % 2 != 1:
        raise ValueError(f"expected an odd integer >= 1 (a centred conv kernel), got {value!r}")
    return value


OddKernel = Annotated[int, AfterValidator(_odd), Field(description="an odd integer >= 1")]


class DatasetConfig(Strict):
    json_file: Annotated[str, Field(description="the path of the annotation file")]
    feat_folder: Annotated[str | list[str], Field(description="a folder, or a list of folders (one per feature type)")]
    file_prefix: Annotated[str | None, Field(description="a string or null")]
    file_ext: Literal[".npy", ".npz"]
    feat_stride: Positive
    num_frames: Positive
    default_fps: Annotated[Positive | None, Field(description="a number > 0, or null (each video's own fps)")]
    input_dim: Widths
    num_classes: Count
    downsample_rate: Count
    max_seq_len: Count
    trunc_thresh: Fraction
    crop_ratio: Annotated[Annotated[list[Fraction], Field(min_length=2, max_length=2)] | None, Field(description="null or [min, max] with 0 < min <= max <= 1")]
    force_upsampling: Bool

    @model_validator(mode="after")
    def _consistent(self) -> DatasetConfig:
        if self.crop_ratio is not None and not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise Problem("crop_ratio", f"expected [min, max] with 0 < min <= max <= 1, got {self.crop_ratio!r}")
        folders = _as_list(self.feat_folder)
        if len(_as_list(self.input_dim)) != len(folders):
            raise Problem("input_dim", f"expected one width per feature folder ({len(folders)}), got {self.input_dim!r}")
        return self


class LoaderConfig(Strict):
    batch_size: Count
    num_workers: Natural


class ModelConfig(Strict):
    backbone_type: Literal["convTransformer"]
    fpn_type: Literal["identity"]
    backbone_arch: Annotated[list[Natural], Field(min_length=3, max_length=3, description="[embedding convs >= 1, stem blocks, branch blocks]")]
    scale_factor: Annotated[Literal[2], Field(description="2 (each branch block halves the length)")]
    regression_range: Annotated[list[Annotated[list[NonNegative], Field(min_length=2, max_length=2)]], Field(description="a list of [low, high] ranges (numbers >= 0), one per pyramid level")]
    n_head: Count
    # <= 1: global attention on that level
    n_mha_win_size: Annotated[int | list[int], Field(description="an integer, or a list of them (one per pyramid level)")]
    embd_kernel_size: OddKernel
    embd_dim: Widths
    embd_with_ln: Bool
    fpn_dim: Count
    fpn_with_ln: Bool
    head_dim: Count
    head_kernel_size: OddKernel
    head_num_layers: Count
    head_with_ln: Bool
    max_buffer_len_factor: Positive
    use_abs_pe: Bool
    use_rel_pe: Annotated[Literal[False], Field(description="false (relative position encoding is not implemented)")]

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        if self.backbone_arch[0] < 1:
            raise Problem("backbone_arch", f"expected at least one embedding conv, got {self.backbone_arch!r}")
        levels = self.backbone_arch[2] + 1  # the stem's level and one per branch block
        if len(self.regression_range) != levels:
            raise Problem("regression_range", f"expected {levels} ranges, one per pyramid level (backbone_arch[2] + 1), got {len(self.regression_range)}")
        if any(lo >= hi for lo, hi in self.regression_range):
            raise Problem("regression_range", f"expected every [low, high] with low < high, got {self.regression_range!r}")
        if isinstance(self.n_mha_win_size, list) and len(self.n_mha_win_size) != levels:
            raise Problem("n_mha_win_size", f"expected {levels} windows, one per pyramid level, got {self.n_mha_win_size!r}")
        # every attention layer (stem and branch) runs at the backbone's width; the identity FPN keeps it
        width = sum(_as_list(self.embd_dim))
        if width % self.n_head:
            raise Problem("n_head", f"expected a divisor of the attention width {width} (embd_dim), got {self.n_head}")
        if self.fpn_dim != width:
            raise Problem("fpn_dim", f"expected {width}: the identity FPN keeps the backbone's width (embd_dim), got {self.fpn_dim}")
        return self


Precision = Annotated[Literal["auto", "fp32", "bf16"], Field(description="auto, fp32 or bf16")]


class TrainConfig(Strict):
    center_sample: Literal["radius", "none"]
    center_sample_radius: NonNegative
    loss_weight: Number  # <= 0: the regression weight follows the losses' ratio
    cls_prior_prob: Annotated[float, Field(gt=0, lt=1, description="a number in (0, 1)")]
    init_loss_norm: Positive
    clip_grad_l2norm: Number  # <= 0: no clipping
    head_empty_cls: Annotated[list[Natural], Field(description="a list of class ids (integers >= 0)")]
    dropout: UnitOpen
    droppath: UnitOpen
    label_smoothing: Fraction
    precision: Precision


class TestConfig(Strict):
    pre_nms_thresh: Fraction
    pre_nms_topk: Count
    iou_threshold: Fraction
    min_score: Fraction
    max_seg_num: Count
    nms_method: Text
    nms_sigma: Positive
    duration_thresh: NonNegative
    multiclass_nms: Bool
    ext_score_file: OptionalPath
    voting_thresh: Fraction
    chunk_size: Natural
    chunk_overlap: UnitOpen
    precision: Precision

    @field_validator("nms_method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        from talbench.eval.nms import NMS_METHODS  # torch: only once a config is checked

        if value not in NMS_METHODS:
            raise ValueError(unknown(value, NMS_METHODS))
        return value


class OptConfig(Strict):
    type: Literal["AdamW", "SGD"]
    momentum: Fraction
    weight_decay: NonNegative
    learning_rate: Positive
    epochs: Count
    warmup: Bool
    warmup_epochs: Natural
    schedule_type: Literal["cosine", "multistep"]
    schedule_steps: Annotated[list[Natural], Field(description="a list of epochs (integers >= 0)")]
    schedule_gamma: Positive


class EmaConfig(Strict):
    enabled: Bool
    decay: Fraction
    warmup: Bool


class Config(Strict):
    init_rand_seed: Natural
    dataset_name: Text
    devices: Annotated[list[str], Field(description="a list of device names")]
    train_split: Splits
    val_split: Splits
    model_name: Text
    output_folder: Text
    dataset: DatasetConfig
    loader: LoaderConfig
    model: ModelConfig
    train_cfg: TrainConfig
    test_cfg: TestConfig
    opt: OptConfig
    ema: EmaConfig

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        embd, inputs = self.model.embd_dim, self.dataset.input_dim
        if isinstance(embd, list) and (not isinstance(inputs, list) or len(embd) != len(inputs)):
            raise Problem("model.embd_dim", f"expected one width per feature type of dataset.input_dim ({inputs!r}), got {embd!r}")
        if any(c >= self.dataset.num_classes for c in self.train_cfg.head_empty_cls):
            raise Problem("train_cfg.head_empty_cls", f"expected class ids below dataset.num_classes ({self.dataset.num_classes}), got {self.train_cfg.head_empty_cls!r}")
        return self


def _as_list(value: Any) -> list[Any]:
    """A per-feature-type value: a list, or one value for a single feature type."""
    return value if isinstance(value, list) else [value]


# ---------------------------------------------------------------- loading


def _merge(path: str | Path, given: dict[str, Any]) -> dict[str, Any]:
    config = copy.deepcopy(DEFAULTS)
    for key, value in given.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise InputError(path, key, key, f"expected a mapping, got {type(value).__name__}")
            config[key].update(value)
        else:
            config[key] = value
    return config


def load_config(
    path: str | Path,
    registry: Registry | None = None,
    overrides: dict[str, Any] | None = None,
    origins: dict[str, tuple[str | Path, str]] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Read an ActionFormer YAML config; return (config, notes about values taken from the registry).

    `overrides` ({'opt.epochs': 5}) replace the file's values; `origins` tells where an override
    was written ({'opt.epochs': (params.yaml, 'experiments.x.overrides.opt')}) so its errors name
    that place instead of the config file.
    """
    given = read_yaml_mapping(path, missing="config file not found")
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.rpartition(".")
        target = given.setdefault(section, {}) if section else given
        if not isinstance(target, dict):
            raise InputError(path, section, section, f"expected a mapping, got {type(target).__name__}")
        target[key] = value
    config = _merge(path, given)
    notes = _fill_from_registry(path, config, given.get("dataset", {}), registry)
    try:
        check(Config, config, path)
    except InputError as err:
        file, item = (origins or {}).get(f"{err.item}.{err.field}", (err.path, err.item))
        raise InputError(file, item, err.field, err.problem) from None
    return finalize(config), notes


def _fill_from_registry(path: str | Path, config: dict[str, Any], given_dataset: dict[str, Any], registry: Registry | None) -> list[str]:
    name = config["dataset_name"]
    if name not in DATASET_NAMES:
        raise InputError(path, "dataset_name", "dataset_name", unknown(name, DATASET_NAMES))
    if registry is None:
        return []
    spec = registry.dataset(DATASET_NAMES[name])
    facts = {
        "feat_stride": spec.feat_stride,
        "num_frames": spec.num_frames,
        "default_fps": spec.default_fps,
        "max_seq_len": spec.max_seq_len,
        "force_upsampling": spec.force_upsampling,
    }
    notes = []
    for key, value in facts.items():
        if key not in given_dataset and config["dataset"][key] != value:
            config["dataset"][key] = value
            notes.append(f"dataset.{key} not set in {path}: using {value!r} from the registry entry {spec.name}")
    return notes


def finalize(config: dict[str, Any]) -> dict[str, Any]:
    """Derived fields, as the original fills them: the model sees the dataset's widths and cfgs."""
    dataset, model = config["dataset"], config["model"]
    # a list (several feature types) reaches the model: Ego4D configs project each type separately
    input_dim = dataset["input_dim"]
    model["input_dim"] = list(input_dim) if isinstance(input_dim, (list, tuple)) else input_dim
    model["num_classes"] = dataset["num_classes"]
    model["max_seq_len"] = dataset["max_seq_len"]
    model["train_cfg"] = config["train_cfg"]
    model["test_cfg"] = config["test_cfg"]
    for key in ("train_split", "val_split"):
        config[key] = [config[key]] if isinstance(config[key], str) else list(config[key])
    return config


def dump_config(config: dict[str, Any]) -> str:
    """The resolved config as YAML, without the derived copies inside `model`."""
    clean = copy.deepcopy(config)
    for key in ("input_dim", "num_classes", "max_seq_len", "train_cfg", "test_cfg"):
        clean["model"].pop(key, None)
    return yaml.safe_dump(clean, sort_keys=False)
