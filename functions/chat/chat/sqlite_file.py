"""One SQLite file opened on first use, shared by the conversation store and the usage ledger.

WAL mode lets readers in other processes (a second `make run`, the key tool) read while one
writes; `synchronous=NORMAL` is WAL's durable-on-checkpoint setting, cheaper per commit.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path


class SQLiteFile:
    """A lazily opened connection: callers on one worker thread, the lock only guards open and close."""

    def __init__(self, path: Path, schema: str, migrate: Callable[[sqlite3.Connection], None] | None = None) -> None:
        self.path = path
        self._schema = schema
        self._migrate = migrate
        self._connection: sqlite3.Connection | None = None
        self._guard = threading.Lock()

    def connection(self) -> sqlite3.Connection:
        """The open connection; raises OSError or sqlite3.Error when the file cannot be opened."""
        with self._guard:
            if self._connection is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                connection = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=NORMAL")
                connection.executescript(self._schema)
                if self._migrate is not None:
                    self._migrate(connection)
                self._connection = connection
            return self._connection

    def close(self) -> None:
        with self._guard:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
