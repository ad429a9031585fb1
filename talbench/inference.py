"""Inference: a checkpoint and a split in, ActivityNet-format detections out (what `talbench score` reads).

Long videos run in bounded memory: with test_cfg.chunk_size > 0 a video longer than that is cut
into overlapping windows whose candidates are shifted back and merged before NMS.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from talbench.data.dataset import VideoDataset, VideoItem
from talbench.data.formats import is_number, read_json
from talbench.errors import InputError

if TYPE_CHECKING:
    from talbench.pipeline import PipelineExperiment


def windows(length: int, chunk: int, overlap: float) -> list[int]:
    """Start steps of windows of `chunk` steps covering `length`, overlapping by `overlap` of a window."""
    if chunk <= 0 or length <= chunk:
        return [0]
    hop = max(1, int(chunk * (1 - overlap)))
    starts = list(range(0, length - chunk, hop))
    return starts + [length - chunk]


def inference_precision(test_cfg: dict[str, Any], device: torch.device) -> torch.autocast:
    """The autocast region of test_cfg.precision on `device`. Around many videos, the weights are
    cast to bf16 once for all of them instead of once per video."""
    from talbench.training import precision_context, resolve_precision

    return precision_context(resolve_precision(test_cfg.get("precision", "auto"), device), device)


@torch.no_grad()
def inference_model(model: torch.nn.Module, test_cfg: dict[str, Any], device: torch.device) -> torch.nn.Module:
    """`model` on `device` in eval mode, its conv weights stored once as the kernels read them: in bf16
    where test_cfg.precision computes in bf16, and with the input channels innermost. Otherwise
    autocast and oneDNN would convert every weight again for every video (a model for inference
    only: these strides are not for the optimizer)."""
    from talbench.training import resolve_precision

    model = model.to(device).eval()
    bf16 = resolve_precision(test_cfg.get("precision", "auto"), device) == "bf16"
    for module in model.modules():
        if isinstance(module, torch.nn.Conv1d):
            weight = module.weight.data.to(torch.bfloat16) if bf16 else module.weight.data
            module.weight.data = weight.transpose(1, 2).contiguous().transpose(1, 2)  # [C_out, k, C_in] in memory
    return model


@torch.no_grad()
def video_candidates(model: torch.nn.Module, item: VideoItem, device: torch.device, test_cfg: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pre-NMS candidates (grid units) of one video, whole or in overlapping windows."""
    from talbench.models import pad_batch

    cast = inference_precision(test_cfg, device)
    feats = item.feats.to(device)
    chunk = int(test_cfg.get("chunk_size") or 0)
    parts = []
    for start in windows(feats.shape[1], chunk, float(test_cfg.get("chunk_overlap", 0.25))):
        window = feats[:, start: start + chunk] if chunk > 0 else feats
        batch, masks = pad_batch([window], model.max_div_factor, channels_last=True)
        with cast:
            out = model(batch, masks)[0]
        parts.append((out["segments"] + start, out["scores"], out["labels"]))
    return tuple(torch.cat(p) for p in zip(*parts))  # type: ignore[return-value]


def fuse_external_scores(result: dict[str, torch.Tensor], class_scores: list[float], topk: int = 2) -> dict[str, torch.Tensor]:
    """ActivityNet protocol: class-agnostic segments take the video's top-k classes, score sqrt(p_cls · p_seg)."""
    scores = torch.as_tensor(class_scores, dtype=torch.float64)
    top = torch.argsort(scores, descending=True, stable=True)[:topk]
    seg_scores = result["scores"].double()
    return {
        "segments": result["segments"].repeat(len(top), 1),
        "scores": torch.sqrt(scores[top][:, None] * seg_scores[None, :]).flatten(),
        "labels": top[:, None].expand(-1, len(seg_scores)).flatten(),
    }


def predict(config: dict[str, Any], weights: dict[str, Any], dataset: VideoDataset, device: torch.device,
            progress: bool = True, source: str | Path = "checkpoint") -> dict[str, Any]:
    """Detections for every video of `dataset` (an inference split), in the ActivityNet results format (label ids, seconds).

    `source` names the checkpoint the weights came from, for the error line when they do not fit the config.
    """
    from talbench.models import build_model
    from talbench.progress import Progress
    from talbench.training import load_weights

    model = build_model(config["model"])
    load_weights(model, weights, source)
    test_cfg = config["test_cfg"]
    model = inference_model(model, test_cfg, device)
    ext_scores = _external_scores(test_cfg, config["dataset"], dataset)
    results: dict[str, list[dict[str, Any]]] = {}
    bar = Progress("inference", len(dataset), unit="video", enabled=progress)  # plain lines in logs, tqdm on a terminal
    with inference_precision(test_cfg, device):  # one region around all videos
        for i in range(len(dataset)):
            item = dataset[i]
            results[item.video_id] = video_results(model, item, device, test_cfg, ext_scores)
            bar.update()
    bar.close()
    return {"version": "talbench", "results": results, "external_data": {"used": ext_scores is not None}}


