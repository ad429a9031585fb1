"""How stable is the ranking of the six Ego4D Moment Queries experiments across training seeds?

The six ego4d_mq experiments of params.yaml (one recipe, configs/ci/ego4d_omnivore_egovlp.yaml,
different feature types) are trained on the synthetic twin at one scale and number of epochs, once
per training seed, and scored on the twin's test split. The study prints:

* per experiment the average mAP of each seed, and its mean ± std over seeds;
* the ranking (by average mAP) of each seed and of the seed means;
* rank stability: Kendall's tau between every two seeds' rankings and between each seed's ranking
  and the seed-mean ranking, and how many seeds give exactly the seed-mean ranking;
* for each adjacent pair of the seed-mean ranking whether the two are distinguishable: the verdict
  of the paired bootstrap over test videos per seed (talbench.eval.statistics.paired_bootstrap), the
  same bootstrap of the seed means (per-seed replicate differences averaged over seeds: test-video
  noise only), and the difference of means against the seed-to-seed spread (std of the per-seed
  differences, and a t statistic with n - 1 degrees of freedom);
* the cost: training and inference seconds (wall and process CPU time), per run and in total.

Nothing in the repository changes: a scratch params file (`synthetic.scale`, `data.root` changed)
is written under the study folder, the twin is built there if missing, and every (scale, epochs,
seed, experiment) run is cached as JSON, so a rerun resumes and adding seeds reuses finished runs.

    .venv/bin/python bench/study_ego4d_ranking.py --scale ci --epochs 15 --seeds 0 1 2
        [--experiments ego4d_mq-slowfast ...] [--out /tmp/ego4d_study] [--threads 1]
        [--resamples 1000] [--report-only]

`--epochs` is the recipe's `opt.epochs`; training runs `opt.warmup_epochs` (2) more on top of it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import itertools
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from talbench.config import finalize  # noqa: E402
from talbench.data.fetch import MANIFEST, dataset_dir, prepare_dataset  # noqa: E402
from talbench.data.formats import load_annotations  # noqa: E402
from talbench.data.registry import load_registry  # noqa: E402
from talbench.eval import statistics as st  # noqa: E402
from talbench.eval.inputs import ground_truth, parse_predictions  # noqa: E402
from talbench.inference import score_experiment  # noqa: E402
from talbench.pipeline import PipelineExperiment, resolve_experiment  # noqa: E402
from talbench.training import load_checkpoint, train  # noqa: E402

DATASET = "ego4d_mq"
EXPERIMENTS = (
    "ego4d_mq-slowfast", "ego4d_mq-omnivore", "ego4d_mq-egovlp",
    "ego4d_mq-slowfast+egovlp", "ego4d_mq-omnivore+egovlp", "ego4d_mq-slowfast+omnivore+egovlp",
)


# -- setup ---------------------------------------------------------------------------------------


def scratch_params(scale: str, out: Path) -> Path:
    """params.yaml with `synthetic.scale` and `data.root` pointed at the study folder; the repo's is untouched."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["synthetic"]["scale"] = scale
    params["data"]["root"] = str(out / f"data-{scale}")
    path = out / f"params-{scale}.yaml"
    text = yaml.safe_dump(params, sort_keys=False)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return path


def ensure_twin(params_path: Path) -> None:
    """Build the twin (the fetch stage's library call, md5 checked for seed 0) unless it is there."""
    params = yaml.safe_load(params_path.read_text(encoding="utf-8"))
    if not (dataset_dir(DATASET, params) / MANIFEST).is_file():
        prepare_dataset(DATASET, load_registry(params_path), params, progress=False)


def resolve(name: str, params_path: Path, out: Path) -> PipelineExperiment:
    with contextlib.redirect_stdout(io.StringIO()):  # the registry notes, once per experiment
        return resolve_experiment(name, params_path, out / "scored")


