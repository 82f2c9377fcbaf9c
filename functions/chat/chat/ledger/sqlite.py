"""The embedded ledger: tables in the store's SQLite file, one connection per process.

A reservation is one `BEGIN IMMEDIATE` transaction: every counter gets a conditional
`UPDATE ... WHERE used + amount <= limit`, and if one matches no row the whole
transaction rolls back. SQLite serialises writers across processes, so concurrent
reservations cannot pass a limit. Counters past their expiry are purged at most once
an hour (`Budgets` decides when, by its clock).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from ..sqlite_file import SQLiteFile
from .base import Counter, KeyExists, KeyRecord, Ledger, LedgerUnavailable

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    name TEXT PRIMARY KEY, key_hash TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0, tokens_per_day INTEGER, tokens_per_month INTEGER) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS usage_counters (
    caller TEXT NOT NULL, period TEXT NOT NULL, used INTEGER NOT NULL, expires_at INTEGER NOT NULL,
    PRIMARY KEY (caller, period)) WITHOUT ROWID;
"""
_COLUMNS = "name, key_hash, created_at, disabled, tokens_per_day, tokens_per_month"


def _record(row: tuple[str, str, str, int, int | None, int | None]) -> KeyRecord:
    name, key_hash, created_at, disabled, per_day, per_month = row
    return KeyRecord(name, key_hash, created_at, bool(disabled), per_day, per_month)


class SQLiteLedger(Ledger):
    workers = 1  # the one connection is used by one thread

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._file = SQLiteFile(path, SCHEMA)

    def _db(self) -> sqlite3.Connection:
        try:
            return self._file.connection()
        except (OSError, sqlite3.Error) as error:
            raise LedgerUnavailable(f"The usage store could not be opened: {error}") from None

    def close(self) -> None:
        super().close()
        self._file.close()

    def create_key(self, record: KeyRecord) -> None:
        try:
            self._db().execute(
                f"INSERT INTO api_keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",  # noqa: S608 (constant columns)
                (
                    record.name,
                    record.key_hash,
                    record.created_at,
                    int(record.disabled),
                    record.tokens_per_day,
                    record.tokens_per_month,
                ),
            )
        except sqlite3.IntegrityError:
            raise KeyExists(f"A key named {record.name!r} exists already.") from None

    def key_by_hash(self, key_hash: str) -> KeyRecord | None:
        row = self._db().execute(f"SELECT {_COLUMNS} FROM api_keys WHERE key_hash = ?", (key_hash,)).fetchone()  # noqa: S608
        return None if row is None else _record(row)

    def all_keys(self) -> list[KeyRecord]:
        rows = self._db().execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY name").fetchall()  # noqa: S608
        return [_record(row) for row in rows]

    def set_disabled(self, name: str, disabled: bool) -> bool:
        cursor = self._db().execute("UPDATE api_keys SET disabled = ? WHERE name = ?", (int(disabled), name))
        return cursor.rowcount == 1

    def delete_key(self, name: str) -> bool:
        return self._db().execute("DELETE FROM api_keys WHERE name = ?", (name,)).rowcount == 1

    def reserve(self, counters: Sequence[Counter], amount: int) -> Counter | None:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            for counter in counters:
                db.execute(
                    "INSERT OR IGNORE INTO usage_counters (caller, period, used, expires_at) VALUES (?, ?, 0, ?)",
                    (counter.caller, counter.window, counter.expires_at),
                )
                updated = db.execute(
                    "UPDATE usage_counters SET used = used + ? WHERE caller = ? AND period = ?"
                    " AND (? IS NULL OR used + ? <= ?)",
                    (amount, counter.caller, counter.window, counter.limit, amount, counter.limit),
                )
                if updated.rowcount != 1:
                    db.execute("ROLLBACK")
                    return counter
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return None

    def adjust(self, counters: Sequence[Counter], delta: int) -> None:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            for counter in counters:
                db.execute(
                    "INSERT INTO usage_counters (caller, period, used, expires_at) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (caller, period) DO UPDATE SET used = used + excluded.used",
                    (counter.caller, counter.window, delta, counter.expires_at),
                )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def used(self, caller: str, windows: Sequence[str]) -> dict[str, int]:
        found = dict.fromkeys(windows, 0)
        marks = ", ".join("?" for _ in windows)
        rows = self._db().execute(
            f"SELECT period, used FROM usage_counters WHERE caller = ? AND period IN ({marks})",  # noqa: S608
            (caller, *windows),
        )
        for window, used in rows:
            found[window] = used
        return found

    def purge(self, before: int) -> None:
        self._db().execute("DELETE FROM usage_counters WHERE expires_at < ?", (before,))
