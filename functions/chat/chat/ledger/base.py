"""The ledger's interface: API key records (hashes only) and token counters with conditional reservations.

It lives in the same store as conversations (the same SQLite file, the same DynamoDB
table under its own key prefixes) but behind its own small interface, so budgets do
not depend on conversations being switched on.

Semantics every backend keeps (the behavioural suite checks both):

- `reserve` charges an amount to several counters (the caller's day and month, the
  deployment's day) only if none of them would pass its limit; when one would, nothing
  stays charged and that counter is returned. Concurrent reservations can never take a
  counter past its limit.
- `adjust` adds a signed amount to counters unconditionally (reconciliation to the
  real usage, a refund).
- Key records are found by the key's hash, listed by name; names are unique.

Backends implement blocking methods; the async ones run them on the ledger's threads.
"""

from __future__ import annotations

import abc
import asyncio
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


class LedgerError(Exception):
    """Base of the ledger's errors; the message is safe to show a client or an operator."""


class LedgerUnavailable(LedgerError):
    """The backend failed or could not be reached: 503."""


class KeyExists(LedgerError):
    """A key with this name exists already."""


@dataclass(frozen=True)
class KeyRecord:
    """An API key as stored: its name, the SHA-256 of the key (never the key), state and budgets."""

    name: str
    key_hash: str
    created_at: str
    disabled: bool = False
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None


@dataclass(frozen=True)
class Counter:
    """One budget window of one caller (or of the deployment), and its limit (None: count only)."""

    caller: str
    window: str
    """`day:YYYY-MM-DD` or `month:YYYY-MM`, in UTC."""
    limit: int | None
    expires_at: int
    """Epoch seconds after which the counter may be purged (well after its window closed)."""


class Ledger(abc.ABC):
    workers = 8

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None

    async def _run(self, function: Callable[[], T]) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="ledger")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._guarded, function)

    @staticmethod
    def _guarded(function: Callable[[], T]) -> T:
        """Any failure of the backend itself becomes LedgerUnavailable, named but without details."""
        try:
            return function()
        except LedgerError:
            raise
        except Exception as error:
            raise LedgerUnavailable(f"The usage store failed ({type(error).__name__}).") from error

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # -- async, for the app

    async def find_key(self, key_hash: str) -> KeyRecord | None:
        return await self._run(functools.partial(self.key_by_hash, key_hash))

    async def reserve_async(self, counters: Sequence[Counter], amount: int) -> Counter | None:
        return await self._run(functools.partial(self.reserve, counters, amount))

    async def adjust_async(self, counters: Sequence[Counter], delta: int) -> None:
        await self._run(functools.partial(self.adjust, counters, delta))

    async def purge_async(self, before: int) -> None:
        await self._run(functools.partial(self.purge, before))

    async def used_async(self, caller: str, windows: Sequence[str]) -> dict[str, int]:
        return await self._run(functools.partial(self.used, caller, windows))

    # -- blocking, for the backends (and the operator's tool, which has no event loop to spare)

    @abc.abstractmethod
    def create_key(self, record: KeyRecord) -> None:
        """Store a new key record (KeyExists when the name is taken)."""

    @abc.abstractmethod
    def key_by_hash(self, key_hash: str) -> KeyRecord | None: ...

    @abc.abstractmethod
    def all_keys(self) -> list[KeyRecord]:
        """Every key record, by name."""

    @abc.abstractmethod
    def set_disabled(self, name: str, disabled: bool) -> bool:
        """False when there is no such key."""

    @abc.abstractmethod
    def delete_key(self, name: str) -> bool:
        """False when there is no such key."""

    @abc.abstractmethod
    def reserve(self, counters: Sequence[Counter], amount: int) -> Counter | None:
        """Charge `amount` to every counter, or to none: returns the counter that refused, else None."""

    @abc.abstractmethod
    def adjust(self, counters: Sequence[Counter], delta: int) -> None:
        """Add `delta` (negative to refund) to every counter, unconditionally."""

    @abc.abstractmethod
    def purge(self, before: int) -> None:
        """Remove counters that expired before `before` (epoch seconds)."""

    @abc.abstractmethod
    def used(self, caller: str, windows: Sequence[str]) -> dict[str, int]:
        """Tokens counted so far in each window (0 for a window with no counter yet)."""