def seeded_config(exp: PipelineExperiment, seed: int, epochs: int) -> dict[str, Any]:
    config = copy.deepcopy(exp.config)
    config["init_rand_seed"] = seed
    config["opt"]["epochs"] = epochs
    return finalize(config)  # not strictly needed (model copies neither key), kept for safety


# -- one run: train, score, cache ----------------------------------------------------------------


def run_dir(out: Path, scale: str, epochs: int, seed: int, name: str) -> Path:
    return out / "runs" / f"{scale}-e{epochs}" / f"seed{seed}" / name


def run_one(exp: PipelineExperiment, scale: str, epochs: int, seed: int, out: Path) -> dict[str, Any]:
    """Train and score one (experiment, seed); cached as result.json (+ predictions.json) in its folder."""
    folder = run_dir(out, scale, epochs, seed, exp.name)
    done = folder / "result.json"
    if done.is_file():
        return json.loads(done.read_text(encoding="utf-8"))
    config = seeded_config(exp, seed, epochs)
    wall, cpu = time.perf_counter(), time.process_time()
    summary = train(config, folder / "train", overwrite=True, progress=False)
    train_wall, train_cpu = time.perf_counter() - wall, time.process_time() - cpu
    wall, cpu = time.perf_counter(), time.process_time()
    trained, weights, kind = load_checkpoint(folder / "train" / "last.ckpt")
    scored = score_experiment(exp, trained, weights, folder / "train" / "last.ckpt")
    infer_wall, infer_cpu = time.perf_counter() - wall, time.process_time() - cpu
    (folder / "predictions.json").write_text(json.dumps(scored.results), encoding="utf-8")
    record = {
        "experiment": exp.name, "scale": scale, "epochs": epochs, "seed": seed, "weights": kind,
        "average_mAP": float(scored.result.average_mAP),
        "mAP": [float(v) for v in scored.result.mAP], "tious": [float(t) for t in scored.result.tious],
        "steps": summary["steps"], "final_loss": summary["history"][-1].get("final_loss"),
        "train_wall_s": train_wall, "train_cpu_s": train_cpu, "infer_wall_s": infer_wall, "infer_cpu_s": infer_cpu,
        "threads": torch.get_num_threads(),
    }
    done.write_text(json.dumps(record, indent=1), encoding="utf-8")
    (folder / "train" / "last.ckpt").unlink(missing_ok=True)  # scored: the weights are not needed again
    print(f"  {exp.name:36s} seed {seed}: avg mAP {100 * record['average_mAP']:6.2f}  "
          f"train {train_wall:6.1f}s  infer {infer_wall:5.1f}s", flush=True)
    return record


def scored_sets(exp: PipelineExperiment, folder: Path) -> tuple[Any, Any]:
    """(GroundTruth, Predictions) of a cached run, for the paired bootstrap."""
    annotations = load_annotations(Path(exp.config["dataset"]["json_file"]))
    results = json.loads((folder / "predictions.json").read_text(encoding="utf-8"))
    num_classes = exp.experiment.dataset.tasks[exp.experiment.task].num_classes
    preds, _ = parse_predictions(results, annotations, folder / "predictions.json", num_classes=num_classes)
    return ground_truth(annotations, exp.config["val_split"][0]), preds


# -- rankings ------------------------------------------------------------------------------------


def ranking(maps: dict[str, float]) -> list[str]:
    """Names, best average mAP first."""
    return sorted(maps, key=lambda name: -maps[name])


def kendall_tau(a: list[str], b: list[str]) -> float:
    """Kendall's tau-a of two rankings of the same items (no ties): (concordant - discordant) / pairs."""
    pos_a, pos_b = {x: i for i, x in enumerate(a)}, {x: i for i, x in enumerate(b)}
    signs = [np.sign(pos_a[x] - pos_a[y]) * np.sign(pos_b[x] - pos_b[y]) for x, y in itertools.combinations(a, 2)]
    return float(np.mean(signs))


def short(name: str) -> str:
    return name.removeprefix(f"{DATASET}-")


