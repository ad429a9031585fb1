"""Build the talbench image with podman.

    python infra/docker/build.py [--cpu] [--tag localhost/talbench:latest]

Without --cpu the image is FROM the Dockerfile's CUDA base (GPU). With --cpu it is FROM a local
Debian bookworm base, made with debootstrap from the Debian mirror that apt's own sources name when
it is missing. Optional inputs are staged in infra/docker/inputs/: the host's extra CA certificates
and, for --cpu only, the host's CPU build of the locked torch from the folder pip's configuration
names. The image is labelled with a hash of its inputs (the Dockerfile's COPY sources as git sees
them, the staged inputs, the base): a second build of the same tree is skipped at once.

Standard library only: the tests import it (tests/containers.py).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "infra/docker/Dockerfile"
INPUTS = ROOT / "infra/docker/inputs"
CONTAINERS_CONF = ROOT / "infra/podman/containers.conf"
DEFAULT_TAG = "localhost/talbench:latest"
CPU_BASE = "localhost/talbench-debian:bookworm"
LABEL = "talbench.inputs"
LOCAL_CAS = Path("/usr/local/share/ca-certificates")  # Debian's folder for locally added CAs
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
PYTHON_TAG = "cp311"  # the image's Python (see the Dockerfile)


class BuildError(Exception):
    """What the user can act on: printed as one `error:` line."""


def podman_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment podman runs in: this project's containers.conf (runc, cgroupfs, ulimits)."""
    env = dict(os.environ if base is None else base)
    env["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
    return env


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(["podman", *args], env=podman_env(), capture_output=True, text=True)
    except FileNotFoundError:
        raise BuildError("podman: not installed (apt-get install podman runc)") from None
    if check and done.returncode != 0:
        raise BuildError(f"podman {args[0]}: {_last_line(done.stderr) or f'exit {done.returncode}'}")
    return done


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def image_id(tag: str) -> str | None:
    done = podman("image", "inspect", "--format", "{{.Id}}", tag, check=False)
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def image_label(tag: str) -> str | None:
    """The tag's input hash, or None when there is no such image."""
    done = podman("image", "inspect", "--format", f'{{{{index .Config.Labels "{LABEL}"}}}}', tag, check=False)
    return (done.stdout.strip() or None) if done.returncode == 0 else None


# ---------------------------------------------------------------- the inputs and their hash


def copy_sources(dockerfile: Path = DOCKERFILE) -> list[str]:
    """The build-context paths the Dockerfile's COPY instructions take (not those from other stages)."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text(encoding="utf-8"))
    sources = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].upper() != "COPY" or any(w.startswith("--from=") for w in words):
            continue
        sources += [w.rstrip("/") for w in words[1:-1] if not w.startswith("--")]
    return sources


def input_files(dockerfile: Path = DOCKERFILE) -> list[Path]:
    """The files the image is made of: git's tracked and untracked-not-ignored files under the COPY
    sources, the staged optional inputs, and the build's own files."""
    sources = copy_sources(dockerfile)
    done = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *sources],
                          cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise BuildError(f"{ROOT}: git ls-files: {_last_line(done.stderr) or 'not a git checkout'}")
    files = {ROOT / name for name in done.stdout.split("\0") if name}
    files |= {path for path in INPUTS.rglob("*") if not path.name.startswith(".")}  # not a copy in progress
    files |= {dockerfile, ROOT / ".dockerignore"}
    return sorted(path for path in files if path.is_file())


def source_commit() -> str:
    """HEAD of the tree being built (the image's TALBENCH_SOURCE_COMMIT), or 'unknown' outside a git checkout."""
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"


