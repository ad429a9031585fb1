"""Which differences between two CPU machines change a talbench training run, and by how much?

Same code, same seed, same machine: training is bitwise reproducible. Across machines the ci-scale
average mAP moved by up to 5 points. This script trains ONE experiment (default thumos14-i3d, its
params.yaml recipe at ci scale) several times, each in a fresh subprocess whose environment differs
in one thing a second machine could differ in, and compares every run with the baseline:

  - run-to-run on this machine (the baseline repeated);
  - thread count (OMP_NUM_THREADS + torch.set_num_threads: 1, 2, 4 oversubscribed);
  - the instruction set of ATen's own CPU kernels (ATEN_CPU_CAPABILITY=default/avx2/avx512,
    only those the CPU supports);
  - oneDNN's instruction set (DNNL_MAX_CPU_ISA / ONEDNN_MAX_CPU_ISA=AVX2) and oneDNN switched off
    (torch.backends.mkldnn.enabled=False, set in the child from BENCH_MKLDNN=0);
  - MKL's code path (MKL_CBWR=COMPATIBLE, MKL_CBWR=AVX2, MKL_ENABLE_INSTRUCTIONS=AVX2);
  - all three held to AVX2 at once (avx2-machine: what an AVX2-only CPU would run, as near as we can);
  - optionally training seeds (init_rand_seed 0..4, baseline environment): the seed-to-seed spread
    of the mAP, to set the machine-induced shift against.

Each child trains (talbench.training.train), records the loss and a hash of the weights after every
optimisation step, scores its final weights (EMA, as the pipeline does) on the test split, and also
scores the baseline's weights under its own environment (the part of the shift due to inference
alone). The parent prints, per variation: wall seconds, sha256 of the final weights (state-dict
tensors hashed by name in sorted order, raw model and EMA), max |dweight| against the baseline,
final training loss, average mAP and mAP per tIoU, bitwise equality with the baseline; then where the
run first leaves the baseline (initial weights, first step whose loss / weights differ, first epoch
of metrics.jsonl that differs) and how the gap grows over the steps.

    .venv/bin/python bench/bench_determinism.py [--experiment NAME] [--variations NAME ...]
                                                [--seed N] [--threads N] [--steps N] [--reuse]
                                                [--out /tmp/determinism]
    .venv/bin/python bench/bench_determinism.py --list        # the variations and their env

Runs go to OUT/EXPERIMENT/VARIATION/ (checkpoint, metrics.jsonl, result.json, child.log, weight
snapshots); --steps N only trains the first N steps of each (the cheap bitwise probe: no mAP);
--threads N runs all children with N threads (faster on a busy 2-core machine); --reuse prints from the result.json of runs already there instead of training again.
One training at a time: the children run one after another. It prints figures; it is not a test.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

THREADS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "BENCH_THREADS")
# name -> environment of the child on top of the parent's; `requires` below drops those this CPU can't run
VARIATIONS: dict[str, dict[str, str]] = {
    "baseline": {},
    "baseline-repeat": {},
    "threads-1": {k: "1" for k in THREADS},
    "threads-2": {k: "2" for k in THREADS},
    "threads-4": {k: "4" for k in THREADS},
    "aten-default": {"ATEN_CPU_CAPABILITY": "default"},
    "aten-avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "aten-avx512": {"ATEN_CPU_CAPABILITY": "avx512"},
    "dnnl-isa-avx2": {"DNNL_MAX_CPU_ISA": "AVX2"},
    "onednn-isa-avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "mkldnn-off": {"BENCH_MKLDNN": "0"},
    "mkl-cbwr-compatible": {"MKL_CBWR": "COMPATIBLE"},
    "mkl-cbwr-avx2": {"MKL_CBWR": "AVX2"},
    "mkl-instr-avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    # an AVX2-only machine, as far as one can play it here: ATen, oneDNN and MKL all held to AVX2
    "avx2-machine": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    **{f"seed-{s}": {"BENCH_SEED": str(s)} for s in range(5)},
}
DEFAULT_VARIATIONS = [v for v in VARIATIONS if not v.startswith("seed-")]
REQUIRES = {"aten-avx2": "avx2", "aten-avx512": "avx512f", "dnnl-isa-avx2": "avx2", "onednn-isa-avx2": "avx2",
            "mkl-cbwr-avx2": "avx2", "mkl-instr-avx2": "avx2", "avx2-machine": "avx2"}
SNAPSHOT_STEPS = (1, 2, 5, 10, 20, 40, 80)  # + the last step: flattened weights kept for the |dw| growth


# -- child: one training run in this process's environment ---------------------------------------

def state_sha256(state: dict[str, Any]) -> str:
    """sha256 over the tensors of a state dict, by name in sorted order (name, dtype, shape, bytes)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def flat_weights(model: Any) -> Any:
    import torch

    return torch.cat([p.detach().reshape(-1) for _, p in sorted(model.state_dict().items())
                      if p.dtype.is_floating_point]).numpy().copy()


