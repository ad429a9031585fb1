from pathlib import Path

import numpy as np
import pytest
import yaml

from talbench.data.registry import load_registry
from talbench.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def test_published_facts(registry):
    thumos = registry.dataset("thumos14")
    assert (thumos.feat_stride, thumos.num_frames, thumos.default_fps) == (4, 16, None)
    assert thumos.tasks["action"].num_classes == 20
    assert thumos.features["i3d"].channels == 2048
    assert thumos.archive.md5 == "375f76ffbf7447af1035e694971ec9b2"
    assert thumos.splits == {"train": ("validation",), "test": ("test",)}
    anet = registry.dataset("anet13_tsp")
    assert (anet.feat_stride, anet.num_frames, anet.default_fps, anet.max_seq_len) == (16, 16, 15.0, 192)
    assert anet.force_upsampling and anet.features["tsp"].prefix == "v_"
    epic = registry.dataset("epic100")
    assert {t: s.num_classes for t, s in epic.tasks.items()} == {"verb": 97, "noun": 300}
    assert epic.features["slowfast"].ext == ".npz"
    ego = registry.dataset("ego4d_mq")
    assert {f: s.channels for f, s in ego.features.items()} == {"slowfast": 2304, "omnivore": 1536, "egovlp": 256}
    assert ego.default_fps / ego.feat_stride == 1.875


def test_tiou_thresholds_are_the_references_linspace(registry):
    # the reference builds thresholds with np.linspace: 0.4 is 0.39999999999999997 there
    tious = registry.dataset("thumos14").tiou_thresholds()
    assert tious.tolist() == np.linspace(0.3, 0.7, 5).tolist()
    assert tious[1] != 0.4
    assert len(registry.dataset("anet13_tsp").tiou_thresholds()) == 10


def test_experiment_names_and_widths(registry):
    exp = registry.experiment("ego4d_mq", None, ["omnivore", "egovlp"])
    assert exp.name == "ego4d_mq-omnivore+egovlp"
    assert exp.input_dim == 1536 + 256
    assert registry.experiment("epic100", "noun", ["slowfast"]).name == "epic100_noun-slowfast"
    with pytest.raises(InputError, match="did you mean 'egovlp'"):
        registry.experiment("ego4d_mq", None, ["egovlpp"])


def _write_params(tmp_path, mutate):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    mutate(params["datasets"]["thumos14"])
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_misspelt_key_names_the_closest_valid_one(tmp_path):
    path = _write_params(tmp_path, lambda d: d.update(feat_strid=d.pop("feat_stride")))
    with pytest.raises(InputError) as err:
        load_registry(path)
    message = str(err.value)
    assert "params.yaml" in message and "thumos14" in message and "feat_strid" in message and "'feat_stride'" in message


def test_bad_values_are_named(tmp_path):
    path = _write_params(tmp_path, lambda d: d["features"]["i3d"].update(channels=-3))
    with pytest.raises(InputError, match=r"thumos14.features.i3d: field 'channels'"):
        load_registry(path)
    path = _write_params(tmp_path, lambda d: d.update(tiou=[0.3, 0.7]))
    with pytest.raises(InputError, match="field 'tiou'"):
        load_registry(path)
