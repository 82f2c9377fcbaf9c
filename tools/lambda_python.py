"""python3.13, the function's runtime, and the function's package built with it exactly as `sam build` builds it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


class NoPython313(RuntimeError):
    """python3.13 is not installed where we look."""


def python313() -> Path:
    """On PATH (CI's setup-python), else beside pyenv's default (these development machines)."""
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [shutil.which("python3.13"), *sorted(pyenv_root.glob("versions/3.13*/bin/python3.13"))]
    for candidate in candidates:
        if candidate and subprocess.run([candidate, "--version"], capture_output=True, check=False).returncode == 0:
            return Path(candidate)
    raise NoPython313("python3.13 (the Lambda function's runtime) is needed to build the package; install it")


def build_env() -> dict[str, str]:
    """The environment `sam build` needs: python3.13 first on PATH, as functions/chat/Makefile calls it by that name."""
    return {**os.environ, "PATH": f"{python313().parent}{os.pathsep}{os.environ['PATH']}"}


def build_package(artifacts: Path, arch: str) -> subprocess.CompletedProcess[str]:
    """Build the function into `artifacts` for `arch` through its Makefile target, the one `sam build` runs."""
    function = Path(__file__).resolve().parent.parent / "functions" / "chat"
    command = ["make", "-C", str(function), "build-ChatFunction", f"ARTIFACTS_DIR={artifacts}", f"LAMBDA_ARCH={arch}"]
    return subprocess.run(command, env=build_env(), capture_output=True, text=True, check=False)