def t_quantile_975(df: int) -> float:
    """Two-sided 95% critical value of Student's t (table; scipy is not required)."""
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
    return table.get(df, 1.96)


# -- the report ----------------------------------------------------------------------------------


def print_table(records: dict[str, dict[int, dict]], seeds: list[int]) -> dict[str, float]:
    print("\naverage mAP (%) per training seed")
    print(f"{'experiment':26s}" + "".join(f"{'s' + str(s):>8s}" for s in seeds) + f"{'mean':>9s}{'std':>7s}")
    means = {}
    for name, per_seed in records.items():
        values = np.array([per_seed[s]["average_mAP"] for s in seeds]) * 100
        means[name] = float(values.mean()) / 100
        std = f"{values.std(ddof=1):7.2f}" if len(values) > 1 else f"{'-':>7s}"
        print(f"{short(name):26s}" + "".join(f"{v:8.2f}" for v in values) + f"{values.mean():9.2f}{std}")
    return means


def print_rankings(records: dict[str, dict[int, dict]], seeds: list[int], means: dict[str, float]) -> None:
    mean_rank = ranking(means)
    ranks = {s: ranking({n: records[n][s]["average_mAP"] for n in records}) for s in seeds}
    print("\nranking, best first")
    print(f"{'seed mean':>10s}: " + " > ".join(short(n) for n in mean_rank))
    for s in seeds:
        same = " (= mean)" if ranks[s] == mean_rank else ""
        print(f"{'seed ' + str(s):>10s}: " + " > ".join(short(n) for n in ranks[s]) + same)
    print("\nKendall's tau between seeds' rankings")
    print(f"{'':>8s}" + "".join(f"{'s' + str(s):>7s}" for s in seeds) + f"{'mean':>7s}")
    for a in seeds:
        print(f"{'s' + str(a):>8s}" + "".join(f"{kendall_tau(ranks[a], ranks[b]):7.2f}" for b in seeds)
              + f"{kendall_tau(ranks[a], mean_rank):7.2f}")
    pairs = [kendall_tau(ranks[a], ranks[b]) for a, b in itertools.combinations(seeds, 2)]
    identical = sum(ranks[s] == mean_rank for s in seeds)
    if pairs:
        print(f"pairwise tau: mean {np.mean(pairs):.2f}, min {min(pairs):.2f}; "
              f"{identical}/{len(seeds)} seeds give exactly the seed-mean ranking")
    winners = {short(ranks[s][0]) for s in seeds}
    print(f"best experiment per seed: {', '.join(sorted(winners))}")


