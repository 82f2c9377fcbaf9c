"""Where the SAM CLI virtualenv (made by `make test`) keeps its tools, AWS's emulator among them."""

from __future__ import annotations

import json
import platform
import subprocess
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


_FUNCTION_ENVIRONMENT = """
import json
from samcli.lib.providers.sam_function_provider import SamFunctionProvider
from samcli.lib.providers.sam_stack_provider import SamLocalStackProvider
stacks, _ = SamLocalStackProvider.get_stacks("template.yaml")
print(json.dumps(SamFunctionProvider(stacks).get("ChatFunction").environment["Variables"]))
"""


def template_environment() -> dict[str, str]:
    """ChatFunction's variables as `sam local` resolves them from template.yaml (default parameters),
    less the exec wrapper's path, which exists only inside SAM's container."""
    command = [str(sam_tool("python")), "-c", _FUNCTION_ENVIRONMENT]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    variables: dict[str, str] = json.loads(result.stdout)
    variables.pop("AWS_LAMBDA_EXEC_WRAPPER")
    return variables
