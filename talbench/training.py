"""Training: the published ActionFormer recipe, resumable, single- or multi-process (torchrun).

Everything random is derived from (seed, epoch, rank, item): the data order, the truncation
crops and the dropout streams. A run killed at any point and resumed from its last checkpoint
therefore ends with the same weights as an uninterrupted one (on CPU, bit for bit).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from talbench.config import dump_config
from talbench.data.dataset import VideoDataset, collate
from talbench.errors import InputError
from talbench.io import recover_outputs, staged_outputs

CHECKPOINT = "last.ckpt"


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; nccl on GPU, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(requested: str | None, d: Dist) -> torch.device:
    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError:
            raise InputError("--device", requested, "device", "expected cpu, cuda or cuda:N") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InputError("--device", requested, "device", "CUDA is not available on this machine: use --device cpu (or leave it out)")
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            raise InputError("--device", requested, "device", f"this machine has {torch.cuda.device_count()} CUDA device(s)")
        if device.type not in ("cpu", "cuda"):
            raise InputError("--device", requested, "device", "expected cpu, cuda or cuda:N")
        return device
    return torch.device(f"cuda:{d.local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes bf16 in hardware: CUDA, or a CPU with AVX512-BF16 or AMX.

    Elsewhere bf16 is emulated and slower than fp32.
    """
    if device.type == "cuda":
        return True
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes: assume no
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """'fp32' or 'bf16' for a config's precision ('auto': bf16 where the device computes it natively)."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def precision_context(precision: str, device: torch.device) -> torch.autocast:
    """The autocast context of a resolved precision: convs and matmuls in bf16, losses and norms in fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv/linear weights only; never on biases, norms, scales or embeddings."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            is_weight = name == "weight" and isinstance(module, (torch.nn.Conv1d, torch.nn.Linear))
            (decay if is_weight else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, opt: dict[str, Any]) -> torch.optim.Optimizer:
    groups = param_groups(model, float(opt["weight_decay"]))
    if opt["type"] == "AdamW":
        # the fused kernel: one pass over all parameters instead of ~10 small ops per tensor (3.7x on CPU)
        return torch.optim.AdamW(groups, lr=float(opt["learning_rate"]), fused=True)
    if opt["type"] == "SGD":
        return torch.optim.SGD(groups, lr=float(opt["learning_rate"]), momentum=float(opt["momentum"]))
    raise ValueError(f"opt.type must be AdamW or SGD, got {opt['type']!r}")


def learning_rate(step: int, iters_per_epoch: int, opt: dict[str, Any]) -> float:
    """Linear warm-up, then cosine decay (or multistep), stepped per iteration; a pure function of step."""
    base = float(opt["learning_rate"])
    warmup = int(opt["warmup_epochs"]) * iters_per_epoch if opt["warmup"] else 0
    if step < warmup:
        return base * (step + 1) / warmup
    total = int(opt["epochs"]) * iters_per_epoch
    done = step - warmup
    if opt["schedule_type"] == "cosine":
        return 0.5 * base * (1 + math.cos(math.pi * min(done, total) / max(total, 1)))
    passed = sum(done >= s * iters_per_epoch for s in opt["schedule_steps"])
    return base * float(opt["schedule_gamma"]) ** passed


class ModelEMA:
    """Exponential moving average of the weights, with an optional warm-up of the decay."""

    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.warmup = decay, warmup

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay
        averaged, copied = [], []
        for ema_v, v in zip(self.module.state_dict().values(), model.state_dict().values()):
            (averaged if ema_v.dtype.is_floating_point else copied).append((ema_v, v.detach()))
        if averaged:
            torch._foreach_lerp_([e for e, _ in averaged], [v for _, v in averaged], 1 - decay)  # ema += (1-decay)(v-ema)
        for ema_v, v in copied:
            ema_v.copy_(v)


def loader_workers(requested: int, device: torch.device) -> int:
    """Loader processes: the config's number, but none on cores the computation uses.

    On CPU, workers on the cores torch's threads run on preempt them in every parallel region:
    measured on 2 cores, 2 workers made each training step 15% slower than loading in-process.
    """
    cores = os.cpu_count() or 1
    if device.type == "cpu":
        cores -= torch.get_num_threads()
    return max(0, min(requested, cores))


def epoch_batches(n: int, batch: int, seed: int, epoch: int, d: Dist) -> list[list[int]]:
    """This rank's batches of one epoch; ranks share one permutation, so the union is one process's epoch."""
    order = np.random.default_rng([seed, epoch]).permutation(n).tolist()
    per_rank = len(order) // d.world
    mine = order[d.rank: per_rank * d.world: d.world]
    return [mine[i: i + batch] for i in range(0, len(mine) - batch + 1, batch)]


def _to(item_list: list[Any], device: torch.device) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    return ([i.feats.to(device) for i in item_list], [i.segments.to(device) for i in item_list], [i.labels.to(device) for i in item_list])


