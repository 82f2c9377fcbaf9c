"""The SAM template and the Lambda package, with SAM CLI's own tools (no Docker, no AWS)."""

from __future__ import annotations

import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.harness.fake_openai import FakeOpenAI
from tests.harness.sam_cli import ROOT, build_env, python313, sam_tool
from tools import cold_path

FUNCTION_DIR = ROOT / "functions" / "chat"


def run(command: list[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [str(part) for part in command], capture_output=True, text=True, cwd=ROOT, check=False, **kwargs
    )


def test_sam_validate_lint_is_clean() -> None:
    result = run([sam_tool("sam"), "validate", "--lint", "--template", "template.yaml"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_cfn_lint_is_clean() -> None:
    result = run([sam_tool("cfn-lint"), "template.yaml"])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def arm64_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    build_dir = tmp_path_factory.mktemp("sam") / "build"
    result = run([sam_tool("sam"), "build", "--build-dir", build_dir], env=build_env())
    assert result.returncode == 0, result.stdout + result.stderr
    return build_dir / "ChatFunction"


@pytest.fixture(scope="module")
def x86_64_twin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same Makefile target for this machine's architecture, so the package can be imported here."""
    artifacts = tmp_path_factory.mktemp("twin")
    result = run(
        ["make", "-C", FUNCTION_DIR, "build-ChatFunction", f"ARTIFACTS_DIR={artifacts}", "LAMBDA_ARCH=x86_64"],
        env=build_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return artifacts


def run_in(package: Path, code: str) -> str:
    """Run `code` with python3.13 on the package alone (isolated mode), as Lambda would; its output."""
    result = subprocess.run(
        [str(python313()), "-I", "-c", f"import sys; sys.path.insert(0, {str(package)!r}); {code}"],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "PYTHONDONTWRITEBYTECODE": "1"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def files(package: Path) -> set[str]:
    return {str(path.relative_to(package)) for path in package.rglob("*") if path.is_file()}


def test_sam_build_makes_an_arm64_package_on_our_runtime(arm64_package: Path) -> None:
    shipped = files(arm64_package)
    assert "chat/handler.py" in shipped
    assert "chat/runtime/loop.py" in shipped
    assert os.access(arm64_package / "lambda-exec-wrapper", os.X_OK), "Lambda refuses a wrapper it cannot execute"
    extensions = [name for name in shipped if name.endswith(".so")]
    assert extensions
    assert all("aarch64" in name for name in extensions), extensions
    # Cold-path dependencies ship as bytecode only: nothing to compile on a read-only /var/task.
    for module in cold_path.committed():
        assert f"{module}.pyc" in shipped
        assert f"{module}.py" not in shipped


def test_the_handler_imports_from_the_built_package(arm64_package: Path, x86_64_twin: Path) -> None:
    def normalised(package: Path) -> set[str]:
        return {name.replace("aarch64", "ARCH").replace("x86_64", "ARCH") for name in files(package)}

    assert normalised(x86_64_twin) == normalised(arm64_package)
    probe = "import chat.handler, chat.runtime.loop; print(type(chat.handler.handler).__name__)"
    assert run_in(x86_64_twin, probe) == "Mangum"


def test_the_zipped_package_fits_lambda(arm64_package: Path, tmp_path: Path) -> None:
    archive = tmp_path / "package.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        for path in sorted(arm64_package.rglob("*")):
            zipped.write(path, path.relative_to(arm64_package))
    assert archive.stat().st_size < 50 * 1024 * 1024  # Lambda's limit for a directly uploaded zip


def test_the_cold_path_list_matches_what_the_package_imports(x86_64_twin: Path, fake: FakeOpenAI) -> None:
    """Only cold-path modules ship as bytecode; a stale list would compile modules in memory at cold start."""
    assert cold_path.record(x86_64_twin, fake.base_url) == cold_path.committed(), (
        "functions/chat/cold_path.txt is stale: regenerate it with `.venv/bin/python -m tools.cold_path`"
    )


def test_tracebacks_from_the_package_name_lambda_paths(x86_64_twin: Path) -> None:
    """Sourceless bytecode carries the path it was compiled under: it must be /var/task, not the build dir."""
    probe = "import mangum.adapter as m; print(m.Mangum.__call__.__code__.co_filename)"
    assert run_in(x86_64_twin, probe) == "/var/task/mangum/adapter.py"
