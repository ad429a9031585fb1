"""The benchmark report: its tables and formatting on small hand-made inputs (fast), and the whole
report from real stages on ci-scale twins, rendered in headless Chromium and as Markdown, its facts
checked against metrics.json, scores.json and MLflow (slow)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from talbench.report import document, figures, tables
from talbench.report.document import Figure, Heading, Table, Text
from talbench.report.inputs import Result, Split
from talbench.report.metadata import local_store, relative, ui_base

ROOT = Path(__file__).resolve().parents[1]


def result(name: str = "thumos14-i3d", average: float = 0.5, std: float | None = 0.01, published: dict | None = None) -> Result:
    keys = ["0.30", "0.40", "0.50", "0.60", "0.70"]
    scores = {
        "tious": [0.3, 0.4, 0.5, 0.6, 0.7], "top_k": [1, 5],
        "mAP": {f"mAP@{k}": average + 0.1 - 0.05 * i for i, k in enumerate(keys)}, "average_mAP": average,
        "recall": {f"R@{n}x@{k}": 0.1 * n + 0.01 * i for n in (1, 5) for i, k in enumerate(keys)},
        "AP_per_class": {"Diving": {f"AP@{k}": 0.2 for k in keys}, "Shotput": {f"AP@{k}": 0.4 + 0.1 * i for i, k in enumerate(keys)}},
        "counts": {"gt_videos": 12, "gt_instances": 57},
        "interval": {"average_mAP": [average - 0.02, average + 0.03]},
        "seeds": [0, 1] if std is not None else [0],
        "std": {"average_mAP": std} if std is not None else None,
        "timing": {"train_s": 20.04, "infer_s": None},
    }
    split = Split("test", 12, 57, {"Shotput": 40, "Diving": 17}, ["GolfSwing"], 1)
    return Result(name, "thumos14", "THUMOS14", scores, published, ([0.0, 1.0], {}), [], None, [], split,
                  ("a.json", "test"), 4, "md5", Path("outputs") / name)


# ---------------------------------------------------------------- fast: numbers and tables


def test_numbers_have_two_decimals_ours_and_published_alike():
    assert tables.percent(0.778) == "77.80" and tables.points(77.8) == "77.80" and tables.points(66) == "66.00"
    assert tables.percent(None) == tables.points(None) == "—"
    assert tables.mean_std(0.41234, 0.0056) == "41.23 ± 0.56" and tables.mean_std(0.41234, None) == "41.23"
    assert tables.signed(-1.234) == "-1.23" and tables.signed(0.5) == "+0.50"


def test_the_map_table_has_the_published_layout_and_sets_published_rows_apart():
    table = tables.map_table([result(published={"0.30": 82.13, "0.40": 77.8, "0.50": 70.95, "avg": 66.83})], "95%")
    assert table.header == ["experiment", "0.30", "0.40", "0.50", "0.60", "0.70", "avg", "± std (seeds)", "avg, 95% interval"]
    assert table.group == ("mAP (%) @ tIoU", 1, 6)  # the thresholds and the average under one header
    assert table.rows == [["thumos14-i3d", "60.00", "55.00", "50.00", "45.00", "40.00", "**50.00**", "1.00 (n=2)", "[48.00, 53.00]"]]
    # published: apart from ours, same decimals, missing thresholds as a dash
    assert table.published == [["thumos14-i3d (published, real data)", "82.13", "77.80", "70.95", "—", "—", "66.83", "", ""]]
    single = tables.map_table([result(std=None)], "95%")
    assert single.rows[0][7] == "single seed" and single.published == []


def test_recall_is_shown_at_every_threshold_for_each_top_k():
    table = tables.recall_table([result()])
    assert table.header == ["experiment", "top", "0.30", "0.40", "0.50", "0.60", "0.70"]
    assert [row[:3] for row in table.rows] == [["thumos14-i3d", "1x", "10.00"], ["thumos14-i3d", "5x", "50.00"]]
    assert table.rows[0][4] == "12.00"  # Recall@1x at tIoU 0.5


def test_the_summary_compares_with_the_published_average_and_counts_the_test_set():
    table = tables.summary_table([result(average=0.6012, published={"avg": 66.83}), result("other", std=None)])
    first, second = table.rows
    assert first[2] == "**60.12 ± 1.00**" and first[3] == "66.83" and first[4] == "-6.71"
    assert first[5] == "12.00" and first[6:9] == ["2", "12", "57"] and first[9:] == ["20.0", "—"]
    assert second[2] == "**50.00**" and second[3] == second[4] == "—" and second[6] == "1"
    assert first[0] == "[thumos14-i3d](#thumos14)"  # to the dataset's section


def test_per_class_ap_lists_instances_and_names_the_classes_without_any():
    table = tables.class_table([result()])
    assert table.rows == [["Shotput", "40", "60.00"], ["Diving", "17", "20.00"]]  # AP averaged over tIoU
    sentence = tables.unscored_classes(result().split, 4)
    assert sentence.startswith("2 of 4 classes have test instances") and "GolfSwing" in sentence
    assert "1 more class is named by no annotation" in sentence


def test_scores_of_an_older_evaluate_stage_are_refused_in_one_line(tmp_path):
    from talbench.errors import InputError
    from talbench.report.inputs import read_scores

    scores = {k: v for k, v in result().scores.items() if k != "timing"}
    (tmp_path / "scores.json").write_text(json.dumps({k: v for k, v in scores.items() if k != "interval"}))
    with pytest.raises(InputError) as old:
        read_scores(tmp_path / "scores.json", "thumos14-i3d", [0, 1])
    assert str(old.value) == (f"{tmp_path / 'scores.json'}: thumos14-i3d: field 'interval': written by an older evaluate stage, "
                              f"run it again (dvc repro)")
    (tmp_path / "scores.json").write_text(json.dumps(scores))
    with pytest.raises(InputError, match="timing.json: thumos14-i3d: field '-': missing"):
        read_scores(tmp_path / "scores.json", "thumos14-i3d", [0, 1])
    (tmp_path / "timing.json").write_text(json.dumps(result().scores["timing"]))
    assert read_scores(tmp_path / "scores.json", "thumos14-i3d", [0, 1])["timing"] == result().scores["timing"]
    with pytest.raises(InputError, match="field 'seeds': scored for seeds \\[0, 1\\], params.yaml's pipeline.seeds are \\[0\\]"):
        read_scores(tmp_path / "scores.json", "thumos14-i3d", [0])


def test_an_mlflow_record_without_its_experiment_is_refused_in_one_line(tmp_path):
    from talbench.errors import InputError
    from talbench.report.inputs import read_tracking

    assert read_tracking(tmp_path / "mlflow.json", "thumos14-i3d") is None  # not tracked
    record = {"tracking_uri": "sqlite:///mlruns/mlflow.db", "run_id": "r1", "parent_run_id": "p1"}
    (tmp_path / "mlflow.json").write_text(json.dumps(record))
    with pytest.raises(InputError, match="mlflow.json: thumos14-i3d: field 'experiment_id': written by an older evaluate stage"):
        read_tracking(tmp_path / "mlflow.json", "thumos14-i3d")
    (tmp_path / "mlflow.json").write_text(json.dumps(record | {"experiment_id": "1"}))
    assert read_tracking(tmp_path / "mlflow.json", "thumos14-i3d")["experiment_id"] == "1"


# ---------------------------------------------------------------- fast: the document


def _png(path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (4, 3), (200, 30, 30)).save(path)


def test_markdown_keeps_blocks_apart_and_the_contents_point_at_the_headings(tmp_path):
    from markdown_it import MarkdownIt

    body = [Heading(2, "Results per dataset"), Heading(3, "ActivityNet 1.3 (TSP)"), Text("- one [a](x)\n- two [b](y)"),
            Text("after"), Table(["name", "value"], [["a", "1.00"]], caption="numbers", published=[["a (published)", "2.00"]])]
    markdown = document.to_markdown([document.contents(body), *body])
    tokens = MarkdownIt("commonmark").enable("table").parse(markdown)
    anchors = {document.slug(b.text) for b in body if isinstance(b, Heading)}
    links = [t.attrGet("href") for tok in tokens if tok.children for t in tok.children if t.type == "link_open"]
    assert {link[1:] for link in links if link.startswith("#")} == anchors == {"results-per-dataset", "activitynet-13-tsp"}
    assert sum(t.type == "list_item_open" for t in tokens) == 4  # two contents entries, two link lines
    assert sum(t.type == "table_open" for t in tokens) == 1 and "| *a (published)* | *2.00* |" in markdown
    assert "\n\nafter\n\n" in markdown  # a paragraph of its own, never run into the list


def test_html_inlines_images_and_groups_the_threshold_header(tmp_path):
    _png(tmp_path / "plot.png")
    table = Table(["experiment", "0.30", "0.50", "avg", "± std"], [["ours", "1.00", "2.00", "**1.50**", "0.10"]],
                  group=("mAP (%) @ tIoU", 1, 3), published=[["published", "3.00", "4.00", "3.50", ""]])
    page = document.to_html([Heading(2, "Figures"), Figure("plot.png", "a plot"), table], tmp_path, "t")
    assert "src='data:image/png;base64," in page and "plot.png" not in page.replace("alt='a plot'", "")
    assert "<th colspan='3' class='group'>mAP (%) @ tIoU</th>" in page and "<th rowspan='2' class='num'>± std</th>" in page
    assert "<tbody class='published'><tr><td>published</td>" in page and "<strong>1.50</strong>" in page
    assert "<h2 id='figures'>" in page


# ---------------------------------------------------------------- fast: figures' logic and links


def test_lanes_keep_overlapping_bars_apart():
    assert figures.lanes([(0, 10), (5, 15), (10, 20), (12, 13)]) == [0, 1, 0, 2]


def test_a_detection_matches_one_instance_of_its_class_at_tiou_half():
    truth = [("Diving", 0.0, 10.0), ("Shotput", 20.0, 30.0)]
    detections = [{"label": "Diving", "segment": [1.0, 10.0]}, {"label": "Diving", "segment": [0.0, 9.0]},
                  {"label": "Diving", "segment": [20.0, 30.0]}, {"label": "Shotput", "segment": [24.0, 40.0]}]
    # the second Diving finds its instance taken; the third is the wrong class; the last overlaps 6/20
    assert figures.matches(detections, truth) == [True, False, False, False]


def test_mlflow_links_only_where_a_ui_address_is_known(tmp_path, monkeypatch):
    assert ui_base("http://mlflow.lab:5000/", "sqlite:///x.db") == "http://mlflow.lab:5000"
    assert ui_base(None, "http://127.0.0.1:5001") == "http://127.0.0.1:5001"
    assert ui_base(None, "sqlite:////somewhere/mlruns/mlflow.db") is None
    monkeypatch.chdir(tmp_path)
    assert local_store(f"sqlite:///{tmp_path}/mlruns/mlflow.db") == "sqlite:///mlruns/mlflow.db"
    assert relative("reports/validation/thumos14/data_docs/index.html", Path("reports/benchmark")) == \
        "../validation/thumos14/data_docs/index.html"


# ---------------------------------------------------------------- slow: the real report

EXPERIMENTS = ("thumos14-i3d", "ego4d_mq-slowfast", "ego4d_mq-egovlp")
TINY = {"model": {"embd_dim": 32, "fpn_dim": 32, "head_dim": 32}, "opt": {"epochs": 2, "warmup_epochs": 1}}
SEEDS = [0, 1]
PAGE = (1280, 2000)  # the screenshot's window


def _stage(project: Path, *args: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {
        "TALBENCH_RUN_GROUP": "report-test", "OMP_NUM_THREADS": "1", "GX_ANALYTICS_ENABLED": "false"}
    done = subprocess.run([sys.executable, str(ROOT / "components" / f"{args[0]}.py"), *args[1:]], cwd=project,
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, (args, done.stderr[-3000:])


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """Two datasets, three tiny experiments (two on the same test videos), two seeds, every stage run for real."""
    root = tmp_path_factory.mktemp("report")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["pipeline"] |= {"datasets": ["thumos14", "ego4d_mq"], "seeds": SEEDS}
    params["experiments"] = {name: params["experiments"][name] | {"config": str(ROOT / params["experiments"][name]["config"]),
                                                                  "overrides": TINY} for name in EXPERIMENTS}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with ThreadPoolExecutor(2) as pool:  # two at a time on the two cores, as the Airflow DAG runs them
        list(pool.map(lambda d: _stage(root, "fetch", d), ["thumos14", "ego4d_mq"]))
        list(pool.map(lambda d: _stage(root, "validate", d), ["thumos14", "ego4d_mq"]))
        list(pool.map(lambda name: _stage(root, "train", name), EXPERIMENTS))
    for name in EXPERIMENTS:  # each registers a model version: one at a time
        _stage(root, "evaluate", name)
    _stage(root, "report")
    return root


def _rows(markdown: str, caption: str) -> list[list[str]]:
    """The body rows of the Markdown table under `caption`, as cells."""
    lines = markdown.split(f"*{caption}", 1)[1].split("\n\n", 2)[1].splitlines()
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


@pytest.mark.slow
def test_the_report_shows_what_metrics_json_scores_json_and_mlflow_hold(project):
    from mlflow.tracking import MlflowClient

    markdown = (project / "reports/benchmark/benchmark.md").read_text()
    summary = {re.sub(r"\[(.+)\]\(.*\)", r"\1", row[0]): row for row in _rows(markdown, "Average mAP over")}
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns/mlflow.db'}")
    for name in EXPERIMENTS:
        metrics = json.loads((project / "outputs" / name / "metrics.json").read_text())
        scores = json.loads((project / "outputs" / name / "scores.json").read_text())
        row = summary[name]
        assert row[2] == f"**{100 * metrics['average_mAP']:.2f} ± {100 * metrics['average_mAP_std']:.2f}**"
        assert row[6:9] == [str(metrics["seeds"]), str(scores["counts"]["gt_videos"]), str(scores["counts"]["gt_instances"])]
        run_id = json.loads((project / "outputs" / name / "mlflow.json").read_text())["run_id"]
        run = client.get_run(run_id)
        assert run.data.tags["experiment"] == name and f"MLflow run `{run_id}`" in markdown
        assert run.data.metrics["average_mAP"] == pytest.approx(metrics["average_mAP"], abs=1e-12)
        assert f"{run.data.metrics['average_mAP'] * 100:.2f}" in row[2]
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert f"the parent run `{parent.info.run_id}`" in markdown  # and the report is attached to it
    assert parent.data.metrics["average_mAP/thumos14-i3d"] == pytest.approx(float(summary["thumos14-i3d"][2][2:].split()[0]) / 100, abs=5e-5)
    assert "report/benchmark.html" in {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db" in markdown


@pytest.mark.slow
def test_the_markdown_renders_with_headings_tables_and_separate_link_lines(project):
    from markdown_it import MarkdownIt

    folder = project / "reports/benchmark"
    markdown = (folder / "benchmark.md").read_text()
    tokens = MarkdownIt("commonmark").enable("table").parse(markdown)
    headings = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open" and t.tag == "h2"]
    assert headings == ["Contents", "Run", "Summary", "Results per dataset", "Figures", "AP per class", "Data validation"]
    assert sum(t.type == "table_open" for t in tokens) >= 8  # summary; per dataset mAP, recall; comparison; classes; validation
    inline = [t for t in tokens if t.type == "inline"]
    for t in inline:  # each run and Data Docs link is a list item of its own
        assert t.content.count("MLflow run") <= 1 and t.content.count("Data Docs") <= 1, t.content
    for t in inline:
        for child in t.children or []:
            href = child.attrGet("href") if child.type == "link_open" else None
            if href and href.startswith("#"):
                assert f"id='{href[1:]}'" in (folder / "benchmark.html").read_text(), href
            elif href:  # relative links to artefacts and Data Docs resolve
                assert (folder / href).exists(), href
            if child.type == "image":
                assert (folder / child.attrGet("src")).is_file()
    assert "ego4d_mq-egovlp | ego4d_mq-slowfast |" in markdown or "ego4d_mq-slowfast | ego4d_mq-egovlp |" in markdown  # compared
    for name, classes in (("thumos14-i3d", 20), ("ego4d_mq-slowfast", 110)):  # the scored classes, and which are not
        scored = json.loads((project / "outputs" / name / "scores.json").read_text())["AP_per_class"]
        assert f"{len(scored)} of {classes} classes have test instances; these have none" in markdown


@pytest.mark.slow
def test_the_html_page_stands_alone_and_renders_in_chromium(project, tmp_path):
    import numpy as np
    from PIL import Image

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("headless Chromium is needed: apt-get install -y chromium")
    page = project / "reports/benchmark/benchmark.html"
    html = page.read_text()
    assert not re.search(r"(src|href)=['\"]https?://", html)  # nothing fetched at view time
    assert html.count("src='data:image/png;base64,") == 3 + len(EXPERIMENTS)  # three figures and a timeline each
    shot = tmp_path / "report.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                    "--hide-scrollbars", f"--window-size={PAGE[0]},{PAGE[1]}", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape == (PAGE[1], PAGE[0], 3)
    ink = (image < 200).any(axis=2)  # text, rules and plot lines
    assert 0.01 < ink.mean() < 0.5, ink.mean()
    columns = np.flatnonzero(ink.any(axis=0))
    assert columns[0] > 40 and columns[-1] < PAGE[0] - 40  # centred text column, not a blank or overflowing page
    assert len(np.unique(image.reshape(-1, 3)[::97], axis=0)) > 50  # figures and tables, not plain text


def test_the_mlflow_ui_address_comes_from_params_then_the_environment_then_the_server():
    from talbench.errors import InputError
    from talbench.report.metadata import ui_base

    env = {"TALBENCH_MLFLOW_UI_URL": "http://127.0.0.1:5001/"}
    assert ui_base("http://ui.example:1/", "http://mlflow:5000", env) == "http://ui.example:1"
    assert ui_base(None, "http://mlflow:5000", env) == "http://127.0.0.1:5001"  # the compose stack's steps
    assert ui_base(None, "http://mlflow:5000", {}) == "http://mlflow:5000"
    assert ui_base(None, "sqlite:///mlruns/mlflow.db", {}) is None
    with pytest.raises(InputError, match="TALBENCH_MLFLOW_UI_URL.*mlflow_url.*http://"):
        ui_base(None, "http://mlflow:5000", {"TALBENCH_MLFLOW_UI_URL": "127.0.0.1:5001"})
