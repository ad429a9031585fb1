"""ActionFormer YAML configs: the published layout, its defaults, and strict key checking.

A config written for the original ActionFormer (sections dataset, model, opt, loader, train_cfg,
test_cfg) loads unchanged. Where the original silently falls back to EPIC-Kitchens defaults for
missing dataset keys, talbench takes them from the dataset registry and says so. Unknown or
misspelt keys are errors naming the key and the closest valid one.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from talbench.data.registry import Registry, unknown
from talbench.errors import InputError
from talbench.io import read_yaml_mapping

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
# Keys the original accepts but talbench does not need (model_name picks its only model).
SECTIONS = ("dataset", "loader", "model", "train_cfg", "test_cfg", "opt", "ema")


def _check_unknown(path: str | Path, section: str, given: dict[str, Any], valid: dict[str, Any]) -> None:
    for key in given:
        if key not in valid:
            raise InputError(path, section, key, unknown(key, valid).replace("unknown", "unknown key", 1))


def _merge(path: str | Path, given: dict[str, Any]) -> dict[str, Any]:
    config = copy.deepcopy(DEFAULTS)
    _check_unknown(path, "(top level)", given, DEFAULTS)
    for key, value in given.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise InputError(path, key, key, f"expected a mapping, got {type(value).__name__}")
            _check_unknown(path, key, value, DEFAULTS[key])
            config[key].update(value)
        else:
            config[key] = value
    return config


def load_config(path: str | Path, registry: Registry | None = None, overrides: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:
    """Read an ActionFormer YAML config; return (config, notes about values taken from the registry)."""
    given = read_yaml_mapping(path, missing="config file not found")
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.rpartition(".")
        target = given.setdefault(section, {}) if section else given
        target[key] = value
    config = _merge(path, given)
    notes = _fill_from_registry(path, config, given.get("dataset", {}), registry)
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
