"""Where the SAM CLI virtualenv (made by `make test`) keeps its tools, AWS's emulator among them."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from tools import lambda_python

ROOT = Path(__file__).resolve().parents[2]
SAM_VENV = ROOT / ".venv-sam"


def sam_tool(name: str) -> Path:
    path = SAM_VENV / "bin" / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run the suite with `make test`, which creates {SAM_VENV.name}")
    return path


def rie_binary() -> Path:
    """The Runtime Interface Emulator that ships inside the aws-sam-cli package."""
    arch = "arm64" if platform.machine() in ("aarch64", "arm64") else "x86_64"
    found = sorted(SAM_VENV.glob(f"lib/python3*/site-packages/samcli/local/rapid/aws-lambda-rie-{arch}"))
    if not found:
        pytest.fail(f"aws-lambda-rie-{arch} not found in {SAM_VENV.name}: run the suite with `make test`")
    return found[0]


def python313() -> Path:
    try:
        return lambda_python.python313()
    except lambda_python.NoPython313 as error:
        pytest.fail(str(error))


def build_env() -> dict[str, str]:
    """The environment `sam build` needs (python3.13 first on PATH)."""
    python313()  # fails the test clearly when python3.13 is missing
    return lambda_python.build_env()


def build_package(artifacts: Path, arch: str) -> Path:
    """Build the function as `sam build` does (its Makefile target) into `artifacts`, for `arch`."""
    python313()
    result = lambda_python.build_package(artifacts, arch)
    assert result.returncode == 0, result.stdout + result.stderr
    return artifacts