def print_adjacent(exps: dict[str, PipelineExperiment], records: dict[str, dict[int, dict]], seeds: list[int],
                   means: dict[str, float], out: Path, scale: str, epochs: int, resamples: int) -> None:
    """Adjacent pairs of the seed-mean ranking: paired bootstrap per seed and of the seed means, and seed spread."""
    mean_rank = ranking(means)
    n = len(seeds)
    print(f"\nadjacent pairs of the seed-mean ranking (A - B, points of average mAP; bootstrap {resamples} resamples of test videos)")
    print(f"{'A vs B':46s}{'mean':>7s}{'sd(d)':>7s}{'t':>7s}  {'per seed: A-B [95% interval] verdict':s}")
    for a, b in zip(mean_rank, mean_rank[1:]):
        diffs, verdicts, replicates, lines = [], [], [], []
        for s in seeds:
            gt_a, pr_a = scored_sets(exps[a], run_dir(out, scale, epochs, s, a))
            gt_b, pr_b = scored_sets(exps[b], run_dir(out, scale, epochs, s, b))
            comp = st.paired_bootstrap(gt_a, pr_a, gt_b, pr_b, exps[a].experiment.dataset.tiou_thresholds(), resamples=resamples)
            diffs.append(100 * comp.difference)
            verdicts.append(comp.verdict)
            replicates.append(comp.replicate_difference)
            low, high = comp.interval
            lines.append(f"s{s}: {100 * comp.difference:+6.2f} [{100 * low:+6.2f}, {100 * high:+6.2f}] {comp.verdict}")
        d = np.array(diffs)
        sd = float(d.std(ddof=1)) if n > 1 else float("nan")
        t = float(d.mean() / (sd / math.sqrt(n))) if n > 1 and sd > 0 else float("nan")
        print(f"{short(a) + ' vs ' + short(b):46s}{d.mean():7.2f}{sd:7.2f}{t:7.2f}  " + lines[0])
        for line in lines[1:]:
            print(f"{'':67s}  {line}")
        low, high = st.basic_interval(np.mean(replicates, axis=0), d.mean() / 100, 0.95)
        better = sum(v == "better" for v in verdicts)
        seed_sig = n > 1 and abs(t) > t_quantile_975(n - 1)
        print(f"{'':67s}  seed mean, test-video bootstrap: [{100 * low:+6.2f}, {100 * high:+6.2f}] {st.verdict(low, high)}; "
              f"same sign in {sum(np.sign(d) == np.sign(d.mean()))}/{n} seeds; {better}/{n} seeds 'better'; "
              f"seed spread: {'distinguishable' if seed_sig else 'NOT distinguishable'} (|t| vs t_{{0.975,{n - 1}}})")


def print_cost(records: dict[str, dict[int, dict]], seeds: list[int]) -> None:
    rows = [records[n][s] for n in records for s in seeds]
    train_w, infer_w = sum(r["train_wall_s"] for r in rows), sum(r["infer_wall_s"] for r in rows)
    train_c, infer_c = sum(r["train_cpu_s"] for r in rows), sum(r["infer_cpu_s"] for r in rows)
    per_seed = (train_w + infer_w) / max(len(seeds), 1)
    print(f"\ncost ({len(rows)} runs, {rows[0]['threads']} torch thread(s)): train {train_w:.0f}s + inference {infer_w:.0f}s "
          f"= {train_w + infer_w:.0f}s wall ({(train_w + infer_w) / 60:.1f} min; CPU {train_c + infer_c:.0f}s); "
          f"{per_seed:.0f}s per seed of six experiments, {(train_w + infer_w) / len(rows):.0f}s per run")


# -- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=("ci", "small"), required=True)
    parser.add_argument("--epochs", type=int, required=True, help="opt.epochs (warm-up epochs come on top)")
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS), choices=EXPERIMENTS)
    parser.add_argument("--out", type=Path, default=Path("/tmp/ego4d_study"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--resamples", type=int, default=st.RESAMPLES, help="bootstrap resamples of the test videos")
    parser.add_argument("--report-only", action="store_true", help="print from cached runs, train nothing")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    params_path = scratch_params(args.scale, args.out)
    ensure_twin(params_path)
    exps = {name: resolve(name, params_path, args.out) for name in args.experiments}
    records: dict[str, dict[int, dict]] = {name: {} for name in exps}
    print(f"scale {args.scale}, epochs {args.epochs} (+{exps[args.experiments[0]].config['opt']['warmup_epochs']} warm-up), "
          f"seeds {args.seeds}, {torch.get_num_threads()} thread(s)", flush=True)
    for seed in args.seeds:
        for name, exp in exps.items():
            folder = run_dir(args.out, args.scale, args.epochs, seed, name)
            if args.report_only and not (folder / "result.json").is_file():
                continue
            records[name][seed] = run_one(exp, args.scale, args.epochs, seed, args.out)
    seeds = [s for s in args.seeds if all(s in records[n] for n in exps)]
    if not seeds:
        print("no seed has all experiments finished")
        return 1
    means = print_table(records, seeds)
    if len(exps) > 1:
        print_rankings(records, seeds, means)
        print_adjacent(exps, records, seeds, means, args.out, args.scale, args.epochs, args.resamples)
    print_cost(records, seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
