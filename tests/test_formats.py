import numpy as np
import pytest

from talbench.data.formats import feature_file_bytes, index_to_seconds, load_features, seconds_to_index
from talbench.data.registry import FeatureSpec
from talbench.errors import InputError


def test_seconds_index_mapping():
    # THUMOS: 30 fps, stride 4, 16-frame clips: clip t is centred on frame 4t + 8
    assert seconds_to_index(1.0, 30, 4, 16) == pytest.approx(30 / 4 - 2)
    assert index_to_seconds(0, 30, 4, 16) == pytest.approx(8 / 30)
    t = np.array([0.0, 3.3, 123.4])
    assert index_to_seconds(seconds_to_index(t, 1.875 * 16, 16, 32), 30, 16, 32) == pytest.approx(t)


@pytest.mark.parametrize("ext", [".npy", ".npz"])
def test_feature_files_round_trip_and_are_deterministic(tmp_path, ext):
    spec = FeatureSpec(folder="f", channels=3, ext=ext)
    array = np.arange(12, dtype=np.float32).reshape(4, 3)
    data = feature_file_bytes(array, spec)
    assert data == feature_file_bytes(array.copy(), spec)
    path = tmp_path / f"v{ext}"
    path.write_bytes(data)
    np.testing.assert_array_equal(load_features(path, spec, "v"), array)
    if ext == ".npz":  # the published loader reads np.load(f)['feats']
        with np.load(path) as npz:
            np.testing.assert_array_equal(npz["feats"], array)


def test_bad_feature_files_name_file_video_and_field(tmp_path):
    spec = FeatureSpec(folder="f", channels=3)
    wrong = tmp_path / "wrong.npy"
    wrong.write_bytes(feature_file_bytes(np.zeros((4, 5), np.float32), spec))
    with pytest.raises(InputError, match=r"wrong.npy: vid7: field 'shape': expected \[T, 3\], got \[4, 5\]"):
        load_features(wrong, spec, "vid7")
    truncated = tmp_path / "trunc.npy"
    truncated.write_bytes(feature_file_bytes(np.zeros((40, 3), np.float32), spec)[:200])
    with pytest.raises(InputError, match="trunc.npy: vid8: field 'features': unreadable"):
        load_features(truncated, spec, "vid8")
    with pytest.raises(InputError, match="not found"):
        load_features(tmp_path / "missing.npy", spec, "vid9")
    npz_spec = FeatureSpec(folder="f", channels=3, ext=".npz", npz_key="feats")
    other = tmp_path / "other.npz"
    other.write_bytes(feature_file_bytes(np.zeros((4, 3), np.float32), FeatureSpec(folder="f", channels=3, ext=".npz", npz_key="x")))
    with pytest.raises(InputError, match="field 'feats': key missing"):
        load_features(other, npz_spec, "vid10")
