"""moto's DynamoDB with the per-item atomicity DynamoDB guarantees (for tests of concurrent writers).

moto applies an UpdateItem's condition and its update as separate Python steps, so two
requests served on different threads can interleave: both pass `used <= :room`, or one
increment is lost. DynamoDB applies each write, condition included, atomically per item.
`atomic_items()` serialises moto's item operations, in process and in moto's threaded
server alike (it runs in the test process), so a test of our concurrency sees DynamoDB's
semantics rather than moto's race.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any

OPERATIONS = ("get_item", "put_item", "update_item", "delete_item", "transact_write_items", "query")


@contextlib.contextmanager
def atomic_items() -> Iterator[None]:
    from moto.dynamodb.models import DynamoDBBackend

    lock = threading.RLock()
    originals: dict[str, Callable[..., Any]] = {name: getattr(DynamoDBBackend, name) for name in OPERATIONS}

    def serialised(original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def call(*args: Any, **kwargs: Any) -> Any:
            with lock:
                return original(*args, **kwargs)

        return call

    for name, original in originals.items():
        setattr(DynamoDBBackend, name, serialised(original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(DynamoDBBackend, name, original)
