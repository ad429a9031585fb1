"""S3 for the DVC remote and the MLflow artefact store, against real servers on 127.0.0.1 (slow).

moto_server (tests/s3server.py) stands for the team's S3-compatible store: one for DVC's remote,
with a journal so that a killed server restarts holding what it had stored, and one behind
`mlflow server --artifacts-destination s3://... --serve-artifacts`. One small benchmark (one
experiment, one seed, one epoch) runs once in a git repo of the project, tracking through that
MLflow server; its outputs go to the DVC remote through a push that a server crash cuts short and
a second push completes, and come back into a fresh clone where `dvc repro` has nothing to do.

Credentials: the stages get none (artefacts go through the MLflow server); DVC reads them from
.dvc/config.local in the project and from the environment in the clone, never from the repo.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from s3server import MotoServer, free_port

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "thumos14-i3d"
DVC_BUCKET, MLFLOW_BUCKET = "team-data", "team-mlflow"
CUT_AFTER = 8  # objects the store has acknowledged when it is killed during the first push


def run_env(**extra: str) -> dict[str, str]:
    """This machine's environment without any AWS or MLflow setting: a test names every one it uses."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    return env | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
                  "AWS_EC2_METADATA_DISABLED": "true", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                  "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"} | extra


def sh(args: list[str], cwd: Path, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=900, env=env)
    if check:
        assert result.returncode == 0, f"{args}: {result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def no_files(folder: Path) -> dict[str, str]:
    """AWS config and credentials files that do not exist: nothing from this machine's home is read."""
    return {"AWS_CONFIG_FILE": str(folder / "no-config"), "AWS_SHARED_CREDENTIALS_FILE": str(folder / "no-credentials")}


def bucket_objects(server: MotoServer, bucket: str, prefix: str = "") -> dict[str, bytes]:
    s3 = server.client()
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {obj["Key"]: s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read() for page in pages for obj in page.get("Contents", [])}


