"""Finding python3.13, the function's runtime: the package build and cold-start figures need it."""

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
