"""The fetch stage: download (or build) a dataset archive, verify its md5, unpack it safely.

Every download lands in `<archive>.part` and is renamed into place only when complete, so an
archive path always holds a whole file; a failed transfer's `.part` is what the next run resumes.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse
from urllib.request import url2pathname

import requests

from talbench.data.archive import MAX_UNPACK_RATIO, safe_extract
from talbench.data.registry import ArchiveSpec, DatasetSpec, Registry
from talbench.errors import InputError
from talbench.io import file_md5
from talbench.progress import Progress

SOURCES = ("synthetic", "real")
CHUNK_BYTES = 1 << 16  # small: a read cut short loses its whole chunk, the rest is resumed
HTTP_TIMEOUT_S = (10.0, 60.0)  # connect, and between two reads of the body
RETRY_BACKOFF_S = 0.5  # doubled after each failed attempt
DRIVE_HOSTS = ("drive.google.com", "docs.google.com")
EGO4D_LICENCE_URL = "https://ego4d-data.org/docs/start-here/"


class DownloadError(Exception):
    """One mirror could not deliver the file; the message says why, on one line."""


class _Transient(DownloadError):
    """A failure worth retrying: a dropped connection, a timeout, a 5xx answer."""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def download(
    url: str, dest: str | Path, *, expected_md5: str | None = None, progress: bool = True, retries: int = 3
) -> Path:
    """Fetch `url` (http(s), Google Drive link, s3://bucket/key or file://) to `dest`.

    Raises DownloadError when the source cannot deliver it, and InputError (after moving the
    file aside, see `verify_md5`) when `expected_md5` is given and does not match.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    parsed = urlparse(url)
    scheme = parsed.scheme
    if parsed.hostname in DRIVE_HOSTS:
        _download_drive(url, part, progress)
    elif scheme in ("http", "https"):
        _download_http(url, part, progress, retries)
    elif scheme == "s3":
        _download_s3(url, part, progress)
    elif scheme == "file":
        _download_file(url, part)
    else:
        raise DownloadError(f"unsupported URL scheme '{scheme}' (expected http, https, s3 or file)")
    os.replace(part, dest)
    if expected_md5 is not None:
        verify_md5(dest, expected_md5, url)
    return dest


def _download_http(url: str, part: Path, progress: bool, retries: int) -> None:
    for attempt in range(retries + 1):
        try:
            _http_attempt(url, part, progress)
            return
        except _Transient as exc:
            if attempt == retries:
                raise DownloadError(f"{exc} (gave up after {retries + 1} attempts)") from None
            time.sleep(RETRY_BACKOFF_S * 2**attempt)


def _http_attempt(url: str, part: Path, progress: bool) -> None:
    have = part.stat().st_size if part.exists() else 0
    # identity: a server that gzips on the fly would otherwise hand us bytes that are not the archive's
    headers = {"Accept-Encoding": "identity"} | ({"Range": f"bytes={have}-"} if have else {})
    try:
        with requests.get(url, headers=headers, stream=True, timeout=HTTP_TIMEOUT_S) as response:
            if response.status_code == 416:
                # the partial file does not fit what the server holds now: start over
                part.unlink(missing_ok=True)
                raise _Transient("HTTP 416: stale partial download discarded")
            if response.status_code >= 500:
                raise _Transient(f"HTTP {response.status_code} {response.reason}")
            if response.status_code not in (200, 206):
                raise DownloadError(f"HTTP {response.status_code} {response.reason}")
            if response.headers.get("Content-Type", "").startswith("text/html"):
                # a share link's landing page (Box /s/..., Drive's virus-scan notice), not the archive
                raise DownloadError("the server answered with a web page, not the file")
            if response.status_code == 200:
                have = 0  # the server ignored the Range request and sends the whole file
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            with open(part, "ab" if have else "wb") as f, Progress(
                f"download {part.stem}", total, initial=have, unit="B", enabled=progress
            ) as bar:
                for chunk in response.iter_content(CHUNK_BYTES):
                    f.write(chunk)
                    bar.update(len(chunk))
            size = part.stat().st_size
            if total is not None and size != total:
                raise _Transient(f"transfer ended at {size} of {total} bytes")
    except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
        raise _Transient(_one_line(exc)) from None
    except requests.RequestException as exc:
        raise DownloadError(_one_line(exc)) from None


def drive_file_id(url: str) -> str | None:
    """The file id of a Google Drive link (`/file/d/ID/...`, `open?id=ID`, `uc?id=ID`), else None."""
    parsed = urlparse(url)
    if parsed.hostname not in DRIVE_HOSTS:
        return None
    if match := re.search(r"/file/d/([\w-]+)", parsed.path):
        return match.group(1)
    ids = parse_qs(parsed.query).get("id")
    return ids[0] if ids else None


def _download_drive(url: str, part: Path, progress: bool) -> None:
    # Imported here: only Drive mirrors need gdown, and it slows every other start-up.
    import gdown
    import gdown.exceptions

    file_id = drive_file_id(url)
    if file_id is None:
        raise DownloadError("no file id in the Google Drive link")
    try:
        result = gdown.download(id=file_id, output=str(part), quiet=not progress)
    except (gdown.exceptions.DownloadError, requests.RequestException, OSError) as exc:
        raise DownloadError(_one_line(exc)) from None
    if result is None or not part.is_file():
        raise DownloadError("gdown returned no file")


def _download_s3(url: str, part: Path, progress: bool) -> None:
    # boto3 reads AWS_ENDPOINT_URL and the other AWS_* variables itself, so moto or MinIO work too.
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    parsed = urlparse(url)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    if not bucket or not key:
        raise DownloadError("expected s3://bucket/key")
    s3 = boto3.client("s3")
    try:
        size = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
        with Progress(f"download {Path(key).name}", size, unit="B", enabled=progress) as bar:
            s3.download_file(bucket, key, str(part), Callback=bar.update)
    except (BotoCoreError, ClientError) as exc:
        raise DownloadError(_one_line(exc)) from None


def _download_file(url: str, part: Path) -> None:
    source = Path(url2pathname(urlparse(url).path))
    try:
        shutil.copyfile(source, part)
    except OSError as exc:
        part.unlink(missing_ok=True)  # a local copy is not resumed: a partial one is only clutter
        raise DownloadError(_one_line(exc)) from None


def verify_md5(path: Path, expected: str, item: str) -> str:
    """Return the md5 of `path`; on a mismatch move it to `<name>.bad-md5` and raise InputError.

    The bad file is kept, not deleted, so a user can see what the mirror actually served.
    """
    actual = file_md5(path)
    if actual != expected.lower():
        bad = path.with_name(path.name + ".bad-md5")
        os.replace(path, bad)
        raise InputError(path, item, "md5", f"expected {expected}, got {actual}; the file was kept at {bad}")
    return actual


def fetch_archive(
    spec: ArchiveSpec, dest_dir: str | Path, *, dataset: str | None = None, progress: bool = True, retries: int = 3
) -> Path:
    """`<dest_dir>/<spec.name>` with a verified md5, from the first mirror that delivers it.

    An archive already there with the right md5 is kept as it is.
    """
    target = Path(dest_dir) / spec.name
    item = dataset or spec.name
    if target.is_file() and file_md5(target) == spec.md5.lower():
        return target
    if not spec.mirrors:
        raise InputError(target, item, "mirrors", "no mirrors listed for this archive")
    failures = []
    for url in spec.mirrors:
        try:
            download(url, target, progress=progress, retries=retries)
            break
        except DownloadError as exc:
            print(f"mirror failed for {spec.name}: {url}: {exc}", file=sys.stderr)
            failures.append(f"{url} ({exc})")
    else:
        raise InputError(target, item, "mirrors", f"every mirror of {spec.name} failed: {'; '.join(failures)}")
    verify_md5(target, spec.md5, item)
    return target


def ego4d_command(cli: Mapping[str, Any], output_dir: Path) -> str:
    """The official `ego4d` CLI call that downloads what the registry's `ego4d_cli` lists."""
    args = ["ego4d", "--output_directory", str(output_dir)]
    for option in ("datasets", "benchmarks"):
        if values := cli.get(option):
            args += [f"--{option}", *map(str, values)]
    return shlex.join(args)


def dataset_dir(name: str, params: Mapping[str, Any], data_root: str | Path | None = None) -> Path:
    """Where prepare_dataset unpacks `name`: <data root>/<data.source>/<name>; registry paths are relative to it."""
    data = params.get("data") or {}
    return Path(data_root if data_root is not None else data.get("root", "data")) / data.get("source", "synthetic") / name


MANIFEST = "MANIFEST.json"  # in a dataset's folder: which archive its data came from (lineage without dvc.lock)


def prepare_dataset(
    name: str,
    registry: Registry,
    params: Mapping[str, Any],
    data_root: str | Path | None = None,
    *,
    progress: bool = True,
) -> Path:
    """Make dataset `name` ready under `<data_root>/<data.source>/<name>/` and return its unpacked root.

    synthetic: build the twin archive (params `synthetic`: seed, scale) and check it against the
    md5 recorded for seed 0; real: fetch the registry's archive from its mirrors. Either way the
    archive is unpacked with `safe_extract`, so a bad archive leaves earlier data as it was: it
    must hold the registry's root folder and annotation files, and expand to no more than
    `data.max_unpack_ratio` times its size. `MANIFEST.json` beside the unpacked root records the
    archive (name, md5) the data came from: its lineage, read by `data_hash below`.
    """
    spec = registry.dataset(name)
    data = params.get("data") or {}
    source = data.get("source", "synthetic")
    if source not in SOURCES:
        raise InputError(registry.path, "data", "source", f"expected one of {', '.join(SOURCES)}, got {source!r}")
    # load_params has checked it: a number > 0, or null for the default
    max_ratio = data.get("max_unpack_ratio")
    max_ratio = MAX_UNPACK_RATIO if max_ratio is None else max_ratio
    # One folder per dataset: registry entries may share an archive root (anet_1.3 for TSP and I3D).
    source_dir = Path(data_root if data_root is not None else data.get("root", "data")) / source
    archives, out_dir = source_dir / "archives", source_dir / name
    if source == "synthetic":
        archive, md5, verified = _build_twin(name, registry, params, archives)
    else:
        archive, md5, verified = _fetch_real(name, registry, archives, progress)
    # MANIFEST.json names the data's version; it must never describe data it did not come with:
    # removed before unpacking, written (atomically) only once unpacking has succeeded. A kill in
    # between leaves none (lineage 'unknown', and DVC runs fetch again). A refused archive leaves
    # the data as it was, so then the old manifest is put back and the folder is byte-identical.
    from talbench.io import atomic_path, write_json

    manifest = out_dir / MANIFEST

    def entries() -> dict[str, int]:  # the top-level entries and their inodes: a replaced one changes
        names = [p for p in out_dir.iterdir() if p.name != MANIFEST] if out_dir.is_dir() else []
        return {p.name: p.lstat().st_ino for p in names if not p.name.startswith(".")}

    before = entries()
    previous = manifest.read_bytes() if manifest.is_file() else None
    manifest.unlink(missing_ok=True)
    try:
        safe_extract(archive, out_dir, required=required_paths(spec), item=name, max_ratio=max_ratio)
    except BaseException:
        if previous is not None and entries() == before:
            with atomic_path(manifest) as tmp:
                tmp.write_bytes(previous)
        raise
    write_json(manifest, {"dataset": name, "source": source, "archive": archive.name, "archive_md5": md5.lower(),
                          "md5_verified": verified, "content_hash": md5.lower()})
    root = out_dir / spec.root
    check = "verified" if verified else "not recorded in params.yaml"
    print(f"{name}: {source} archive {archive.name} (md5 {md5}, {check}) unpacked to {root}")
    return root


def required_paths(spec: DatasetSpec) -> dict[str, str]:
    """What a dataset's archive must hold, each with the registry field that names it."""
    required = {f"{spec.root.rstrip('/')}/": "root"}
    for task, t in spec.tasks.items():
        required[t.annotations] = f"tasks.{task}.annotations"
    return required


def _build_twin(name: str, registry: Registry, params: Mapping[str, Any], out_dir: Path) -> tuple[Path, str, bool]:
    from talbench.data.synthetic import PROFILES, SCALES, recorded_md5, write_twin

    synthetic = params.get("synthetic") or {}
    seed, scale, version = synthetic.get("seed", 0), synthetic.get("scale", "ci"), synthetic.get("version")
    if scale not in SCALES:
        raise InputError(registry.path, "synthetic", "scale", f"expected one of {', '.join(SCALES)}, got {scale!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(registry.path, "synthetic", "seed", f"expected an integer, got {seed!r}")
    if name not in PROFILES:
        twins = ", ".join(PROFILES)
        raise InputError(registry.path, name, "data.source", f"no synthetic twin of this dataset (twins: {twins}); use source: real")
    summary = write_twin(registry.dataset(name), scale, seed, out_dir, version)
    expected = recorded_md5(dict(params), name, scale, seed, version)
    if expected is None:
        return summary.archive, summary.md5, False
    return summary.archive, verify_md5(summary.archive, expected, name), True


def _fetch_real(name: str, registry: Registry, out_dir: Path, progress: bool) -> tuple[Path, str, bool]:
    spec = registry.dataset(name)
    if spec.archive is not None:
        return fetch_archive(spec.archive, out_dir, dataset=name, progress=progress), spec.archive.md5, True
    if spec.ego4d_cli is not None:
        command = ego4d_command(spec.ego4d_cli, out_dir / "ego4d_download")
        raise InputError(
            registry.path, name, "ego4d_cli",
            f"Ego4D is not redistributable and cannot be fetched here: accept its licence ({EGO4D_LICENCE_URL}), "
            f"run `{command}`, then convert it to the layout under {out_dir / spec.root}",
        )
    raise InputError(registry.path, name, "archive", "the registry gives no archive to fetch for this dataset")


def data_hash(dataset: str, data_dir: str | Path) -> str:
    """The version of the fetched dataset in `data_dir` (its archive's md5, from the MANIFEST.json the
    fetch stage writes there), or 'unknown' where there is none or it is unreadable or not this dataset's.

    The manifest is part of the fetch stage's output, so it travels with the data (DVC, Airflow alike).
    """
    import json

    try:
        manifest = json.loads((Path(data_dir) / MANIFEST).read_text(encoding="utf-8"))
        if manifest["dataset"] == dataset and isinstance(manifest["content_hash"], str) and manifest["content_hash"]:
            return manifest["content_hash"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        pass
    return "unknown"