def video_results(model: torch.nn.Module, item: VideoItem, device: torch.device, test_cfg: dict[str, Any],
                  ext_scores: dict[str, list[float]] | None = None) -> list[dict[str, Any]]:
    """One video's detections, best first, in the ActivityNet results format."""
    from talbench.eval.nms import postprocess_video

    segments, scores, labels = video_candidates(model, item, device, test_cfg)
    out = postprocess_video(segments, scores, labels, fps=item.fps, feat_stride=item.feat_stride,
                            num_frames=item.feat_num_frames, duration=item.duration, nms_cfg=test_cfg)
    if ext_scores is not None:
        out = fuse_external_scores(out, ext_scores[item.video_id])
    order = torch.argsort(out["scores"], descending=True, stable=True)
    return [{"label": int(out["labels"][j]), "score": float(out["scores"][j]), "segment": [float(x) for x in out["segments"][j]]}
            for j in order.tolist()]


def _external_scores(test_cfg: dict[str, Any], dataset_cfg: dict[str, Any], dataset: VideoDataset) -> dict[str, list[float]] | None:
    path = test_cfg.get("ext_score_file")
    if not path or test_cfg.get("multiclass_nms", True):
        return None
    if str(path).endswith(".pkl"):
        raise InputError(path, "-", "ext_score_file", "pickled score files are not read (unsafe); convert it to JSON {'results': {video_id: [scores]}}")
    scores = read_json(path)
    scores = scores.get("results", scores) if isinstance(scores, dict) else scores
    if not isinstance(scores, dict):
        raise InputError(path, "-", "results", "expected {'results': {video_id: [score per class]}}")
    for rec in dataset.records:
        if rec.video_id not in scores:
            raise InputError(path, rec.video_id, "results", "no external classification scores for this video")
        _check_class_scores(path, rec.video_id, scores[rec.video_id])
    return scores


def _check_class_scores(path: str | Path, video_id: str, values: Any) -> None:
    if not (isinstance(values, list) and values and all(is_number(v) and 0 <= v <= 1 for v in values)):
        raise InputError(path, video_id, "results", "expected a non-empty list of class probabilities in [0, 1]")


def check_class_agnostic(config: dict[str, Any], label_names: dict[int, str]) -> str | None:
    """A warning for the frequent ActivityNet confusion: a 1-class model scored without score fusion."""
    test_cfg = config["test_cfg"]
    if config["dataset"]["num_classes"] == 1 and len(label_names) > 1 and not (test_cfg.get("ext_score_file") and not test_cfg.get("multiclass_nms", True)):
        return ("the model is class-agnostic (num_classes 1) but the annotations have "
                f"{len(label_names)} classes: set test_cfg.ext_score_file (external video-level "
                "classification scores) and multiclass_nms: False, as the published ActivityNet protocol does; "
                "without them every detection is labelled class 0 and the mAP is meaningless")
    return None


@dataclass(frozen=True)
class Scored:
    results: dict[str, Any]  # the predictions, ActivityNet results format
    scores: dict[str, Any]  # what `talbench score` writes (talbench.eval.detection.result_to_dict)
    result: Any  # the evaluator's DetectionResult (curves, per-class AP)
    label_names: dict[int, str]
    truth: Any  # the test split's GroundTruth and the parsed Predictions: what a paired comparison resamples
    predictions: Any


def score_experiment(exp: PipelineExperiment, config: dict[str, Any], weights: dict[str, Any], source: str | Path) -> Scored:
    """Infer `weights` (a model of `config`) on the experiment's test split and score it with the
    dataset's protocol. `source` names the weights in messages."""
    from talbench.eval.detection import evaluate_detection, result_to_dict
    from talbench.eval.inputs import ground_truth, parse_predictions
    from talbench.training import init_distributed, pick_device

    dataset = VideoDataset(config["dataset"], config["val_split"], is_training=False)
    if problem := check_class_agnostic(config, dataset.label_names):
        raise InputError(config["dataset"]["json_file"], exp.name, "ext_score_file", problem)
    results = predict(config, weights, dataset, pick_device(None, init_distributed()), source=source)
    annotations, spec = dataset.annotations, exp.experiment.dataset
    preds, warnings = parse_predictions(results, annotations, exp.predictions(int(config["init_rand_seed"])),
                                        num_classes=spec.tasks[exp.experiment.task].num_classes)
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    truth = ground_truth(annotations, config["val_split"][0])
    result = evaluate_detection(truth, preds, spec.tiou_thresholds())
    return Scored(results, result_to_dict(result, annotations.label_names), result, annotations.label_names, truth, preds)
