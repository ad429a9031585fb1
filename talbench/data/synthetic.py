"""Synthetic twins of the real benchmarks, in exactly their on-disk formats.

A twin is generated from a seed by a simple generative model that keeps what makes temporal
action localization hard:
- a low-dimensional latent "what is happening" signal per feature step, seen by each feature type
  through its own random projection to the real channel width and its own noise level;
- class evidence only inside action segments, with soft (sigmoid) boundaries and a per-instance
  strength; overlapping actions of different classes add their evidence;
- confusable classes (prototypes drawn around shared cluster centres), long-tailed class
  frequencies where the real set has them, a slowly drifting background, unannotated distractor
  bursts that look partly like actions, and a per-video offset (a domain shift);
- the real set's geometry (feat_stride, num_frames, fps and the seconds↔index mapping) and its
  duration statistics (THUMOS: many short actions in long videos; ActivityNet: few long ones;
  EPIC and Ego4D: dense, short, many classes).
Each video draws from its own random stream (keyed by the seed and the video's index), so the
output is the same whatever the order or parallelism of generation.
"""

from __future__ import annotations

import hashlib
import json
import string
import zipfile
from datetime import date
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from talbench.data.formats import add_to_zip, annotation_json, feature_file_bytes, seconds_to_index
from talbench.data.registry import DatasetSpec
from talbench.io import atomic_path, file_md5

SCALES = ("ci", "small", "full")

THUMOS_CLASSES = (
    "BaseballPitch", "BasketballDunk", "Billiards", "CleanAndJerk", "CliffDiving", "CricketBowling",
    "CricketShot", "Diving", "FrisbeeCatch", "GolfSwing", "HammerThrow", "HighJump", "JavelinThrow",
    "LongJump", "PoleVault", "Shotput", "SoccerPenalty", "TennisSwing", "ThrowDiscus", "VolleyballSpiking",
)


@dataclass(frozen=True)
class ScaleSize:
    train_videos: int
    test_videos: int
    duration_s: tuple[float, float]  # video durations are drawn log-uniformly in this range
    active_classes: int | None = None  # at small scales only this many classes occur (per task), so each is learnable


@dataclass(frozen=True)
class Profile:
    """What a twin looks like: sizes per scale and the statistics of its actions."""

    like: str
    sizes: dict[str, ScaleSize]
    actions_per_minute: float  # mean count; ActivityNet uses per_video_actions instead
    action_s: tuple[float, float, float, float]  # lognormal median, sigma, clip min, clip max (seconds)
    classes_per_video: int | None  # THUMOS: each video shows 1-2 classes; None: any class
    zipf: float  # class-frequency exponent (0: uniform)
    overlap_prob: float  # chance that an action may overlap another of a different class
    latent_dim: int
    latent_noise: dict[str, float]  # per feature type: norm of the latent noise (an action's evidence has norm ~1)
    feature_noise: float  # iid noise in channel space
    per_video_actions: tuple[float, ...] | None = None  # ActivityNet: P(1 action), P(2), ...
    cover_fraction: tuple[float, float] | None = None  # ActivityNet: Beta(a, b) of the video covered
    subset_names: tuple[str, str] = ("training", "validation")