def apply_child_settings() -> dict[str, Any]:
    """The torch-side settings env vars can't make (threads, oneDNN on/off); what torch then runs with."""
    import torch

    if threads := os.environ.get("BENCH_THREADS"):
        torch.set_num_threads(int(threads))
    if os.environ.get("BENCH_MKLDNN") == "0":
        torch.backends.mkldnn.enabled = False
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "capability": torch.backends.cpu.get_cpu_capability(), "mkldnn": torch.backends.mkldnn.enabled}


def record_steps(out: Path) -> dict[str, list]:
    """Wrap talbench.training.training_step: per step the loss, the weights' hash and a few snapshots."""
    import numpy as np

    import talbench.training as training

    log: dict[str, list] = {"loss": [], "sha": [], "init_sha": []}
    original = training.training_step

    def step(net, optimizer, batch, masks, segments, labels, autocast, clip):  # noqa: ANN001, ANN202
        if not log["init_sha"]:
            log["init_sha"].append(state_sha256(net.state_dict()))
        losses = original(net, optimizer, batch, masks, segments, labels, autocast, clip)
        log["loss"].append(float(losses["final_loss"].detach()))
        log["sha"].append(state_sha256(net.state_dict())[:16])
        if len(log["loss"]) in SNAPSHOT_STEPS:
            np.save(out / f"w_step{len(log['loss'])}.npy", flat_weights(net))
        return losses

    training.training_step = step
    return log


def score(exp: Any, config: dict[str, Any], weights: dict[str, Any], source: Path) -> dict[str, Any]:
    from talbench.inference import score_experiment

    r = score_experiment(exp, config, weights, source).result
    return {"average_mAP": float(r.average_mAP), "mAP": [float(x) for x in r.mAP], "tious": [float(x) for x in r.tious]}


