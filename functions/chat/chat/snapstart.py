"""Lambda SnapStart hooks: what a snapshot should contain, and what a restore must rebuild.

Before the snapshot, pay for the heavy imports (`openai` alone is ~400 ms) so no
restored environment pays them again. After a restore, nothing that was unique
or connected at snapshot time may be reused: HTTP clients (their connections
are dead), cached secrets and AWS clients (credentials may have changed), and
the `random` module's state (every restored copy would share it).
"""

from __future__ import annotations

import importlib
import random
import sys

from .store import Store
from .upstream import Upstream

# anyio loads its asyncio backend on the first request (~25 ms): pay that before the snapshot too.
WARM_IMPORTS = ("openai", "httpx2", "anyio._backends._asyncio", "aws_lambda_powertools.utilities.parameters")


def warm_imports() -> None:
    for name in WARM_IMPORTS:
        importlib.import_module(name)


def refresh(upstream: Upstream, store: Store | None = None) -> None:
    upstream.reset()
    if store is not None:
        store.reset()
    forget_powertools_caches()
    random.seed()


def forget_powertools_caches() -> None:
    """Powertools' cached secret values and its boto3 clients (the tests' reset between cases, too)."""
    parameters = sys.modules.get("aws_lambda_powertools.utilities.parameters")
    if parameters is not None:
        parameters.clear_caches()
        importlib.import_module("aws_lambda_powertools.utilities.parameters.base").DEFAULT_PROVIDERS.clear()


def register(upstream: Upstream, store: Store | None = None) -> bool:
    """Register the hooks with the SnapStart registry; False where there is none."""
    try:
        from snapshot_restore_py import register_after_restore, register_before_snapshot
    except ImportError:
        return False
    register_before_snapshot(warm_imports)
    if store is not None:
        register_before_snapshot(store.warm)
    register_after_restore(refresh, upstream, store)
    return True