PROFILES: dict[str, Profile] = {
    "thumos14": Profile(
        like="thumos14",
        sizes={
            "ci": ScaleSize(20, 12, (30.0, 80.0)),
            "small": ScaleSize(80, 60, (60.0, 180.0)),
            "full": ScaleSize(200, 213, (30.0, 900.0)),
        },
        actions_per_minute=4.5,
        action_s=(3.5, 0.6, 0.6, 40.0),
        classes_per_video=2,
        zipf=0.0,
        overlap_prob=0.05,
        latent_dim=48,
        latent_noise={"i3d": 2.2},
        feature_noise=0.6,
        subset_names=("validation", "test"),
    ),
    "anet13_tsp": Profile(
        like="anet13_tsp",
        sizes={
            "ci": ScaleSize(60, 30, (30.0, 150.0), active_classes=20),
            "small": ScaleSize(400, 200, (30.0, 240.0), active_classes=50),
            "full": ScaleSize(10024, 4926, (20.0, 600.0)),
        },
        actions_per_minute=0.0,
        action_s=(0.0, 0.0, 1.0, 600.0),
        classes_per_video=1,
        zipf=0.0,
        overlap_prob=0.0,
        latent_dim=48,
        latent_noise={"tsp": 2.4},
        feature_noise=0.6,
        per_video_actions=(0.6, 0.25, 0.1, 0.05),
        cover_fraction=(1.3, 1.6),
    ),
    "epic100": Profile(
        like="epic100",
        sizes={
            "ci": ScaleSize(12, 6, (120.0, 240.0), active_classes=30),
            "small": ScaleSize(40, 20, (240.0, 600.0)),
            "full": ScaleSize(495, 138, (120.0, 1800.0)),
        },
        actions_per_minute=14.0,
        action_s=(2.2, 0.8, 0.4, 60.0),
        classes_per_video=None,
        zipf=0.9,
        overlap_prob=0.35,
        latent_dim=96,
        latent_noise={"slowfast": 2.0},
        feature_noise=0.6,
    ),
    "ego4d_mq": Profile(
        like="ego4d_mq",
        sizes={
            "ci": ScaleSize(20, 10, (150.0, 210.0), active_classes=30),
            "small": ScaleSize(48, 24, (480.0, 480.0)),
            "full": ScaleSize(1488, 477, (480.0, 480.0)),
        },
        actions_per_minute=1.6,
        action_s=(6.0, 1.0, 0.6, 200.0),
        classes_per_video=None,
        zipf=0.8,
        overlap_prob=0.3,
        latent_dim=48,
        # more, and better, features help: egovlp > omnivore > slowfast, as in the published table
        latent_noise={"slowfast": 3.6, "omnivore": 3.0, "egovlp": 2.4},
        feature_noise=0.6,
    ),
}


@dataclass(frozen=True)
class Action:
    start: float
    end: float
    labels: tuple[int, ...]  # one label id per task (EPIC: verb, noun)


@dataclass(frozen=True)
class Video:
    video_id: str
    subset: str
    duration: float
    fps: float
    actions: tuple[Action, ...]


# Independent random streams: the twin's fixed parts, and per video its annotations, features, scores.
MODEL_STREAM, ANNOTATION_STREAM, FEATURE_STREAM, SCORE_STREAM = range(4)


def video_rng(seed: int, like: str, stream: int, index: int = 0) -> np.random.Generator:
    """One stream per (seed, twin, purpose, video): generation order never changes the output."""
    key = int.from_bytes(hashlib.sha256(like.encode()).digest()[:4], "little")
    return np.random.default_rng(np.random.SeedSequence([seed, key, stream, index]))


