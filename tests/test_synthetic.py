"""The synthetic twins: real formats and geometry, determinism, and learnable-but-hard features."""

import json
import zipfile

import numpy as np
import pytest

from talbench.data.formats import load_video_features, seconds_to_index
from talbench.data.registry import load_params
from talbench.data.synthetic import PROFILES, TwinModel, write_twin
from talbench.data.archive import safe_extract

LIKES = list(PROFILES)


@pytest.fixture(scope="module")
def twins(registry, tmp_path_factory):
    out = tmp_path_factory.mktemp("twins")
    summaries = {like: write_twin(registry.dataset(like), "ci", 0, out) for like in LIKES}
    for summary in summaries.values():
        safe_extract(summary.archive, out)
    return out, summaries


@pytest.mark.parametrize("like", LIKES)
def test_twin_has_the_real_layout_and_geometry(registry, twins, like):
    out, summaries = twins
    ds = registry.dataset(like)
    databases = {task: json.loads((out / spec.annotations).read_text())["database"] for task, spec in ds.tasks.items()}
    first = next(iter(databases.values()))
    # every task annotates the same videos with the same segments (EPIC: verb and noun files)
    for db in databases.values():
        assert list(db) == list(first)
        assert [[a["segment"] for a in v["annotations"]] for v in db.values()] == [[a["segment"] for a in v["annotations"]] for v in first.values()]
    subsets = {v["subset"] for v in first.values()}
    assert subsets == set(ds.splits["train"]) | set(ds.splits["test"])
    for task, db in databases.items():
        num_classes = ds.tasks[task].num_classes
        names = {}
        for vid, video in db.items():
            assert set(video) >= {"subset", "duration", "fps", "annotations"}
            for a in video["annotations"]:
                start, end = a["segment"]
                assert 0 <= start < end <= video["duration"]
                assert 0 <= a["label_id"] < num_classes
                assert names.setdefault(a["label_id"], a["label"]) == a["label"]
    for vid, video in first.items():
        fps = ds.default_fps or video["fps"]
        feats = load_video_features(out, ds, tuple(ds.features), vid)
        assert feats.dtype == np.float32 and np.isfinite(feats).all()
        assert feats.shape[1] == sum(f.channels for f in ds.features.values())
        # length consistent with duration x fps / stride
        assert abs(feats.shape[0] - video["duration"] * fps / ds.feat_stride) <= 1
    if ds.ext_score_file:
        scores = json.loads((out / ds.ext_score_file).read_text())["results"]
        assert set(scores) == set(first) and all(len(s) == ds.tasks["action"].num_classes for s in scores.values())


def test_duration_statistics_follow_the_real_sets(twins):
    _, s = twins
    per_video = {like: sum(x["instances"] for x in s[like].subsets.values()) / sum(x["videos"] for x in s[like].subsets.values()) for like in LIKES}
    action = {like: np.mean([x["mean_action_s"] for x in s[like].subsets.values()]) for like in LIKES}
    video = {like: np.mean([x["mean_duration_s"] for x in s[like].subsets.values()]) for like in LIKES}
    assert action["thumos14"] < 8 and per_video["thumos14"] >= 3  # several short actions
    assert per_video["anet13_tsp"] < 2.5 and action["anet13_tsp"] / video["anet13_tsp"] > 0.15  # few, long
    assert per_video["epic100"] > 20 and action["epic100"] < 5  # dense and short
    assert action["thumos14"] < action["ego4d_mq"] < action["anet13_tsp"]


def test_same_seed_same_bytes_other_seed_other_bytes(registry, twins, tmp_path):
    _, summaries = twins
    again = write_twin(registry.dataset("anet13_tsp"), "ci", 0, tmp_path)
    assert again.md5 == summaries["anet13_tsp"].md5
    other = write_twin(registry.dataset("anet13_tsp"), "ci", 1, tmp_path)
    assert other.md5 != again.md5


def test_archive_md5_matches_params_yaml(registry, twins):
    """The recorded md5 is what the fetch stage verifies: it must hold on any machine."""
    _, params = load_params(registry.path)
    _, summaries = twins
    for like in LIKES:
        assert summaries[like].md5 == params["synthetic"]["md5"][like]["ci"], like


def test_archive_is_laid_out_like_the_real_one(registry, twins):
    _, summaries = twins
    with zipfile.ZipFile(summaries["thumos14"].archive) as zf:
        names = zf.namelist()
    assert "thumos/annotations/thumos14.json" in names
    assert all(n.startswith("thumos/") for n in names)
    assert sum(n.startswith("thumos/i3d_features/video_") and n.endswith(".npy") for n in names) == summaries["thumos14"].feature_files


def _step_table(registry, like, features, task_index=0):
    """Per-step features and labels (-1: background) of a ci twin, by split."""
    ds = registry.dataset(like)
    model = TwinModel(ds, PROFILES[like], 0, "ci")
    data = {"train": ([], []), "test": ([], [])}
    for i in range(model.size.train_videos + model.size.test_videos):
        video = model.video(i)
        x = np.concatenate([model.features(video, i)[f] for f in features], axis=1)
        y = np.full(len(x), -1)
        for a in video.actions:
            s, e = seconds_to_index(np.array([a.start, a.end]), video.fps, ds.feat_stride, ds.num_frames)
            y[int(np.ceil(max(s, 0))): int(np.floor(min(e, len(x) - 1))) + 1] = a.labels[task_index]
        split = "train" if i < model.size.train_videos else "test"
        data[split][0].append(x)
        data[split][1].append(y)
    return {k: (np.concatenate(v[0]), np.concatenate(v[1])) for k, v in data.items()}


def nearest_centroid_accuracy(registry, like, features):
    """Accuracy of a per-step nearest-class-centroid classifier on the action steps of the test split."""
    data = _step_table(registry, like, features)
    x, y = data["train"]
    background = x[y < 0].mean(0)
    classes = np.unique(y[y >= 0])
    centroids = np.stack([x[y == c].mean(0) for c in classes]) - background
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    xt, yt = data["test"]
    keep = np.isin(yt, classes)
    q = xt[keep] - background
    pred = classes[(q / np.linalg.norm(q, axis=1, keepdims=True) @ centroids.T).argmax(1)]
    _, counts = np.unique(yt[keep], return_counts=True)
    return float((pred == yt[keep]).mean()), float(counts.max() / counts.sum())


@pytest.mark.parametrize("like,features", [("thumos14", ["i3d"]), ("anet13_tsp", ["tsp"]), ("epic100", ["slowfast"]), ("ego4d_mq", ["slowfast", "omnivore", "egovlp"])])
def test_classes_are_separable_above_chance_but_far_from_perfect(registry, like, features):
    accuracy, chance = nearest_centroid_accuracy(registry, like, features)
    assert accuracy > 1.5 * chance
    assert accuracy < 0.85


def test_ego4d_more_and_better_features_separate_better(registry):
    acc = {f: nearest_centroid_accuracy(registry, "ego4d_mq", f.split("+"))[0] for f in ("slowfast", "egovlp", "omnivore+egovlp", "slowfast+omnivore+egovlp")}
    assert acc["slowfast"] < acc["egovlp"] < acc["omnivore+egovlp"] <= acc["slowfast+omnivore+egovlp"] + 0.02
