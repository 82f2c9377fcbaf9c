"""A headless Chromium for the browser tests: find one, or install one (`make test` runs `ensure`).

Where a Chromium comes from, in order: one on PATH (Debian's `chromium` package puts it at
/usr/bin/chromium), then Playwright's own download. `ensure` installs one when none is
found: Playwright's download first (where its download host can be reached), then Debian's
package when running as root with apt-get. When none can be had, the browser tests fail
with `HOW_TO_GET`: they are never skipped.

Usage: python -m tests.harness.browser ensure
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

ON_PATH = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
HOW_TO_GET = (
    "No Chromium for the browser tests. Get one with `sudo apt-get install chromium` (Debian, Ubuntu) "
    "or `.venv/bin/playwright install chromium`, or put its path in CHAT_TEST_CHROMIUM. "
    "`make test` tries both installs by itself."
)
# The machine may have no network: keep Chromium from calling home (updates, sync, safe browsing).
LAUNCH_ARGS = [
    "--no-sandbox",  # tests run as root in CI, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--no-first-run",
    "--disable-quic",
]


def find_chromium() -> str | None:
    """The path of a usable Chromium, or None."""
    explicit = os.environ.get("CHAT_TEST_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() else None
    for name in ON_PATH:
        found = shutil.which(name)
        if found:
            return found
    with sync_playwright() as playwright:
        own = playwright.chromium.executable_path
    return own if Path(own).exists() else None


def _starts(path: str) -> bool:
    """Whether the binary runs at all here (a downloaded build may lack the system's libraries)."""
    try:
        return subprocess.run([path, "--version"], capture_output=True, check=False, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _run(command: list[str]) -> bool:
    print("+", " ".join(command), file=sys.stderr, flush=True)
    try:
        return subprocess.run(command, check=False, timeout=900).returncode == 0
    except (OSError, subprocess.TimeoutExpired) as error:
        print(f"  {error}", file=sys.stderr)
        return False


def ensure() -> int:
    """Install a Chromium if none is found; never fails the build (the tests say what is missing)."""
    found = find_chromium()
    if found:
        print(f"Chromium for the browser tests: {found}")
        return 0
    playwright = Path(sys.executable).with_name("playwright")
    if _run([str(playwright), "install", "chromium"]):
        downloaded = find_chromium()
        if downloaded and _starts(downloaded):
            print(f"Chromium for the browser tests: {downloaded} (Playwright's download)")
            return 0
    apt = shutil.which("apt-get")
    if apt and os.geteuid() == 0:
        environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", "chromium"]):
            print("+", " ".join(command), file=sys.stderr, flush=True)
            subprocess.run(command, check=False, env=environment, timeout=900)
        if find_chromium():
            print(f"Chromium for the browser tests: {find_chromium()} (Debian's package)")
            return 0
    print(HOW_TO_GET, file=sys.stderr)
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["ensure"]:
        raise SystemExit(__doc__)
    raise SystemExit(ensure())
