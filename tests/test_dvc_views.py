"""DVC's views of the benchmark as a user reads them: the top-level plots and the README's pipeline
graph agree with dvc.yaml and params.yaml; the page `dvc plots show` draws into has Vega inlined;
and, on a one-experiment benchmark committed as the project commits it, `dvc metrics diff`,
`dvc exp show` and `dvc plots diff` compare the commit with an experiment, offline (slow)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from talbench.pipeline import stage_graph

ROOT = Path(__file__).resolve().parents[1]
DATASET, EXPERIMENT = "thumos14", "thumos14-i3d"
# each dataset's top-level plots: id suffix -> (the experiment's file, x, y)
PLOTS = {"map_vs_tiou": ("map_vs_tiou.csv", "tiou", "mAP"), "precision_recall": ("pr_curve.csv", "recall", "precision@0.50"),
         "train_loss": ("train_curve.csv", "epoch", "final_loss")}


def sh(args, cwd, check=True):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "COLUMNS": "200", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=900, env=env)
    if check:
        assert result.returncode == 0, f"{args}: {result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def _shipped_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))


# -- what dvc.yaml and the README say, against params.yaml --------------------------------------


def test_top_level_plots_overlay_the_experiments_of_each_dataset():
    params = _shipped_params()
    plots = [next(iter(entry.items())) for entry in yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["plots"]]
    expected = [(f"{dataset}/{kind}", x, {f"outputs/{name}/{file}": y for name, e in params["experiments"].items()
                                          if e["dataset"] == dataset})
                for dataset in params["pipeline"]["datasets"] for kind, (file, x, y) in PLOTS.items()]
    assert [(plot_id, props["x"], props["y"]) for plot_id, props in plots] == expected, (
        "dvc.yaml's top-level plots: one block per dataset of pipeline.datasets, naming each of its experiments")
    outs = {out for stage in stage_graph(params, ROOT / "dvc.yaml") for out in stage.outs}
    assert {path for _, props in plots for path in props["y"]} <= outs  # files the stages write
    assert all((ROOT / ".dvc/plots" / f"{props['template']}.json").is_file() for _, props in plots)


def _graph(mermaid: str) -> tuple[set[str], set[tuple[str, str]]]:
    """The kinds of stage (`train@x` -> `train`) of a Mermaid flowchart and the edges between them."""
    kinds = {node: label.split("@")[0] for node, label in re.findall(r'(\w+)\["([^"]+)"\]', mermaid)}
    return set(kinds.values()), {(kinds[a], kinds[b]) for a, b in re.findall(r"(\w+)\s*-->\s*(\w+)", mermaid)}


def test_readme_pipeline_graph_is_dvc_dag(tmp_path):
    """The README's graph is `dvc dag --mermaid` of the shipped dvc.yaml, a node per kind of stage."""
    from dvc.repo import Repo

    sh(["git", "init", "-q"], tmp_path)
    Repo.init(str(tmp_path)).close()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(ROOT / name, tmp_path / name)
    dag = sh(["dvc", "dag", "--mermaid"], tmp_path).stdout
    blocks = re.findall(r"```mermaid\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)
    readme = [block for block in blocks if "fetch@" in block]
    assert len(readme) == 1, "README.md: expected one ```mermaid block of the pipeline (`dvc dag --mermaid`)"
    assert _graph(readme[0]) == _graph(dag)
    assert len(_graph(dag)[0]) == 5


# -- the page of `dvc plots show` -----------------------------------------------------------------


def test_plots_page_inlines_vega_and_loads_nothing():
    from talbench.data.validation import web_assets
    from talbench.dvc_page import page

    text = page(web_assets())
    assert "{plot_divs}" in text and "{scripts}" not in text  # where DVC would put its CDN <script> tags
    assert text.count("<script>") == 3 and not re.search(r"<script[^>]*\bsrc=", text)


def test_plots_page_without_the_web_assets_is_one_line_and_nothing_written(tmp_path, monkeypatch, capsys):
    from talbench.dvc_page import main

    monkeypatch.setenv("TALBENCH_WEB_ASSETS", str(tmp_path / "node_modules"))
    assert main([str(tmp_path / "page.html")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "vega/build/vega.min.js: field 'file': missing" in error
    assert not (tmp_path / "page.html").exists()


# -- a committed benchmark and an experiment, compared (slow) -------------------------------------


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> tuple[Path, str]:
    """The project with one experiment, one seed and two epochs in a git repo: `dvc repro`, its
    results committed as the project commits them (.gitignore), then `dvc exp run -S` with another
    warm-up. Returns the repo and the experiment's name."""
    repo = tmp_path_factory.mktemp("views")
    for name in sh(["git", "ls-files", "--cached", "--others", "--exclude-standard"], ROOT).stdout.split():
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["pipeline"] |= {"datasets": [DATASET], "seeds": [0]}
    params["experiments"] = {EXPERIMENT: params["experiments"][EXPERIMENT] | {"overrides": {"opt": {"epochs": 2, "warmup_epochs": 1}}}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "init", "-q", "-b", "main"], repo)
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "project"], repo)
    sh(["dvc", "repro"], repo)
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "results"], repo)
    run = sh(["dvc", "exp", "run", "-S", f"experiments.{EXPERIMENT}.overrides.opt.warmup_epochs=0"], repo)
    return repo, re.search(r"Ran experiment\(s\): (\S+)", run.stdout).group(1)