def child(args: argparse.Namespace) -> None:
    """Train, score, and write result.json into args.out (the run folder)."""
    import numpy as np

    from talbench.pipeline import resolve_experiment
    from talbench.training import load_checkpoint, read_checkpoint, train

    out = Path(args.out)
    settings = apply_child_settings()
    os.chdir(ROOT)  # the registry's data paths are relative to the project
    exp = resolve_experiment(args.experiment, ROOT / "params.yaml", out.parent / "_outputs")
    seed = int(os.environ.get("BENCH_SEED", args.seed if args.seed is not None else exp.config["init_rand_seed"]))
    config = exp.seed_config(seed)
    log = record_steps(out)
    t0 = time.perf_counter()
    summary = train(config, out, overwrite=True, progress=False, stop_after_steps=args.steps)
    train_s = time.perf_counter() - t0
    result = {"settings": settings, "seed": seed, "train_s": train_s, "steps": summary["steps"],
              "init_sha": log["init_sha"][0], "step_loss": log["loss"], "step_sha": log["sha"]}
    if args.steps:  # the first steps only: no checkpoint, no scoring
        (out / "result.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
        return
    state = read_checkpoint(out / "last.ckpt")
    model_sha, ema_sha = state_sha256(state["model"]), state_sha256(state["ema"]) if state["ema"] is not None else None
    np.save(out / f"w_step{summary['steps']}.npy",
            np.concatenate([state["model"][k].reshape(-1).numpy() for k in sorted(state["model"]) if state["model"][k].dtype.is_floating_point]))
    cfg, weights, kind = load_checkpoint(out / "last.ckpt")
    t1 = time.perf_counter()
    scored = score(exp, cfg, weights, out / "last.ckpt")
    infer_s = time.perf_counter() - t1
    baseline_ckpt = out.parent / "baseline" / "last.ckpt"
    on_baseline = None
    if out.name not in ("baseline", "baseline-repeat") and not out.name.startswith("seed-") and baseline_ckpt.exists():
        # the baseline's weights scored in this environment: the shift due to inference alone
        bcfg, bweights, _ = load_checkpoint(baseline_ckpt)
        on_baseline = score(exp, bcfg, bweights, baseline_ckpt)
    result |= {"infer_s": infer_s, "model_sha": model_sha, "ema_sha": ema_sha, "scored": kind, "history": summary["history"],
               **scored, "baseline_weights_here": on_baseline}
    (out / "result.json").write_text(json.dumps(result, indent=1), encoding="utf-8")


# -- parent: run the variations, compare, print ---------------------------------------------------

def cpu_flags() -> set[str]:
    text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def describe_machine() -> None:
    import torch

    model = next((ln.partition(":")[2].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.processor())
    flags = cpu_flags()
    print(f"CPU: {model}, {os.cpu_count()} logical CPUs; avx2={'avx2' in flags} fma={'fma' in flags}; "
          f"avx512: {' '.join(sorted(f for f in flags if f.startswith('avx512'))) or 'none'}; amx: {' '.join(sorted(f for f in flags if f.startswith('amx'))) or 'none'}")
    blas = [ln.strip() for ln in torch.__config__.show().splitlines() if "Math Kernel" in ln or "MKL-DNN" in ln]
    print(f"torch {torch.__version__}: capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads "
          f"(interop {torch.get_num_interop_threads()}), mkldnn enabled {torch.backends.mkldnn.enabled}; {'; '.join(blas)}")
    inherited = {k: os.environ[k] for k in sorted(os.environ) if k.split("_")[0] in ("OMP", "MKL", "DNNL", "ONEDNN", "ATEN", "KMP", "GOMP")}
    print(f"inherited env: {inherited or 'none of OMP_/MKL_/DNNL_/ONEDNN_/ATEN_/KMP_'}")


def run_child(name: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Train one variation in a fresh interpreter; its result.json (or the failure's log tail)."""
    result_file = folder / "result.json"
    if args.reuse and result_file.exists():
        return json.loads(result_file.read_text(encoding="utf-8")) | {"wall_s": None}
    folder.mkdir(parents=True, exist_ok=True)
    result_file.unlink(missing_ok=True)
    base = {k: str(args.threads) for k in THREADS} if args.threads else {}
    env = {**os.environ, **base, **VARIATIONS[name], "PYTHONHASHSEED": "0"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--experiment", args.experiment, "--out", str(folder)]
    if args.seed is not None:
        cmd += ["--seed", str(args.seed)]
    if args.steps:
        cmd += ["--steps", str(args.steps)]
    t0 = time.perf_counter()
    with open(folder / "child.log", "w", encoding="utf-8") as logf:
        rc = subprocess.call(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT, cwd=ROOT)
    wall = time.perf_counter() - t0
    if rc != 0 or not result_file.exists():
        tail = (folder / "child.log").read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        print(f"  {name}: child failed (exit {rc}):\n    " + "\n    ".join(tail), flush=True)
        return {"failed": rc, "wall_s": wall}
    return json.loads(result_file.read_text(encoding="utf-8")) | {"wall_s": wall}


def max_abs_diff(a: Path, b: Path, key: str) -> float | None:
    from talbench.training import read_checkpoint

    sa, sb = read_checkpoint(a)[key], read_checkpoint(b)[key]
    if sa is None or sb is None:
        return None
    return max(float((sa[k].double() - sb[k].double()).abs().max()) if sa[k].numel() else 0.0 for k in sa)


def first_difference(a: list, b: list) -> int | None:
    """1-based index of the first differing element (None when equal over the common length)."""
    return next((i + 1 for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


def growth(base_dir: Path, run_dir: Path, steps: list[int]) -> list[str]:
    import numpy as np

    cells = []
    for s in steps:
        fa, fb = base_dir / f"w_step{s}.npy", run_dir / f"w_step{s}.npy"
        cells.append(f"{float(np.abs(np.load(fa).astype(np.float64) - np.load(fb)).max()):.1e}" if fa.exists() and fb.exists() else "-")
    return cells


def pct(x: float | None) -> str:
    return f"{100 * x:6.2f}" if x is not None else f"{'-':>6}"


def print_tables(results: dict[str, dict[str, Any]], out: Path) -> None:
    base = results.get("baseline")
    if not base or "failed" in base:
        print("no baseline result: nothing to compare")
        return
    tious = " ".join(f"@{t:.2f}" for t in base["tious"])
    header = (f"{'variation':20} {'thr':>3} {'cap':>7} {'dnn':>3} {'wall s':>6} {'train s':>7} {'model sha256':>12} {'ema sha256':>12} "
              f"{'max|dw| raw':>11} {'max|dw| ema':>11} {'final loss':>10} {'avg mAP':>7} {'d avg':>6}  mAP {tious:33} {'bitwise':>7} {'mAP base-w':>10}")
    print("\n" + header + "\n" + "-" * len(header))
    for name, r in results.items():
        if "failed" in r:
            print(f"{name:20} failed (exit {r['failed']}), see {out / name / 'child.log'}")
            continue
        s = r["settings"]
        dw_raw = max_abs_diff(out / "baseline" / "last.ckpt", out / name / "last.ckpt", "model")
        dw_ema = max_abs_diff(out / "baseline" / "last.ckpt", out / name / "last.ckpt", "ema")
        same = r["model_sha"] == base["model_sha"] and r["ema_sha"] == base["ema_sha"]
        wall = f"{r['wall_s']:6.0f}" if r.get("wall_s") is not None else f"{'-':>6}"
        on_base = r.get("baseline_weights_here")
        print(f"{name:20} {s['threads']:3d} {s['capability']:>7} {'on' if s['mkldnn'] else 'off':>3} {wall} {r['train_s']:7.0f} "
              f"{r['model_sha'][:12]} {(r['ema_sha'] or '-')[:12]} {dw_raw:11.2e} {dw_ema:11.2e} {r['history'][-1]['final_loss']:10.6f} "
              f"{pct(r['average_mAP'])} {100 * (r['average_mAP'] - base['average_mAP']):+6.2f}  "
              f"{' '.join(pct(m) for m in r['mAP']):37} {'yes' if same else 'NO':>7} {pct(on_base['average_mAP'] if on_base else None):>10}")
    print("(mAP in %; d avg: average mAP minus the baseline's; mAP base-w: the baseline's final weights scored in this variation's "
          "environment, i.e. the shift from inference alone; cap: ATen CPU capability; dnn: torch.backends.mkldnn.enabled)")
    print_divergence(results, out, base)
    print_seed_spread(results, base)


def print_divergence(results: dict[str, dict[str, Any]], out: Path, base: dict[str, Any]) -> None:
    steps = [s for s in SNAPSHOT_STEPS if s <= base["steps"]] + [base["steps"]]
    header = (f"{'variation':20} {'init equal':>10} {'1st step loss differs':>21} {'1st step weights differ':>23} {'1st epoch differs':>17} "
              f"{'|d loss| step 1':>15} " + " ".join(f"{'|dw| @' + str(s):>9}" for s in steps) + f" {'rel |d loss| after epoch 1/2/4/8/last':>38}")
    print("\nWhere each run leaves the baseline (steps are 1-based; epochs as in metrics.jsonl, 0-based)\n" + header + "\n" + "-" * len(header))
    for name, r in results.items():
        if name == "baseline" or "failed" in r:
            continue
        loss_at = first_difference(base["step_loss"], r["step_loss"])
        sha_at = first_difference(base["step_sha"], r["step_sha"])
        epoch_at = first_difference([h["final_loss"] for h in base["history"]], [h["final_loss"] for h in r["history"]])
        d1 = abs(base["step_loss"][0] - r["step_loss"][0])
        rel = [abs(r["history"][e]["final_loss"] - base["history"][e]["final_loss"]) / abs(base["history"][e]["final_loss"])
               for e in (0, 1, 3, 7, len(base["history"]) - 1) if e < len(base["history"])]
        print(f"{name:20} {'yes' if r['init_sha'] == base['init_sha'] else 'NO':>10} {loss_at or '-':>21} {sha_at or '-':>23} "
              f"{epoch_at - 1 if epoch_at else '-':>17} {d1:15.1e} " + " ".join(f"{c:>9}" for c in growth(out / "baseline", out / name, steps))
              + " " + f"{' '.join(f'{x:.0e}' for x in rel):>38}")


def print_probe(results: dict[str, dict[str, Any]], out: Path) -> None:
    """--steps N: bitwise comparison of the first N steps only."""
    base = results.get("baseline")
    if not base or "failed" in base:
        print("no baseline result: nothing to compare")
        return
    n = base["steps"]
    snaps = [s for s in SNAPSHOT_STEPS if s <= n]
    header = (f"{'variation':20} {'thr':>3} {'cap':>7} {'dnn':>3} {'init equal':>10} {'1st step loss differs':>21} "
              f"{'1st step weights differ':>23} " + " ".join(f"{'|d loss| @' + str(s + 1):>12}" for s in range(n))
              + " " + " ".join(f"{'|dw| @' + str(s):>9}" for s in snaps) + f" {'bitwise @' + str(n):>10}")
    print(f"\nFirst {n} optimisation steps of each variation against the baseline (steps 1-based)\n" + header + "\n" + "-" * len(header))
    for name, r in results.items():
        if "failed" in r:
            print(f"{name:20} failed (exit {r['failed']}), see {out / name / 'child.log'}")
            continue
        s = r["settings"]
        loss_at = first_difference(base["step_loss"], r["step_loss"])
        sha_at = first_difference(base["step_sha"], r["step_sha"])
        print(f"{name:20} {s['threads']:3d} {s['capability']:>7} {'on' if s['mkldnn'] else 'off':>3} "
              f"{'yes' if r['init_sha'] == base['init_sha'] else 'NO':>10} {loss_at or '-':>21} {sha_at or '-':>23} "
              + " ".join(f"{abs(a - b):12.2e}" for a, b in zip(base["step_loss"], r["step_loss"]))
              + " " + " ".join(f"{c:>9}" for c in growth(out / "baseline", out / name, snaps))
              + f" {'yes' if r['step_sha'] == base['step_sha'] and r['init_sha'] == base['init_sha'] else 'NO':>10}")


def print_seed_spread(results: dict[str, dict[str, Any]], base: dict[str, Any]) -> None:
    import statistics

    seeds = {n: r for n, r in results.items() if n.startswith("seed-") and "failed" not in r}
    if len(seeds) < 2:
        return
    maps = [100 * r["average_mAP"] for r in seeds.values()]
    print(f"\nseed-to-seed (baseline env, {len(maps)} seeds {', '.join(str(r['seed']) for r in seeds.values())}): average mAP "
          f"{' '.join(f'{m:.2f}' for m in maps)}; mean {statistics.mean(maps):.2f}, sd {statistics.stdev(maps):.2f}, "
          f"range {max(maps) - min(maps):.2f} points")
    shifts = [abs(100 * (r["average_mAP"] - base["average_mAP"])) for n, r in results.items()
              if not n.startswith("seed-") and n != "baseline" and "failed" not in r and "average_mAP" in r]
    if shifts:
        print(f"machine-type variations (same seed {base['seed']}): |d average mAP| up to {max(shifts):.2f} points")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="thumos14-i3d")
    parser.add_argument("--variations", nargs="+", default=DEFAULT_VARIATIONS, metavar="NAME",
                        help=f"default: all but the seeds; 'seeds' adds seed-0..seed-4; known: {', '.join(VARIATIONS)}")
    parser.add_argument("--seed", type=int, default=None, help="training seed of every non-seed run (default: the recipe's init_rand_seed)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/determinism"))
    parser.add_argument("--threads", type=int, default=None,
                        help="run every child (baseline included) with N threads, unless the variation sets its own; "
                             "e.g. --threads 1 --variations seeds for a fast seed sweep on a busy machine")
    parser.add_argument("--steps", type=int, default=None,
                        help="train only the first N optimisation steps (no checkpoint, no mAP): the cheap bitwise probe")
    parser.add_argument("--reuse", action="store_true", help="take runs that have a result.json from there instead of training")
    parser.add_argument("--list", action="store_true", help="print the variations and their environment, then stop")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.list:
        for name, env in VARIATIONS.items():
            print(f"{name:20} {env}")
        return None
    names = [n for v in args.variations for n in ([f"seed-{s}" for s in range(5)] if v == "seeds" else [v])]
    if unknown := [n for n in names if n not in VARIATIONS]:
        parser.error(f"unknown variation(s): {', '.join(unknown)}")
    names = ["baseline"] + [n for n in dict.fromkeys(names) if n != "baseline"]
    flags = cpu_flags()
    if skipped := [n for n in names if REQUIRES.get(n, "fpu") not in flags]:
        print(f"skipped, the CPU lacks the instruction set: {', '.join(skipped)}")
        names = [n for n in names if n not in skipped]
    describe_machine()
    out = args.out / args.experiment / ((f"steps-{args.steps}" if args.steps else "full") + (f"-threads-{args.threads}" if args.threads else ""))
    results = {}
    for name in names:
        print(f"running {name} {VARIATIONS[name] or '(inherited env)'} ...", flush=True)
        results[name] = run_child(name, args, out / name)
        r = results[name]
        if "failed" not in r and args.steps:
            print(f"  {name}: {r['steps']} steps in {r['train_s']:.0f} s, losses {' '.join(repr(x) for x in r['step_loss'])}", flush=True)
        elif "failed" not in r:
            print(f"  {name}: train {r['train_s']:.0f} s, avg mAP {100 * r['average_mAP']:.2f}, model {r['model_sha'][:12]}, "
                  f"final loss {r['history'][-1]['final_loss']:.6f}", flush=True)
    (print_probe if args.steps else print_tables)(results, out)
    return None


if __name__ == "__main__":
    main()
