"""Keys and token counters, one suite run against both backends: SQLite on a temp file, and
DynamoDB through moto in process (AWS itself cannot run here; the table comes from template.yaml).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chat.keys import KeyLookup, key_hash, new_key
from chat.ledger import Counter, KeyExists, KeyRecord, Ledger, open_ledger
from chat.ledger.sqlite import SQLiteLedger
from tests.harness import dynamodb

DAY = "day:2026-11-30"
MONTH = "month:2026-11"
EXPIRES = 1_900_000_000


@pytest.fixture
def opened(store_url: str) -> Iterator[Callable[[], Ledger]]:
    """A factory of ledgers on one store (several instances = several processes' connections)."""
    made: list[Ledger] = []

    def one() -> Ledger:
        ledger = open_ledger(store_url)
        assert ledger is not None
        made.append(ledger)
        return ledger

    yield one
    for ledger in made:
        ledger.close()


@pytest.fixture
def ledger(opened: Callable[[], Ledger]) -> Ledger:
    return opened()


def record(name: str, key: str | None = None, **fields: object) -> KeyRecord:
    return KeyRecord(name=name, key_hash=key_hash(key or new_key()), created_at="2026-11-30T23:00:00Z", **fields)  # type: ignore[arg-type]


def test_keys_are_created_found_by_hash_listed_disabled_and_deleted(ledger: Ledger) -> None:
    key = new_key()
    alice = record("alice", key, tokens_per_day=1000)
    ledger.create_key(alice)
    ledger.create_key(record("bob"))
    assert ledger.key_by_hash(key_hash(key)) == alice
    assert ledger.key_by_hash(key_hash(new_key())) is None
    assert [found.name for found in ledger.all_keys()] == ["alice", "bob"]
    assert ledger.set_disabled("alice", True)
    assert ledger.key_by_hash(key_hash(key)) == KeyRecord(**{**alice.__dict__, "disabled": True})
    assert ledger.all_keys()[0].disabled
    assert ledger.set_disabled("alice", False)
    assert not ledger.key_by_hash(key_hash(key)).disabled  # type: ignore[union-attr]
    assert not ledger.set_disabled("carol", True)
    assert ledger.delete_key("alice")
    assert ledger.key_by_hash(key_hash(key)) is None
    assert [found.name for found in ledger.all_keys()] == ["bob"]
    assert not ledger.delete_key("alice")


def test_a_name_is_unique(ledger: Ledger) -> None:
    ledger.create_key(record("alice"))
    with pytest.raises(KeyExists):
        ledger.create_key(record("alice"))
    assert len(ledger.all_keys()) == 1


def counters(day_limit: int | None = None, month_limit: int | None = None, caller: str = "alice") -> list[Counter]:
    return [Counter(caller, DAY, day_limit, EXPIRES), Counter(caller, MONTH, month_limit, EXPIRES)]


def test_a_reservation_charges_every_counter_or_none(ledger: Ledger) -> None:
    assert ledger.reserve(counters(1000, 1500), 600) is None
    assert ledger.used("alice", [DAY, MONTH]) == {DAY: 600, MONTH: 600}
    refused = ledger.reserve(counters(1000, 1500), 500)
    assert refused is not None
    assert refused.window == DAY
    assert ledger.used("alice", [DAY, MONTH]) == {DAY: 600, MONTH: 600}
    # The day admits it, the month does not: the day's charge is taken back.
    refused = ledger.reserve(counters(5000, 1000), 500)
    assert refused is not None
    assert refused.window == MONTH
    assert ledger.used("alice", [DAY, MONTH]) == {DAY: 600, MONTH: 600}
    assert ledger.reserve(counters(1000, 1500), 400) is None  # exactly up to the limit
    assert ledger.used("alice", [DAY, MONTH]) == {DAY: 1000, MONTH: 1000}


def test_an_amount_over_the_whole_limit_is_refused_on_a_fresh_counter(ledger: Ledger) -> None:
    refused = ledger.reserve(counters(100), 101)
    assert refused is not None
    assert refused.window == DAY
    assert ledger.used("alice", [DAY, MONTH]) == {DAY: 0, MONTH: 0}


def test_adjust_reconciles_both_ways_and_counts_without_a_limit(ledger: Ledger) -> None:
    assert ledger.reserve(counters(1000), 700) is None
    ledger.adjust(counters(1000), -650)  # the request used 50
    assert ledger.used("alice", [DAY, MONTH]) == {DAY: 50, MONTH: 50}
    ledger.adjust(counters(), 30)
    assert ledger.used("alice", [DAY, MONTH]) == {DAY: 80, MONTH: 80}
    assert ledger.used("bob", [DAY]) == {DAY: 0}


def test_concurrent_reservations_never_pass_the_limit(opened: Callable[[], Ledger]) -> None:
    """50 reservations at once: on SQLite each from its own connection (as separate processes would
    be), on DynamoDB through one thread-safe boto3 client (as one Lambda instance's threads would)."""
    first = opened()
    ledgers = [opened() if isinstance(first, SQLiteLedger) else first for _ in range(50)]
    admitted: list[bool] = []
    gate = threading.Barrier(50)

    def one(ledger: Ledger) -> None:
        gate.wait()
        admitted.append(ledger.reserve(counters(1000, 5000), 100) is None)

    threads = [threading.Thread(target=one, args=(ledger,)) for ledger in ledgers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert (admitted.count(True), admitted.count(False)) == (10, 40)
    assert ledgers[0].used("alice", [DAY, MONTH]) == {DAY: 1000, MONTH: 1000}


def test_the_store_holds_the_hash_not_the_key(ledger: Ledger, tmp_path: Path) -> None:
    key = new_key()
    ledger.create_key(record("alice", key))
    if isinstance(ledger, SQLiteLedger):
        stored = b"".join(path.read_bytes() for path in (tmp_path / "data").iterdir())
        with sqlite3.connect(tmp_path / "data" / "chat.sqlite3") as db:
            stored += repr(db.execute("SELECT * FROM api_keys").fetchall()).encode()
    else:
        stored = repr(dynamodb.client().scan(TableName="chat")["Items"]).encode()
    assert key_hash(key).encode() in stored
    secret = key.removeprefix("csk_")
    assert not [secret[i : i + 8] for i in range(len(secret) - 7) if secret[i : i + 8].encode() in stored]


def test_lookups_are_cached_found_or_not_for_the_cache_time(ledger: Ledger) -> None:
    """Positive and negative: a key made, disabled or deleted is seen once its cached lookup expires."""
    now = [0.0]
    lookup = KeyLookup(ledger, ttl=30, clock=lambda: now[0])
    key = new_key()

    def find() -> KeyRecord | None:
        return asyncio.run(lookup.find(key))

    assert find() is None
    ledger.create_key(record("late", key))
    now[0] = 29.0
    assert find() is None  # the miss is still cached
    now[0] = 30.5
    assert find() is not None
    ledger.set_disabled("late", True)
    now[0] = 60.0
    assert find() is not None  # the hit is still cached
    now[0] = 61.0
    assert find() is None
    assert asyncio.run(lookup.find("csk_" + key[4:][::-1])) is None