@pytest.mark.slow
def test_git_versions_the_small_results_only(compared):
    repo, _ = compared
    tracked = set(sh(["git", "ls-files", f"outputs/{EXPERIMENT}", "dvc.lock"], repo).stdout.split())
    assert tracked == {"dvc.lock", *(f"outputs/{EXPERIMENT}/{f}" for f in ("metrics.json", "map_vs_tiou.csv", "pr_curve.csv", "train_curve.csv"))}
    assert not sh(["git", "status", "--porcelain", "--", ".gitignore"], repo).stdout  # DVC added no ignore rule


@pytest.mark.slow
def test_metrics_diff_compares_the_commit_and_the_experiment(compared):
    repo, name = compared
    diff = json.loads(sh(["dvc", "metrics", "diff", "HEAD", name, "--all", "--json"], repo).stdout)
    committed = json.loads(sh(["git", "show", f"HEAD:outputs/{EXPERIMENT}/metrics.json"], repo).stdout)
    ran = json.loads((repo / "outputs" / EXPERIMENT / "metrics.json").read_text())  # exp run leaves its results
    average = diff[f"outputs/{EXPERIMENT}/metrics.json"]["average_mAP"]
    assert (average["old"], average["new"]) == (committed["average_mAP"], ran["average_mAP"])
    assert committed != ran


@pytest.mark.slow
def test_exp_show_lists_the_commit_and_the_experiment(compared):
    repo, name = compared
    rows = {row["Experiment"] or row["rev"]: row for row in csv.DictReader(io.StringIO(sh(["dvc", "exp", "show", "--csv"], repo).stdout))}
    column = f"experiments.{EXPERIMENT}.overrides.opt.warmup_epochs"
    assert (rows["main"][column], rows[name][column]) == ("1", "0")
    for rev in ("main", name):
        assert 0.0 <= float(rows[rev]["average_mAP"]) <= 1.0 and rows[rev]["seeds"] == "1"
    # the README's readable form: the columns that differ, no column collapsed
    table = sh(["dvc", "exp", "show", "--only-changed", "--drop", "outputs.*", "--no-pager"], repo).stdout
    assert "average_mAP" in table and name in table and "…" not in table


@pytest.mark.slow
def test_metrics_show_of_the_default_benchmark_fits_200_columns(compared, tmp_path):
    """The shipped dvc.yaml and params.yaml, each experiment's metrics.json as evaluate writes it (with two seeds' spread)."""
    from dvc.repo import Repo

    written = json.loads((compared[0] / "outputs" / EXPERIMENT / "metrics.json").read_text()) | {"average_mAP_std": 0.01234}
    sh(["git", "init", "-q"], tmp_path)
    Repo.init(str(tmp_path)).close()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(ROOT / name, tmp_path / name)
    for name in _shipped_params()["experiments"]:
        (tmp_path / "outputs" / name).mkdir(parents=True)
        (tmp_path / "outputs" / name / "metrics.json").write_text(json.dumps(written))
    lines = sh(["dvc", "metrics", "show"], tmp_path).stdout.splitlines()
    assert set(lines[0].split()) == {"Path", *written}
    assert len(lines) == 1 + len(_shipped_params()["experiments"]) and max(map(len, lines)) <= 200, "\n".join(lines)


def _chromium_dom(page: Path) -> str:
    """The page as headless Chromium draws it, with no host resolvable (no network)."""
    if not shutil.which("chromium"):  # CI installs it and sets TALBENCH_REQUIRE_BROWSER
        (pytest.fail if os.environ.get("TALBENCH_REQUIRE_BROWSER") else pytest.skip)("chromium is not installed")
    return subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout


@pytest.mark.slow
def test_plots_diff_draws_commit_and_experiment_offline(compared, tmp_path):
    """With the page template configured as `make` configures it, `dvc plots diff` writes a page
    that loads nothing and draws, per plot of the dataset, one line for each revision."""
    repo, name = compared
    sh([sys.executable, "-m", "talbench.dvc_page", str(tmp_path / "page.html")], tmp_path)  # the installed talbench, as make runs it
    sh(["dvc", "config", "--local", "plots.html_template", str(tmp_path / "page.html")], repo)
    sh(["dvc", "plots", "diff", "HEAD", name, "-o", str(tmp_path / "plots")], repo)
    html = (tmp_path / "plots" / "index.html").read_text()
    assert not re.search(r"<script[^>]*\bsrc=", html) and "cdn." not in html
    dom = _chromium_dom(tmp_path / "plots" / "index.html")
    for kind in PLOTS:
        chart = dom.split(f'<div id="{DATASET}_{kind}"', 1)[1].split('<div id="', 1)[0]
        lines = re.findall(r'<g class="mark-line role-mark marks"[^>]*>\s*<path [^>]*\bd="M', chart)
        assert len(lines) == 2, f"{kind}: expected a line for HEAD and one for {name}"
        assert EXPERIMENT in chart and name in chart  # the legends: experiment and revision