class TwinModel:
    """The fixed parts of a twin (class prototypes, projections), drawn once from the seed."""

    def __init__(self, dataset: DatasetSpec, profile: Profile, seed: int, scale: str, version: str | None = None) -> None:
        self.dataset = dataset
        self.profile = profile
        self.seed = seed
        self.scale = scale
        self.size = profile.sizes[scale]
        self.added_train_videos = added_train_videos(version, self.size)
        self.num_videos = self.size.train_videos + self.size.test_videos + self.added_train_videos
        rng = video_rng(seed, profile.like, MODEL_STREAM)
        self.tasks = list(dataset.tasks)
        d = profile.latent_dim
        # EPIC: verb and noun each own half of the latent space, so evidence composes.
        dims = np.array_split(np.arange(d), len(self.tasks))
        self.prototypes: dict[str, np.ndarray] = {}
        self.class_probs: dict[str, np.ndarray] = {}
        for task, task_dims in zip(self.tasks, dims):
            k = dataset.tasks[task].num_classes
            protos = np.zeros((k, d))
            protos[:, task_dims] = confusable_prototypes(rng, k, len(task_dims))
            self.prototypes[task] = protos
            self.class_probs[task] = class_frequencies(rng, k, profile.zipf, self.size.active_classes)
        self.distractors = rng.standard_normal((8, d)) / np.sqrt(d)
        # what all actions share and background lacks (people moving, hands on objects): actionness
        self.action_direction = rng.standard_normal(d) / np.sqrt(d)
        self.projections = {
            name: rng.standard_normal((d, spec.channels)) * np.sqrt(d / spec.channels)
            for name, spec in dataset.features.items()
        }

    # -- annotations -------------------------------------------------------------------------
    def video(self, index: int) -> Video:
        p, size = self.profile, self.size
        rng = video_rng(self.seed, p.like, ANNOTATION_STREAM, index)
        # a data version's added videos come after the test videos: the test split never changes
        train = index < size.train_videos or index >= size.train_videos + size.test_videos
        subset = p.subset_names[0] if train else p.subset_names[1]
        lo, hi = size.duration_s
        duration = round(float(np.exp(rng.uniform(np.log(lo), np.log(hi)))), 2)
        fps = 30.0 if self.dataset.default_fps is None and rng.random() < 0.8 else 29.97
        if self.dataset.default_fps is not None:
            fps = float(self.dataset.default_fps)
        video_id = self._video_id(rng, index, subset)
        return Video(video_id, subset, duration, fps, tuple(self._actions(rng, duration)))

    def _video_id(self, rng: np.random.Generator, index: int, subset: str) -> str:
        like = self.profile.like
        if like == "thumos14":
            return f"video_{subset}_{index:07d}"
        if like == "anet13_tsp":
            alphabet = string.ascii_letters + string.digits + "-_"
            return "".join(rng.choice(list(alphabet), 11))
        if like == "epic100":
            return f"P{index // 8 + 1:02d}_{index % 8 + 1:02d}"
        return str(_uuid(rng))

    def _actions(self, rng: np.random.Generator, duration: float) -> list[Action]:
        p = self.profile
        if p.per_video_actions is not None:
            count = 1 + int(rng.choice(len(p.per_video_actions), p=p.per_video_actions))
            a, b = p.cover_fraction
            lengths = [max(1.0, duration * rng.beta(a, b) / count) for _ in range(count)]
        else:
            count = max(1, int(rng.poisson(p.actions_per_minute * duration / 60.0)))
            median, sigma, lo, hi = p.action_s
            lengths = list(np.clip(median * np.exp(sigma * rng.standard_normal(count)), lo, min(hi, 0.9 * duration)))
        # classes available in this video (THUMOS: 1-2 main classes, ActivityNet: one)
        allowed = {}
        for task in self.tasks:
            probs = self.class_probs[task]
            if p.classes_per_video is not None:
                n = 1 if p.classes_per_video == 1 or rng.random() < 0.7 else p.classes_per_video
                allowed[task] = rng.choice(len(probs), size=n, replace=False, p=probs)
            else:
                allowed[task] = None
        actions: list[Action] = []
        for length in lengths:
            labels = tuple(
                int(rng.choice(allowed[t])) if allowed[t] is not None else int(rng.choice(len(self.class_probs[t]), p=self.class_probs[t]))
                for t in self.tasks
            )
            may_overlap = rng.random() < p.overlap_prob
            for _ in range(30):
                start = float(rng.uniform(0.0, max(duration - length, 0.0)))
                end = min(start + length, duration)
                if all(end <= a.start or start >= a.end or (may_overlap and a.labels != labels) for a in actions):
                    actions.append(Action(round(start, 2), round(end, 2), labels))
                    break
        actions.sort(key=lambda a: (a.start, a.end))
        return [a for a in actions if a.end - a.start >= 0.1]

    # -- features ----------------------------------------------------------------------------
    def num_steps(self, video: Video) -> int:
        return max(8, int(video.duration * video.fps / self.dataset.feat_stride))

    def latent(self, video: Video, rng: np.random.Generator) -> np.ndarray:
        """[T, latent_dim]: actions, background drift, distractors and a per-video offset."""
        ds, p = self.dataset, self.profile
        steps = self.num_steps(video)
        grid = np.arange(steps, dtype=np.float64)[:, None]
        z = np.zeros((steps, p.latent_dim))
        for action in video.actions:
            s, e = seconds_to_index(np.array([action.start, action.end]), video.fps, ds.feat_stride, ds.num_frames)
            width = max(0.35, 0.08 * (e - s))  # soft edges, softer on long actions
            weight = _sigmoid((grid - s) / width) * _sigmoid((e - grid) / width)
            strength = rng.uniform(0.7, 1.3)
            evidence = sum(self.prototypes[t][label] for t, label in zip(self.tasks, action.labels)) + 0.7 * self.action_direction
            z += strength * weight * evidence
        # background: a slowly drifting state (AR(1)) plus a per-video offset
        drift = np.empty((steps, p.latent_dim))
        drift[0] = rng.standard_normal(p.latent_dim)
        shocks = rng.standard_normal((steps, p.latent_dim)) * np.sqrt(1 - 0.97**2)
        for t in range(1, steps):
            drift[t] = 0.97 * drift[t - 1] + shocks[t]
        z += 0.25 * drift / np.sqrt(p.latent_dim) + 0.3 * rng.standard_normal(p.latent_dim) / np.sqrt(p.latent_dim)
        # unannotated distractor bursts, part-way like a random class
        for _ in range(int(rng.poisson(1 + steps / 150))):
            centre, half = rng.uniform(0, steps), rng.uniform(1.5, 12)
            task = self.tasks[int(rng.integers(len(self.tasks)))]
            look_alike = self.prototypes[task][int(rng.integers(len(self.prototypes[task])))]
            shape = np.exp(-0.5 * ((grid - centre) / half) ** 2)
            z += shape * rng.uniform(0.2, 0.45) * (look_alike + self.distractors[int(rng.integers(8))] + 0.3 * self.action_direction)
        return z

    def features(self, video: Video, index: int) -> dict[str, np.ndarray]:
        """Each feature type sees the latent through its own noise and projection, float32 [T, C]."""
        rng = video_rng(self.seed, self.profile.like, FEATURE_STREAM, index)
        z = self.latent(video, rng)
        out = {}
        for name in self.dataset.features:  # registry order: fixed, so the stream is too
            noisy = z + self.profile.latent_noise[name] * rng.standard_normal(z.shape) / np.sqrt(z.shape[1])
            x = noisy @ self.projections[name]
            x += self.profile.feature_noise * rng.standard_normal(x.shape)
            # Snap to a 2^-10 grid: BLAS and SIMD math may differ in the last bits between CPUs,
            # and the archive must be byte-identical everywhere for its recorded md5 to hold.
            out[name] = (np.round(x * 1024.0) / 1024.0).astype(np.float32)
        return out