# -- the servers ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dvc_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    with MotoServer(tmp_path_factory.mktemp("dvc-store"), journal=True) as server:
        server.client().create_bucket(Bucket=DVC_BUCKET)
        yield server


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """`mlflow server` storing artefacts in a moto bucket and serving them: it alone holds S3 credentials."""
    folder = tmp_path_factory.mktemp("mlflow")
    with MotoServer(folder) as store:
        store.client().create_bucket(Bucket=MLFLOW_BUCKET)
        port = free_port()
        env = run_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true",
                      MLFLOW_S3_ENDPOINT_URL=store.endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1", **no_files(folder))
        with open(folder / "server.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
                 "--artifacts-destination", f"s3://{MLFLOW_BUCKET}/artifacts", "--serve-artifacts",
                 "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)  # its workers share its group
        uri = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(uri, proc, folder / "server.log")
            yield SimpleNamespace(uri=uri, store=store)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _wait_healthy(uri: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start:\n{log.read_text()[-2000:]}") from None
            time.sleep(0.25)


# -- one small benchmark, run once ----------------------------------------------------------------


@pytest.fixture(scope="module")
def benchmark(dvc_store: MotoServer, mlflow_server: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repo of the project (this checkout's files) with one experiment, its DVC remote on S3
    (the endpoint in .dvc/config, keys in .dvc/config.local), after `dvc repro` tracking into the
    MLflow server, with its results committed as the project commits them."""
    repo = tmp_path_factory.mktemp("project")
    env = run_env(**no_files(repo))
    listed = sh(["git", "ls-files", "--cached", "--others", "--exclude-standard"], ROOT, env).stdout.split()
    for name in listed:
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["pipeline"] |= {"datasets": ["thumos14"], "seeds": [0]}
    overrides = {"opt": {"epochs": 1, "warmup_epochs": 0}}
    params["experiments"] = {EXPERIMENT: params["experiments"][EXPERIMENT] | {"overrides": overrides}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "init", "-q", "-b", "main"], repo, env)
    sh(["dvc", "remote", "add", "-d", "storage", f"s3://{DVC_BUCKET}/dvc"], repo, env)
    sh(["dvc", "remote", "modify", "storage", "endpointurl", dvc_store.endpoint], repo, env)
    for key, value in (("access_key_id", "testing"), ("secret_access_key", "testing")):
        sh(["dvc", "remote", "modify", "--local", "storage", key, value], repo, env)
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "project"], repo, env)
    sh(["dvc", "repro"], repo, env | {"MLFLOW_TRACKING_URI": mlflow_server.uri})
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "results"], repo, env)
    return repo


def cached_objects(repo: Path) -> set[str]:
    """The project cache's objects, as `files/md5/ab/cdef...` (the remote's layout under its prefix)."""
    folder = repo / ".dvc/cache"
    return {path.relative_to(folder).as_posix() for path in (folder / "files/md5").rglob("*") if path.is_file()}


def remote_objects(server: MotoServer) -> dict[str, bytes]:
    """Every object of the DVC remote's content store, by key under its prefix, with its bytes."""
    return {key.removeprefix("dvc/"): data for key, data in bucket_objects(server, DVC_BUCKET, "dvc/files/").items()}


def misfiled(objects: dict[str, bytes]) -> list[str]:
    """Objects whose bytes do not hash to their key (files/md5/ab/cdef[.dir]): a half-written one would."""
    return [key for key, data in objects.items()
            if "".join(key.split("/")[2:4]).removesuffix(".dir") != hashlib.md5(data).hexdigest()]


def orphan_entries(objects: dict[str, bytes]) -> list[str]:
    """Entries of the directory manifests (.dir) in the remote whose files are not there: a manifest
    stored before its files would make a later pull fail half-way."""
    return [f"{key}: {entry['relpath']}" for key, data in objects.items() if key.endswith(".dir")
            for entry in json.loads(data) if f"files/md5/{entry['md5'][:2]}/{entry['md5'][2:]}" not in objects]


# -- 4. the store crashes during a push -----------------------------------------------------------


@pytest.fixture(scope="module")
def crashed_push(benchmark: Path, dvc_store: MotoServer) -> CrashedPush:
    """The first push, one object at a time (for the store's journal), cut by `kill -9` of the store
    once it has acknowledged CUT_AFTER objects, a directory manifest among them; the store restarted;
    the push run again. botocore retries a refused connection for seconds per object (5 attempts):
    AWS_MAX_ATTEMPTS=1 makes the cut push give up at once instead of minutes later."""
    env = run_env(**no_files(benchmark))
    first = subprocess.Popen(["dvc", "push", "-j", "1"], cwd=benchmark, env=env | {"AWS_MAX_ATTEMPTS": "1"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    # cut once a manifest is stored too (DVC's order of directories varies): its files are then checked
    while (acknowledged := _acknowledged(dvc_store))[0] < CUT_AFTER or not acknowledged[1]:
        assert first.poll() is None, f"the push ended before the crash:\n{first.communicate()}"
        assert time.monotonic() < deadline, "the push stored nothing in 120 s"
        time.sleep(0.01)
    dvc_store.kill()
    out, err = first.communicate(timeout=300)
    dvc_store.restart()
    after_crash = remote_objects(dvc_store)
    second = sh(["dvc", "push"], benchmark, env)
    return CrashedPush(first.returncode, out + err, second, sh(["dvc", "status", "-c"], benchmark, env), after_crash,
                       remote_objects(dvc_store))


@dataclass
class CrashedPush:
    returncode: int  # of the push the crash cut
    output: str
    second: subprocess.CompletedProcess[str]
    status: subprocess.CompletedProcess[str]  # `dvc status -c` after the second push
    after_crash: dict[str, bytes] = field(repr=False)  # the remote once the store was back
    after: dict[str, bytes] = field(repr=False)  # the remote after the second push


def _acknowledged(server: MotoServer) -> tuple[int, int]:
    """Objects, and directory manifests (.dir) among them, the store has answered 200 to so far, from its request log."""
    stored = re.compile(rf'"PUT /{DVC_BUCKET}/dvc/files/(\S+) HTTP/1.1" 200 ')
    keys = [found[1] for line in server.log.read_text().splitlines() if (found := stored.search(line))]
    return len(keys), sum(key.endswith(".dir") for key in keys)


@pytest.mark.slow
def test_a_push_cut_by_a_store_crash_fails_in_clear_words(crashed_push: CrashedPush, dvc_store: MotoServer) -> None:
    assert crashed_push.returncode != 0
    # the request cut may be an upload or a listing of what the remote already has: both name the store
    assert f'Could not connect to the endpoint URL: "{dvc_store.endpoint}/{DVC_BUCKET}' in crashed_push.output
    assert "Traceback" not in crashed_push.output


@pytest.mark.slow
def test_the_crash_left_no_object_half_written(crashed_push: CrashedPush, benchmark: Path) -> None:
    stored = crashed_push.after_crash
    assert CUT_AFTER <= len(stored) < len(cached_objects(benchmark)), "the crash came in the middle of the push"
    assert set(stored) <= cached_objects(benchmark)
    assert any(key.endswith(".dir") for key in stored), "no manifest stored yet: orphan_entries would prove nothing"
    assert misfiled(stored) == [] and orphan_entries(stored) == []


@pytest.mark.slow
def test_the_second_push_sends_the_rest_and_the_remote_is_complete(crashed_push: CrashedPush, benchmark: Path) -> None:
    rest = len(cached_objects(benchmark)) - len(crashed_push.after_crash)
    assert re.search(rf"^{rest} files? pushed", crashed_push.second.stdout, re.M), crashed_push.second.stdout
    assert "Cache and remote 'storage' are in sync." in crashed_push.status.stdout
    assert set(crashed_push.after) == cached_objects(benchmark)
    assert misfiled(crashed_push.after) == [] and orphan_entries(crashed_push.after) == []


# -- 1. a fresh clone pulls and has nothing to reproduce ------------------------------------------


def test_every_output_a_clone_cannot_get_from_git_is_pushed() -> None:
    """`dvc push` sends the cache only: an output with `cache: false` must be versioned by git, or
    a fresh clone can neither pull it nor skip the stage that makes it."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        uncached = sorted({out.def_path for out in repo.index.outs if not out.use_cache})
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *uncached], cwd=ROOT, capture_output=True, text=True)
    assert uncached and ignored.returncode in (0, 1), ignored.stderr
    assert not ignored.stdout, f"cache: false in dvc.yaml and ignored by .gitignore, so neither pushed nor in git:\n{ignored.stdout}"


def file_digests(folder: Path, outs: list[str]) -> dict[str, str]:
    return {path.relative_to(folder).as_posix(): hashlib.md5(path.read_bytes()).hexdigest()
            for out in outs for path in sorted([folder / out, *(folder / out).rglob("*")]) if path.is_file()}


@pytest.mark.slow
def test_a_fresh_clone_pulls_everything_and_reproduces_nothing(
    crashed_push: CrashedPush, benchmark: Path, dvc_store: MotoServer, mlflow_server: SimpleNamespace, tmp_path: Path
) -> None:
    from talbench.pipeline import stage_graph

    clone = tmp_path / "clone"
    env = run_env(**{k: v for k, v in dvc_store.env().items() if k != "AWS_ENDPOINT_URL"})  # keys, region, no files
    sh(["git", "clone", "-q", str(benchmark), str(clone)], tmp_path, env)
    assert not (clone / ".dvc/config.local").exists()  # the keys come from the environment here
    sh(["dvc", "pull"], clone, env)
    stages = stage_graph(yaml.safe_load((clone / "params.yaml").read_text()), clone / "dvc.yaml")
    outs = [out for stage in stages for out in stage.outs]
    want, got = file_digests(benchmark, outs), file_digests(clone, outs)
    missing = sorted({out for out in outs for path in set(want) - set(got) if path == out or path.startswith(f"{out}/")})
    assert not missing, f"outputs neither in git nor in the DVC remote (cache: false and git-ignored): {missing}"
    assert got == want
    assert "Data and pipelines are up to date." in sh(["dvc", "status"], clone, env).stdout

    runs_before = _run_count(mlflow_server.uri)
    repro = sh(["dvc", "repro"], clone, env | {"MLFLOW_TRACKING_URI": mlflow_server.uri})
    assert "Running stage" not in repro.stdout
    skipped = re.findall(r"^Stage '([^']+)' didn't change, skipping$", repro.stdout, re.M)
    assert sorted(skipped) == sorted(stage.name for stage in stages)
    assert _run_count(mlflow_server.uri) == runs_before  # no stage logged anything
    assert sh(["git", "status", "--porcelain"], clone, env).stdout == ""


def _run_count(uri: str) -> int:
    import mlflow

    client = mlflow.MlflowClient(uri)
    ids = [exp.experiment_id for exp in client.search_experiments()]
    return len(client.search_runs(ids, max_results=1000))


# -- 2. MLflow artefacts are objects in the bucket ------------------------------------------------


@pytest.mark.slow
def test_mlflow_artefacts_are_objects_in_the_bucket(
    benchmark: Path, mlflow_server: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The experiment's run, the invocation's parent run (the report) and the registered model: each
    is a folder of objects in the bucket, and downloads back through the server byte for byte."""
    import mlflow

    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)  # the registry too: models:/ URIs resolve there
    record = json.loads((benchmark / "outputs" / EXPERIMENT / "mlflow.json").read_text())
    assert record["tracking_uri"] == mlflow_server.uri
    client = mlflow.MlflowClient(mlflow_server.uri)
    run, parent = client.get_run(record["run_id"]).info, client.get_run(record["parent_run_id"]).info
    bucket = bucket_objects(mlflow_server.store, MLFLOW_BUCKET)
    # the one model logged: artifacts/<experiment>/models/<model id>/artifacts/MLmodel
    (model,) = [key.removesuffix("MLmodel") for key in bucket if key.startswith(f"artifacts/{run.experiment_id}/models/")
                and key.endswith("/artifacts/MLmodel")]
    downloaded = {
        f"artifacts/{run.experiment_id}/{run.run_id}/artifacts/": client.download_artifacts(run.run_id, "", str(tmp_path / "run")),
        f"artifacts/{parent.experiment_id}/{parent.run_id}/artifacts/": client.download_artifacts(parent.run_id, "", str(tmp_path / "parent")),
        model: mlflow.artifacts.download_artifacts(
            f"models:/{record['model']}/{record['model_version']}", dst_path=str(tmp_path / "model")),
    }
    for prefix, folder in downloaded.items():
        in_bucket = {key.removeprefix(prefix): data for key, data in bucket.items() if key.startswith(prefix)}
        got = {path.relative_to(folder).as_posix(): path.read_bytes() for path in Path(folder).rglob("*") if path.is_file()}
        got.pop("registered_model_meta", None)  # the client writes it into a download of models:/NAME/VERSION
        assert in_bucket and in_bucket == got, prefix
    # and they are the files the stages wrote
    for folder, name, local in (("run", "scores.json", f"outputs/{EXPERIMENT}/scores.json"),
                                ("run", "predictions/seed-0.json", f"outputs/{EXPERIMENT}/predictions/seed-0.json"),
                                ("run", "plots/pr_curve.png", f"outputs/{EXPERIMENT}/pr_curve.png"),
                                ("parent", "report/benchmark.html", "reports/benchmark/benchmark.html")):
        assert (tmp_path / folder / name).read_bytes() == (benchmark / local).read_bytes(), name
    assert [p.name for p in (benchmark / "mlruns").iterdir()] == [".gitkeep"]  # nothing was kept on the client's side


# -- 5. a container step with its data from the remote instead of a mount -------------------------


@pytest.mark.slow
def test_a_dvc_stage_step_pulls_its_inputs_and_pushes_its_outputs(
    crashed_push: CrashedPush, benchmark: Path, dvc_store: MotoServer, mlflow_server: SimpleNamespace, tmp_path: Path
) -> None:
    """The image's `dvc-stage NAME` (infra/docker/entrypoint.py, run here as the image runs it) in a
    checkout with no data: the outputs of the stages it reads come from the remote, the stage alone
    runs, and what it made goes back to the remote."""
    checkout = tmp_path / "checkout"
    env = run_env(**{k: v for k, v in dvc_store.env().items() if k != "AWS_ENDPOINT_URL"})
    sh(["git", "clone", "-q", str(benchmark), str(checkout)], tmp_path, env)
    step = [sys.executable, str(ROOT / "infra/docker/entrypoint.py"), "dvc-stage"]
    name = f"evaluate@{EXPERIMENT}"

    done = sh([*step, name], checkout, env | {"MLFLOW_TRACKING_URI": mlflow_server.uri})
    assert re.findall(r"^\$ (dvc \w+)", done.stdout, re.M) == ["dvc pull", "dvc repro", "dvc push"]
    assert re.findall(r"^Running stage '([^']+)'", done.stdout, re.M) == [name]  # its inputs were pulled, not made
    assert "in sync" in sh(["dvc", "status", "-c", name], checkout, env).stdout
    scores = f"outputs/{EXPERIMENT}/scores.json"
    assert (checkout / scores).read_bytes() == (benchmark / scores).read_bytes()  # same checkpoint, same scores
    changed = sh(["git", "status", "--porcelain"], checkout, env).stdout.split("\n")
    assert [line[3:] for line in changed if line] == ["dvc.lock"]  # the step's record; nothing else moved

    bad = sh([*step, "evaluate@nowhere"], checkout, env, check=False)
    assert bad.returncode == 2 and bad.stderr.count("error:") == 1 and "evaluate@nowhere" in bad.stderr
