"""Record which dependency modules the function imports on its cold path: `python -m tools.cold_path`.

`functions/chat/build_package.py` ships exactly these as compiled bytecode and every
other dependency module as source. Bytecode is what makes the cold import fast (no
compiling on a read-only /var/task), but it zips worse than source, and most of the
SDK (Assistants, Realtime, admin APIs ...) is never imported by this service. A
module missing from the list still works; it is just compiled in memory if it is
ever imported. The test suite checks the list matches what the built package imports.

The cold path is: import the handler, the SnapStart warm-up imports, the runtime
loop, then one streamed answer through the handler.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from tests.harness.fake_openai import FakeOpenAI
from tests.harness.lambda_events import CONTEXT_SOURCE, rest_event
from tools.lambda_python import build_package, python313

ROOT = Path(__file__).resolve().parent.parent
LIST = ROOT / "functions" / "chat" / "cold_path.txt"
HEADER = "# Dependency modules on the function's cold path (see tools/cold_path.py); regenerate with\n"
HEADER += "# `.venv/bin/python -m tools.cold_path` after changing functions/chat/requirements.txt.\n"

PROBE = (
    """
import json, sys
import chat.handler, chat.runtime.loop
from chat import snapstart
"""
    + CONTEXT_SOURCE
    + """
snapstart.warm_imports()
answer = chat.handler.handler(json.loads(sys.argv[1]), context)
assert answer["statusCode"] == 200 and "data:[DONE]" in answer["body"], answer
# -X importtime misses modules imported through importlib (the warm-up above, anyio's backends);
# sys.modules has those. object.__getattribute__ reads a lazy module's file without loading it.
files = [object.__getattribute__(module, "__dict__").get("__file__") for module in list(sys.modules.values())]
print(json.dumps([name for name in files if name]))
"""
)


def record(package_dir: Path, base_url: str) -> list[str]:
    """Module paths (relative, no suffix) of dependencies the cold path imports from `package_dir`."""
    # Lambda's runtime provides boto3 (Powertools' parameters import it); borrow this venv's
    # pure-Python copy, after the package so nothing of the package is shadowed.
    search_path = f"{package_dir}{os.pathsep}{sysconfig.get_paths()['purelib']}"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": search_path, "PYTHONDONTWRITEBYTECODE": "1"}
    env.update(OPENAI_API_KEY="sk-cold-path", OPENAI_BASE_URL=base_url, POWERTOOLS_METRICS_DISABLED="true")
    # No store: the default (SQLite under the working directory) would write into the package, which
    # Lambda never does (the template names the DynamoDB table, whose client boto3 brings).
    env.update(CHAT_STORE_URL="none")
    result = subprocess.run(
        # -X importtime names modules a scan of sys.modules misses (some of anyio's), and the reverse.
        [str(python313()), "-X", "importtime", "-c", PROBE, json.dumps(rest_event({"message": "hi"}))],
        cwd=package_dir,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"the cold-path probe failed:\n{result.stderr[-3000:]}")
    names = {line.rpartition("|")[2].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    modules = set()
    for name in names:
        base = name.replace(".", "/")
        for candidate in (base, f"{base}/__init__"):
            if any((package_dir / f"{candidate}{suffix}").is_file() for suffix in (".py", ".pyc")):
                modules.add(candidate)
    for file in json.loads(result.stdout.splitlines()[-1]):
        path = Path(file)
        if package_dir in path.parents and path.suffix in (".py", ".pyc"):
            modules.add(path.relative_to(package_dir).with_suffix("").as_posix())
    return sorted(module for module in modules if module.split("/")[0] != "chat")


def main() -> None:
    with tempfile.TemporaryDirectory() as temporary, FakeOpenAI() as fake:
        package = Path(temporary) / "package"
        built = build_package(package, "x86_64")
        if built.returncode != 0:
            raise RuntimeError(f"the build failed:\n{built.stdout}{built.stderr}")
        modules = record(package, fake.base_url)
    LIST.write_text(HEADER + "\n".join(modules) + "\n")
    print(f"{LIST.relative_to(ROOT)}: {len(modules)} modules", file=sys.stderr)


if __name__ == "__main__":
    main()