def confusable_prototypes(rng: np.random.Generator, k: int, dim: int) -> np.ndarray:
    """Unit class prototypes drawn around shared cluster centres: classes of a cluster look alike."""
    clusters = max(1, k // 4)
    centres = rng.standard_normal((clusters, dim))
    own = rng.standard_normal((k, dim))
    protos = centres[rng.integers(clusters, size=k)] + 1.1 * own
    return protos / np.linalg.norm(protos, axis=1, keepdims=True)


def class_frequencies(rng: np.random.Generator, k: int, zipf: float, active: int | None) -> np.ndarray:
    weights = (1.0 + np.arange(k)) ** (-zipf)
    weights = weights[rng.permutation(k)]
    if active is not None and active < k:
        weights[rng.permutation(k)[active:]] = 0.0
    return weights / weights.sum()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))


def _uuid(rng: np.random.Generator) -> str:
    h = "".join(f"{int(b):02x}" for b in rng.integers(0, 256, 16))
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:32]}"


def label_names(like: str, task: str, k: int) -> list[str]:
    if like == "thumos14":
        return list(THUMOS_CLASSES)
    return [f"{task}_{i:03d}" for i in range(k)]


def annotation_database(model: TwinModel, videos: list[Video], task_index: int) -> dict[str, Any]:
    task = model.tasks[task_index]
    names = label_names(model.profile.like, task, model.dataset.tasks[task].num_classes)
    return {
        v.video_id: {
            "subset": v.subset,
            "duration": v.duration,
            "fps": v.fps,
            "annotations": [
                {"label": names[a.labels[task_index]], "label_id": a.labels[task_index], "segment": [a.start, a.end]}
                for a in v.actions
            ],
        }
        for v in videos
    }


def external_scores(model: TwinModel, videos: list[Video]) -> dict[str, Any]:
    """ActivityNet's external video-level classifier (cuhk_val_simp_share.json): ~90% top-1."""
    task = model.tasks[0]
    k = model.dataset.tasks[task].num_classes
    results = {}
    for i, v in enumerate(videos):
        rng = video_rng(model.seed, model.profile.like, SCORE_STREAM, i)
        logits = rng.standard_normal(k)
        if v.actions:
            logits[v.actions[0].labels[0]] += 3.2
        probs = np.exp(logits - logits.max())
        results[v.video_id] = [round(float(x), 6) for x in probs / probs.sum()]
    return {"results": results, "class": label_names(model.profile.like, task, k)}