def inputs_hash(base: str | None, commit: str) -> str:
    """sha256 over the base (its name and local id; None: the Dockerfile's), the commit and each input
    file's path and content."""
    digest = hashlib.sha256()
    digest.update(f"base {base} {image_id(base) if base else None}\ncommit {commit}\n".encode())
    for path in input_files():
        digest.update(f"{path.relative_to(ROOT)}\n".encode())
        with open(path, "rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


# ---------------------------------------------------------------- the optional inputs


def stage_inputs(cpu: bool, lock: Path = ROOT / "requirements.lock") -> list[str]:
    """Make INPUTS hold exactly this build's optional inputs; return the names of the staged wheels.
    Files already in place are left alone, so a build running beside this one never misses them."""
    cas = sorted(LOCAL_CAS.rglob("*.crt")) if LOCAL_CAS.is_dir() else []
    wheel = torch_wheel(locked_version(lock, "torch")) if cpu else None
    wanted = {INPUTS / "ca-certificates" / f"{n:02d}-{cert.name}": cert for n, cert in enumerate(cas)}
    if wheel is not None:
        wanted[INPUTS / "wheels" / wheel.name] = wheel
    for folder in (INPUTS / "ca-certificates", INPUTS / "wheels"):
        for path in folder.iterdir():
            if path.name != "README.md" and path not in wanted:
                path.unlink()
    for target, source in wanted.items():
        if not (target.is_file() and _same_bytes(target, source)):
            temp = target.with_name(f".{target.name}.{os.getpid()}")
            shutil.copyfile(source, temp)
            os.replace(temp, target)
    return [wheel.name] if wheel else []


def _same_bytes(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return hashlib.file_digest(fa, "sha256").digest() == hashlib.file_digest(fb, "sha256").digest()


def locked_version(lock: Path, name: str) -> str:
    for line in lock.read_text(encoding="utf-8").splitlines():
        if line.lower().startswith(f"{name}=="):
            return line.split("==", 1)[1].strip()
    raise BuildError(f"{lock}: {name}: field 'version': not pinned with '=='")


def torch_wheel(version: str) -> Path | None:
    """The CPU torch wheel of `version` for the image's Python in a folder pip's configuration names."""
    for folder in pip_find_links():
        found = sorted(folder.glob(f"torch-{version}+cpu-{PYTHON_TAG}-{PYTHON_TAG}-*linux*x86_64.whl"))
        if found:
            return found[0]
    return None


def pip_find_links() -> Iterator[Path]:
    """Local folders of pip's find-links setting (its config files and PIP_FIND_LINKS)."""
    done = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    values = re.findall(r"find-links='([^']*)'", done.stdout) + [os.environ.get("PIP_FIND_LINKS", "")]
    for value in values:
        for entry in value.split():
            path = Path(entry.removeprefix("file://"))
            if path.is_dir():
                yield path


# ---------------------------------------------------------------- the CPU base


def debian_mirror(sources: tuple[Path, ...] = APT_SOURCES) -> str:
    """The Debian mirror of apt's own sources (one-line or deb822 format)."""
    files = [p for s in sources for p in ([s] if s.is_file() else sorted(s.glob("*.list")) + sorted(s.glob("*.sources")))]
    for path in files:
        for uri in re.findall(r"(?:^deb\s+(?:\[[^]]*\]\s+)?|^URIs:\s*)(\S+)", path.read_text(encoding="utf-8"), re.M):
            if uri.rstrip("/").endswith("/debian"):
                return uri
    raise BuildError(f"{', '.join(map(str, sources))}: -: field 'URIs': no Debian mirror in apt's sources; pass --mirror URL")


def make_cpu_base(mirror: str, tag: str = CPU_BASE) -> None:
    """A minimal Debian bookworm root file system (debootstrap) imported as image `tag`."""
    if shutil.which("debootstrap") is None:
        raise BuildError("debootstrap: not installed (apt-get install debootstrap)")
    with tempfile.TemporaryDirectory(prefix="talbench-debian-", dir="/var/tmp") as temp:
        rootfs = Path(temp) / "rootfs"
        print(f"base: debootstrap --variant=minbase bookworm from {mirror}", flush=True)
        done = subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), mirror],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise BuildError(f"debootstrap: {_last_line(done.stdout + done.stderr) or f'exit {done.returncode}'}")
        # the point releases' fixes too, not only the release itself
        (rootfs / "etc/apt/sources.list").write_text(f"deb {mirror} bookworm bookworm-updates main\n")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        try:
            done = subprocess.run(["podman", "import", "-", tag], stdin=tar.stdout, env=podman_env(),
                                  capture_output=True, text=True)
        finally:
            tar.stdout.close()
            tar.wait()
        if done.returncode != 0 or tar.returncode != 0:
            raise BuildError(f"podman import: {_last_line(done.stderr) or 'tar of the root file system failed'}")
    print(f"base: {tag} imported", flush=True)


