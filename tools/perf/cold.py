"""The cold-start figures of the benchmark: handler import time, process start to first answer, zip size.

They are taken from the package as Lambda gets it, built by functions/chat/build_package.py
for x86_64 (the arm64 package's twin, so it imports here) with python3.13, Lambda's
Python. Builds are cached in .bench-cache/, keyed by a hash of what goes into them.
The baseline package is what SAM's default builder makes of the idiomatic relay: the
same pinned dependencies unpacked as they come, no bytecode, nothing pruned.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.harness.app_process import app_env
from tests.harness.lambda_events import CONTEXT_SOURCE, rest_event
from tests.harness.processes import ROOT
from tools.lambda_python import build_package, python313
from tools.perf.client import PerfError
from tools.perf.cpu_share import Share
from tools.perf.stream import BENCH_ENV

FUNCTION = ROOT / "functions" / "chat"
BASELINE_SOURCE = ROOT / "tools" / "perf" / "baseline.py"
CACHE = ROOT / ".bench-cache"
ARCH = "x86_64"


def _check_build(result: subprocess.CompletedProcess[str], name: str) -> None:
    if result.returncode != 0:
        raise PerfError(f"building the {name} package failed:\n{result.stdout}{result.stderr}")


def _build_service(target: Path) -> None:
    _check_build(build_package(target, ARCH), "service")


def _build_baseline(target: Path) -> None:
    """SAM's default builder: the pinned wheels unpacked as they are, then the code."""
    script = (
        f"import build_package, pathlib; build_package.install_dependencies(pathlib.Path({str(target)!r}), {ARCH!r})"
    )
    command = [str(python313()), "-c", script, str(target), ARCH]
    _check_build(subprocess.run(command, cwd=FUNCTION, capture_output=True, text=True, check=False), "baseline")
    shutil.copy2(BASELINE_SOURCE, target / "bench_baseline.py")


@dataclass(frozen=True)
class Package:
    """A Lambda package: the module that defines `handler`, what the build reads, how to build it."""

    name: str
    module: str
    inputs: tuple[Path, ...]
    build: Callable[[Path], None]


def _sources(directory: Path) -> tuple[Path, ...]:
    return tuple(sorted(path for path in directory.rglob("*") if path.is_file() and "__pycache__" not in path.parts))


SERVICE_PACKAGE = Package(
    "service",
    "chat.handler",
    (
        FUNCTION / "requirements.txt",
        FUNCTION / "Makefile",
        FUNCTION / "build_package.py",
        FUNCTION / "cold_path.txt",
        FUNCTION / "lambda-exec-wrapper",
        *_sources(FUNCTION / "chat"),
    ),
    _build_service,
)
BASELINE_PACKAGE = Package(
    "baseline", "bench_baseline", (FUNCTION / "requirements.txt", BASELINE_SOURCE), _build_baseline
)


def built(package: Package) -> Path:
    """The package's build directory, rebuilt only when one of its inputs changed."""
    digest = hashlib.sha256()
    for path in package.inputs:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    target = CACHE / f"{package.name}-{digest.hexdigest()[:16]}"
    if target.is_dir():
        return target
    CACHE.mkdir(exist_ok=True)
    for stale in CACHE.glob(f"{package.name}-*"):
        shutil.rmtree(stale)
    print(f"building the {package.name} package (cached in {CACHE.name}/)...", file=sys.stderr, flush=True)
    staging = Path(tempfile.mkdtemp(dir=CACHE, prefix=".building-"))
    try:
        package.build(staging)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _env(package_dir: Path, base_url: str) -> dict[str, str]:
    """What the function sees on Lambda, roughly: the package first on the path, no bytecode written."""
    return {
        **app_env(base_url, **BENCH_ENV),
        "PYTHONPATH": str(package_dir),
        "LAMBDA_TASK_ROOT": str(package_dir),
        "AWS_DEFAULT_REGION": "us-east-1",
        "CHAT_STORE_URL": "none",  # not SQLite inside the package directory (Lambda's is read-only)
    }


def import_ms(package: Package, package_dir: Path, core: set[int] | None) -> float:
    """`python3.13 -X importtime -c "import <handler module>"`: the module's cumulative import time."""
    process = subprocess.Popen(
        [str(python313()), "-X", "importtime", "-c", f"import {package.module}"],
        cwd=package_dir,
        env=_env(package_dir, "http://127.0.0.1:9/v1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if core is not None:
        os.sched_setaffinity(process.pid, core)
    _, stderr = process.communicate(timeout=120)
    for line in stderr.splitlines():
        fields = [field.strip() for field in line.removeprefix("import time:").split("|")]
        if len(fields) == 3 and fields[2] == package.module:
            return int(fields[1]) / 1000
    raise PerfError(f"no import time for {package.module}:\n{stderr[-2000:]}")


FIRST_ANSWER = "import json, sys\nfrom {module} import handler\n{context}\n"
FIRST_ANSWER += "print(json.dumps(handler(json.loads(sys.argv[1]), context)), flush=True)\n"


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def first_answer_ms(
    package: Package, package_dir: Path, base_url: str, core: set[int] | None, share: Share | None = None
) -> float:
    """Milliseconds from spawning python3.13 to the handler returning a complete SSE answer,
    with the process limited to Lambda's CPU `share` of a memory size if given."""
    command = [
        str(python313()),
        "-c",
        FIRST_ANSWER.format(module=package.module, context=CONTEXT_SOURCE),
        json.dumps(rest_event({"message": "hi"})),
    ]
    cpu = _children_cpu_seconds()
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        cwd=package_dir,
        env=_env(package_dir, base_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=None if share is None else share.join,  # one file write before exec: the child starts limited
    )
    if core is not None:
        os.sched_setaffinity(process.pid, core)
    assert process.stdout is not None
    line = process.stdout.readline()
    elapsed = (time.perf_counter() - started) * 1000
    _, stderr = process.communicate(timeout=120)
    try:
        response = json.loads(line)
    except ValueError:
        raise PerfError(f"the {package.name} handler gave no answer:\n{stderr.decode()[-2000:]}") from None
    if response.get("statusCode") != 200 or "data:[DONE]" not in response.get("body", ""):
        raise PerfError(f"the {package.name} handler answered {str(response)[:500]}")
    if share is None:
        return elapsed
    return share.wall_seconds(elapsed / 1000, _children_cpu_seconds() - cpu) * 1000


def zipped_mb(package_dir: Path) -> float:
    """Size of the package zipped with deflate, as SAM uploads it (MB, 10^6 bytes)."""
    with tempfile.TemporaryFile() as file:
        with zipfile.ZipFile(file, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(package_dir.rglob("*")):
                archive.write(path, path.relative_to(package_dir))
        return file.tell() / 1e6
