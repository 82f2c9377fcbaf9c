"""moto's server with requests handled one at a time: `python -m tests.harness.moto_serial --port PORT`.

moto's own server runs each request on a thread, and its DynamoDB backend is not safe
for that: under a few hundred concurrent writes it answers 500 or loses items. Real
DynamoDB serialises writes to an item itself; this stand-in serialises every request
(each is a fast in-memory operation), keeping keep-alive connections on their threads.

moto also backs up every table a transaction touches with a deep copy, item by item, so
each TransactWriteItems costs time in proportion to the whole table: a load round of a
thousand turns would take an hour. Here the backup copies the table's partitions and
shares the item objects, which is enough for its rollback: a transaction's writes
replace items, and conditions are checked before an item is changed.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable, Iterable
from typing import Any


def serialised(app: Callable[..., Iterable[bytes]]) -> Callable[..., list[bytes]]:
    lock = threading.Lock()

    def handle(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with lock:
            return list(app(environ, start_response))

    return handle


def cheap_transaction_backups() -> None:
    import collections
    import copy

    from moto.dynamodb.models.table import Table

    def backup(self: Table, memo: dict[int, object]) -> Table:
        clone = copy.copy(self)
        items = self.items
        clone.items = collections.defaultdict(
            dict, {key: dict(value) if isinstance(value, dict) else value for key, value in items.items()}
        )
        return clone

    Table.__deepcopy__ = backup  # type: ignore[attr-defined]


def main() -> None:
    from moto.server import DomainDispatcherApplication, create_backend_app  # type: ignore[attr-defined]
    from werkzeug.serving import run_simple

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    cheap_transaction_backups()
    app = DomainDispatcherApplication(create_backend_app)
    run_simple("127.0.0.1", args.port, serialised(app), threaded=True)


if __name__ == "__main__":
    main()