def training_step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: torch.Tensor, masks: torch.Tensor,
                  segments: list[torch.Tensor], labels: list[torch.Tensor], autocast: Any, clip: float) -> dict[str, torch.Tensor]:
    """One optimisation step (forward, loss, backward, clipping, update); the benchmarks time this too."""
    with autocast:
        losses = net(batch, masks, segments, labels)
    optimizer.zero_grad(set_to_none=True)
    losses["final_loss"].backward()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
    optimizer.step()
    return losses


def train(config: dict[str, Any], output: str | Path, *, resume: bool = False, overwrite: bool = False,
          device: str | None = None, progress: bool = True, stop_after_steps: int | None = None,
          on_epoch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train and checkpoint every epoch into `output`; returns a summary (final losses, steps, seconds).

    A folder that already holds a run is continued with `resume` or started over with `overwrite`,
    never silently mixed. Each epoch's checkpoint, metrics.jsonl and config.yaml are committed
    together; nothing is written before the first epoch ends, so a run that fails early leaves no folder.
    `on_epoch` (rank 0 only) receives each epoch's record after its checkpoint: experiment tracking.
    """
    from talbench.models import build_model, pad_batch

    d = init_distributed()
    dev = pick_device(device, d)
    output = Path(output)
    state = _run_state(output, resume, overwrite, dev)
    seed = int(config["init_rand_seed"])
    seed_everything(seed)
    dataset = VideoDataset(config["dataset"], config["train_split"], is_training=True, seed=seed)
    batch_size = int(config["loader"]["batch_size"])
    if batch_size % d.world:
        raise InputError("loader.batch_size", str(batch_size), "batch_size", f"not divisible by the {d.world} processes")
    per_rank = batch_size // d.world
    if len(dataset) < batch_size:
        raise InputError(config["dataset"]["json_file"], ",".join(config["train_split"]), "loader.batch_size",
                         f"{len(dataset)} training videos are fewer than loader.batch_size {batch_size}")
    model = build_model(config["model"]).to(dev)
    ema = ModelEMA(model, float(config["ema"]["decay"]), bool(config["ema"]["warmup"])) if config["ema"]["enabled"] else None
    optimizer = make_optimizer(model, config["opt"])
    iters = len(dataset) // d.world // per_rank
    epochs = int(config["opt"]["epochs"]) + (int(config["opt"]["warmup_epochs"]) if config["opt"]["warmup"] else 0)
    start_epoch, step, history = 0, 0, []
    if state is not None:
        _restore(output / CHECKPOINT, state, model, optimizer, ema)
        start_epoch, step, history = state["epoch"] + 1, state["step"], state["history"]
    net = torch.nn.parallel.DistributedDataParallel(model) if d.world > 1 else model
    clip = float(config["train_cfg"]["clip_grad_l2norm"])
    precision = resolve_precision(config["train_cfg"]["precision"], dev)
    workers = loader_workers(int(config["loader"]["num_workers"]), dev)
    bar = _progress(progress and d.main, epochs, iters, start_epoch)
    started = time.time()
    for epoch in range(start_epoch, epochs):
        dataset.set_epoch(epoch)
        torch.manual_seed(int(np.random.SeedSequence([seed, epoch, d.rank]).generate_state(1)[0]))  # this epoch's dropout stream
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=epoch_batches(len(dataset), per_rank, seed, epoch, d),
                                             collate_fn=collate, num_workers=workers)
        net.train()
        sums: dict[str, float] = {}
        for items in loader:
            lr = learning_rate(step, iters, config["opt"])
            for group in optimizer.param_groups:
                group["lr"] = lr
            feats, segments, labels = _to(items, dev)
            batch, masks = pad_batch(feats, model.max_div_factor)
            losses = training_step(net, optimizer, batch, masks, segments, labels, precision_context(precision, dev), clip)
            step += 1
            if ema is not None:
                ema.update(model, step)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            bar.update(epoch, step, {k: float(v.detach()) for k, v in losses.items()}, lr)
            if stop_after_steps is not None and step >= stop_after_steps:
                bar.close()
                return {"steps": step, "stopped_early": True}
        record = {"epoch": epoch, "step": step, "lr": lr, **{k: v / max(iters, 1) for k, v in sums.items()}}
        history.append(record)
        if d.main:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "step": step,
                     "history": history, "config": config, "ema": ema.module.state_dict() if ema is not None else None}
            commit_epoch(output, state)
            if on_epoch is not None:
                on_epoch(record)
    bar.close()
    if d.world > 1:
        dist.barrier()
    return {"steps": step, "epochs": epochs, "seconds": time.time() - started, "history": history, "precision": precision,
            "device": str(dev)}


RUN_FILES = (CHECKPOINT, "metrics.jsonl", "config.yaml")


def _run_state(output: Path, resume: bool, overwrite: bool, device: torch.device) -> dict[str, Any] | None:
    """The checkpoint to continue from (resume), None for a fresh run; refuses to mix two runs."""
    if output.exists() and not output.is_dir():
        raise InputError(output, "-", "output", "a file is there, not a run folder")
    recover_outputs(output, "epoch")  # an epoch's commit cut short by a kill is finished first
    if resume and (output / CHECKPOINT).exists():
        return read_checkpoint(output / CHECKPOINT, device)
    if not resume and not overwrite and output.is_dir() and any(output.iterdir()):
        held = ", ".join(sorted(p.name for p in output.iterdir())[:4])
        raise InputError(output, "-", "output", f"the folder is not empty ({held}): --resume continues the run in it, --overwrite starts over")
    return None


def commit_epoch(output: Path, state: dict[str, Any]) -> None:
    """Checkpoint, curve and config of one epoch, replaced together (a kill leaves the previous epoch's)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)  # to memory first: torch's own file writer hides a full disk behind a RuntimeError
    with staged_outputs(output, "epoch") as tmp:
        (tmp / CHECKPOINT).write_bytes(buffer.getbuffer())
        (tmp / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in state["history"]), encoding="utf-8")
        (tmp / "config.yaml").write_text(dump_config(state["config"]), encoding="utf-8")


class _progress:
    """Training progress over all iterations with epoch, loss, lr and ETA (talbench.progress); silent on other ranks.

    A tqdm bar on a terminal; in logs (DVC, Airflow) a plain line every few seconds and a summary at the end.
    """

    def __init__(self, enabled: bool, epochs: int, iters: int, start_epoch: int) -> None:
        from talbench.progress import Progress

        self.bar = Progress("train", epochs * iters, counter="step", initial=start_epoch * iters, enabled=enabled)
        self.epochs = epochs
        self.epoch, self.sum, self.count = -1, 0.0, 0  # the running epoch's mean loss, for the summary

    def update(self, epoch: int, step: int, losses: dict[str, float], lr: float) -> None:
        if self.bar.enabled:
            if epoch != self.epoch:
                self.epoch, self.sum, self.count = epoch, 0.0, 0
            self.sum, self.count = self.sum + losses["final_loss"], self.count + 1
            detail = f"loss {losses['final_loss']:.3f} (cls {losses['cls_loss']:.3f}, reg {losses['reg_loss']:.3f}), lr {lr:.1e}"
            self.bar.update(1, desc=f"epoch {epoch + 1}/{self.epochs}", detail=detail)

    def close(self) -> None:
        self.bar.close(f"final loss {self.sum / self.count:.3f} (last epoch mean)" if self.count else None)


CHECKPOINT_KEYS = ("model", "optimizer", "epoch", "step", "history", "config", "ema")


def read_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A talbench checkpoint, loaded without running code (weights_only); anything else is one InputError line."""
    import pickle
    import zipfile

    path = Path(path)
    if path.is_dir():
        raise InputError(path, "-", "checkpoint", "a folder, not a checkpoint file")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise InputError(path, "-", "checkpoint", "checkpoint not found") from None
    except pickle.UnpicklingError as exc:
        why = "it holds objects other than tensors and plain values, which could run code" if "weights_only" in str(exc).lower() else _first_line(exc)
        raise InputError(path, "-", "checkpoint", f"refusing to load: {why}") from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise InputError(path, "-", "checkpoint", f"not a readable checkpoint (truncated or another format: {_first_line(exc)})") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise InputError(path, "-", "checkpoint", f"not a talbench checkpoint (no {', '.join(missing)})")
    return state


def _restore(path: Path, state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer, ema: ModelEMA | None) -> None:
    """Load a checkpoint's weights into this run; a checkpoint of another model or recipe is one line."""
    with _fitting(path):
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and state["ema"] is not None:
            ema.module.load_state_dict(state["ema"])


@contextlib.contextmanager
def _fitting(path: str | Path) -> Iterator[None]:
    """State dicts loaded in the body must fit the model built from the config: else one InputError line."""
    try:
        yield
    except (RuntimeError, ValueError, KeyError) as exc:
        raise InputError(path, "-", "model", f"the checkpoint does not fit this config ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[1] if len(lines) > 1 and lines[0].endswith(":") else (lines[0] if lines else type(exc).__name__)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu", prefer_ema: bool = True) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(config, weights, which): the EMA weights when the run kept them (and prefer_ema), else the raw weights."""
    state = read_checkpoint(path, device)
    if prefer_ema and state.get("ema") is not None:
        return state["config"], state["ema"], "ema"
    return state["config"], state["model"], "model"


def load_weights(model: torch.nn.Module, weights: dict[str, Any], path: str | Path) -> None:
    """Weights into a model built from the config; a checkpoint of another architecture is one line."""
    with _fitting(path):
        model.load_state_dict(weights)