# ---------------------------------------------------------------- the build


def build(tag: str, *, cpu: bool, base: str | None = None, mirror: str | None = None) -> str:
    """Build (or find up to date) the image `tag`; print progress and a summary; return the tag."""
    started = time.monotonic()
    if cpu and base is None:
        base = CPU_BASE
        if podman("image", "exists", base, check=False).returncode != 0:
            make_cpu_base(mirror or debian_mirror(), base)
    wheels = stage_inputs(cpu)
    commit = source_commit()
    digest = inputs_hash(base, commit)
    if image_label(tag) == digest:
        print(f"{tag}: up to date (inputs {digest[:12]}), not rebuilt", flush=True)
        return tag
    args = ["build", "--jobs", "2", "-f", str(DOCKERFILE), "-t", tag, "--label", f"{LABEL}={digest}",
            "--build-arg", f"LOCAL_WHEELS={' '.join(wheels) or 'none'}", "--build-arg", f"SOURCE_COMMIT={commit}"]
    if base:
        args += ["--build-arg", f"BASE_IMAGE={base}"]
    print(f"build: {tag} from {base or 'the CUDA base'}, local wheels: {', '.join(wheels) or 'none'}", flush=True)
    previous = image_id(tag)
    run_build([*args, str(ROOT)], started)
    if previous and previous != image_id(tag):  # the tag moved: drop the old image if nothing names or uses it
        left = podman("image", "inspect", "--format", "{{len .RepoTags}}", previous, check=False).stdout.strip()
        if left == "0":
            podman("rmi", previous, check=False)
    size = podman("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip()
    print(f"built {tag}: {int(size) / 1e9:.2f} GB in {time.monotonic() - started:.0f} s (inputs {digest[:12]})", flush=True)
    return tag


def run_build(args: list[str], started: float) -> None:
    """podman build, printing its STEP lines as progress; on failure its last lines and one error line."""
    tail: list[str] = []
    proc = subprocess.Popen(["podman", *args], env=podman_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace")
    assert proc.stdout is not None
    for line in proc.stdout:
        tail = [*tail[-29:], line.rstrip()]
        if " STEP " in line or line.startswith("STEP "):
            print(f"[{time.monotonic() - started:4.0f} s] {line.strip()[:160]}", flush=True)
    if proc.wait() != 0:
        print("\n".join(tail), file=sys.stderr)
        cause = next((line.removeprefix("Error: ") for line in reversed(tail) if line.startswith("Error: ")), "see above")
        raise BuildError(f"podman build: exit {proc.returncode}: {cause}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python infra/docker/build.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help=f"FROM the local Debian base {CPU_BASE} (made when missing)")
    parser.add_argument("--tag", default=DEFAULT_TAG, help=f"the image's name [default: {DEFAULT_TAG}]")
    parser.add_argument("--base", help="another base image (BASE_IMAGE)")
    parser.add_argument("--mirror", help="the Debian mirror for the CPU base [default: apt's own]")
    args = parser.parse_args(argv)
    try:
        build(args.tag, cpu=args.cpu, base=args.base, mirror=args.mirror)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
