"""Build the Lambda package into a directory (run by `sam build` through ./Makefile).

Why not SAM's default Python builder: Lambda's /var/task is read-only, so a
package shipped without bytecode is compiled from source on every cold start
(935 ms to import the handler on python3.13 here, against 375 ms with bytecode).
So dependencies are installed for the target platform; those the cold path
imports (cold_path.txt) are compiled to sourceless bytecode with unchecked
hashes (valid whatever the zip's timestamps), the rest stay source (smaller
zipped); unused Powertools utilities are dropped. The project's own package
keeps its source, for readable tracebacks.

Usage: python3.13 build_package.py ARTIFACTS_DIR [--arch arm64|x86_64]
Must run on the Lambda's Python version: bytecode is specific to it.
"""

from __future__ import annotations

import argparse
import compileall
import py_compile
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYTHON_VERSION = "3.13"
# Where Lambda unpacks the package: sourceless bytecode names its files there, so tracebacks point at them.
TASK_ROOT = Path("/var/task")
PLATFORMS = {"arm64": "manylinux2014_aarch64", "x86_64": "manylinux2014_x86_64"}
SHIPPED = ("chat", "lambda-exec-wrapper")
# Powertools utilities the service never imports (Logger, Metrics and parameters stay).
UNUSED = (
    "aws_lambda_powertools/event_handler",
    "aws_lambda_powertools/utilities/auth_alpha",
    "aws_lambda_powertools/utilities/batch",
    "aws_lambda_powertools/utilities/circuit_breaker",
    "aws_lambda_powertools/utilities/data_classes",
    "aws_lambda_powertools/utilities/data_masking",
    "aws_lambda_powertools/utilities/feature_flags",
    "aws_lambda_powertools/utilities/idempotency",
    "aws_lambda_powertools/utilities/kafka",
    "aws_lambda_powertools/utilities/parser",
    "aws_lambda_powertools/utilities/streaming",
    "aws_lambda_powertools/utilities/validation",
)


def install_dependencies(target: Path, arch: str) -> None:
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile"]
    command += ["--target", str(target), "--requirement", str(HERE / "requirements.txt")]
    command += ["--platform", PLATFORMS[arch], "--implementation", "cp", "--python-version", PYTHON_VERSION]
    command += ["--only-binary=:all:", "--upgrade"]
    subprocess.run(command, check=True)


def copy_sources(target: Path) -> None:
    for name in SHIPPED:
        source = HERE / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, target / name)


def prune(target: Path) -> None:
    for relative in UNUSED:
        shutil.rmtree(target / relative, ignore_errors=True)
    for cache in target.rglob("__pycache__"):
        shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(target / "bin", ignore_errors=True)
    for manifest in target.glob("*.dist-info/RECORD"):  # pip's list of installed files: only uninstalling reads it
        manifest.unlink()


def cold_path_modules() -> set[str]:
    """Dependency modules the cold path imports (cold_path.txt, recorded by tools/cold_path.py)."""
    lines = (HERE / "cold_path.txt").read_text().splitlines()
    return {line for line in lines if line and not line.startswith("#")}


def compile_bytecode(target: Path) -> None:
    """Cold-path dependencies become sourceless `.pyc` where the `.py` was; the rest, and ours, keep source.

    Bytecode zips worse than source, and most of the SDK is never imported here:
    compiling only what the cold path imports keeps the import fast and the zip small.
    """
    own = target / "chat"
    hot = cold_path_modules()
    for source in target.rglob("*.py"):
        if own in source.parents or source.relative_to(target).with_suffix("").as_posix() not in hot:
            continue
        py_compile.compile(
            str(source),
            cfile=str(source) + "c",
            dfile=str(TASK_ROOT / source.relative_to(target)),
            doraise=True,
            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
        )
        source.unlink()
    ok = compileall.compile_dir(
        str(own), quiet=1, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH, workers=0
    )
    if not ok:
        raise SystemExit("compiling the chat package failed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("artifacts", type=Path)
    parser.add_argument("--arch", choices=sorted(PLATFORMS), default="arm64")
    args = parser.parse_args()
    if f"{sys.version_info.major}.{sys.version_info.minor}" != PYTHON_VERSION:
        raise SystemExit(f"run this with python{PYTHON_VERSION}: bytecode is specific to the Lambda's Python")
    args.artifacts.mkdir(parents=True, exist_ok=True)
    install_dependencies(args.artifacts, args.arch)
    copy_sources(args.artifacts)
    prune(args.artifacts)
    compile_bytecode(args.artifacts)


if __name__ == "__main__":
    main()