def added_train_videos(version: str | None, size: ScaleSize) -> int:
    """How many annotated training videos data version `version` (a date, YYYY-MM-DD) adds to the
    twin: 1 to half the training set, derived from the date alone. The base twin (None) adds none."""
    if version is None:
        return 0
    return 1 + date.fromisoformat(version).toordinal() % max(1, size.train_videos // 2)


def twin_members(dataset: DatasetSpec, scale: str, seed: int, version: str | None = None) -> Iterator[tuple[str, bytes]]:
    """(archive path, bytes) of every file of the twin (of data version `version`), in a fixed order."""
    if dataset.name not in PROFILES:
        raise KeyError(dataset.name)
    model = TwinModel(dataset, PROFILES[dataset.name], seed, scale, version)
    videos = [model.video(i) for i in range(model.num_videos)]
    version = f"talbench synthetic twin of {dataset.name}, scale {scale}, seed {seed}" + (f", data version {version}" if version else "")
    for t, task in enumerate(model.tasks):
        yield dataset.tasks[task].annotations, annotation_json(annotation_database(model, videos, t), version).encode()
    if dataset.ext_score_file:
        yield dataset.ext_score_file, (json.dumps(external_scores(model, videos)) + "\n").encode()
    for i, video in enumerate(videos):
        for name, array in model.features(video, i).items():
            spec = dataset.features[name]
            yield f"{spec.folder}/{spec.prefix}{video.video_id}{spec.ext}", feature_file_bytes(array, spec)


def write_twin(dataset: DatasetSpec, scale: str, seed: int, out_dir: str | Path, version: str | None = None) -> TwinSummary:
    """Write the twin's archive `<out_dir>/<name>-<scale>-seed<seed>[-<version>].zip` and return its summary.

    The zip is laid out like the real archive (paths under dataset.root); stored members with
    fixed metadata make it byte-identical for the same seed. Written atomically.
    """
    out_dir = Path(out_dir)
    target = out_dir / archive_name(dataset.name, scale, seed, version)
    with atomic_path(target) as tmp:
        with zipfile.ZipFile(tmp, "w") as zf:
            for name, data in twin_members(dataset, scale, seed, version):
                add_to_zip(zf, name, data)
    return summarize(dataset, scale, seed, target)


def recorded_md5(params: dict[str, Any], like: str, scale: str, seed: int, version: str | None = None) -> str | None:
    """The md5 params.yaml records for this twin; recorded for seed 0 of the base twin only."""
    if seed != 0 or version is not None:
        return None
    value = (((params.get("synthetic") or {}).get("md5") or {}).get(like) or {}).get(scale)
    return None if value is None else str(value)


def archive_name(like: str, scale: str, seed: int, version: str | None = None) -> str:
    return f"{like}-{scale}-seed{seed}{'-' + version if version else ''}.zip"


@dataclass(frozen=True)
class TwinSummary:
    like: str
    scale: str
    seed: int
    archive: Path
    md5: str
    size_bytes: int
    feature_files: int
    subsets: dict[str, dict[str, float]]  # subset -> videos, instances, classes, mean duration, mean action length

    def as_dict(self) -> dict[str, Any]:
        return {
            "like": self.like, "scale": self.scale, "seed": self.seed, "archive": str(self.archive),
            "md5": self.md5, "size_bytes": self.size_bytes, "feature_files": self.feature_files, "subsets": self.subsets,
        }


def summarize(dataset: DatasetSpec, scale: str, seed: int, archive: Path) -> TwinSummary:
    """Statistics of a written twin, read back from its archive (the first task's annotations)."""
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        database = json.loads(zf.read(next(iter(dataset.tasks.values())).annotations))["database"]
    folders = tuple(f"{spec.folder}/" for spec in dataset.features.values())
    subsets: dict[str, dict[str, float]] = {}
    train = dataset.splits["train"]
    for subset in sorted({v["subset"] for v in database.values()}, key=lambda s: (s not in train, s)):
        videos = [v for v in database.values() if v["subset"] == subset]
        lengths = [a["segment"][1] - a["segment"][0] for v in videos for a in v["annotations"]]
        subsets[subset] = {
            "videos": len(videos),
            "instances": len(lengths),
            "classes": len({a["label_id"] for v in videos for a in v["annotations"]}),
            "mean_duration_s": round(float(np.mean([v["duration"] for v in videos])), 2),
            "mean_action_s": round(float(np.mean(lengths)), 2) if lengths else 0.0,
        }
    return TwinSummary(
        like=dataset.name, scale=scale, seed=seed, archive=archive, md5=file_md5(archive),
        size_bytes=archive.stat().st_size, feature_files=sum(n.startswith(folders) for n in names), subsets=subsets,
    )
