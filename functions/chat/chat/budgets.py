"""Token budgets: per caller per UTC day and month, plus one deployment-wide UTC day.

Before the model is called, a request reserves the most it can use (the prompt's
upper bound, `usage.prompt_bound`: one token per UTF-8 byte plus the framing, plus
`OPENAI_MAX_TOKENS`, or `CHAT_RESERVE_COMPLETION_TOKENS` when no cap is sent) on every
counter at once, through the ledger's conditional update; a counter that would pass
its limit refuses the request (429). When the stream ends, the counters are reconciled
to what the request really used.

The bound: a caller's counter can end above its limit only by what admitted requests
used beyond their reservation, i.e. the sum, over requests admitted together, of
(actual - reserved) where positive. With `OPENAI_MAX_TOKENS` set nothing can exceed its
part (the prompt's part is an upper bound); without it, answers longer than
`CHAT_RESERVE_COMPLETION_TOKENS` can.
"""

from __future__ import annotations

import asyncio
import datetime
import math
from collections.abc import Callable
from dataclasses import dataclass

from .ledger import Counter, Ledger

DEPLOYMENT = "*"
"""The deployment-wide counter's caller: no key name or identity can be `*`."""
DAY_COUNTER_DAYS = 40
MONTH_COUNTER_DAYS = 400
PURGE_INTERVAL = datetime.timedelta(hours=1)


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def iso(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Window:
    name: str
    """`day` or `month`."""
    key: str
    resets_at: datetime.datetime


def windows(now: datetime.datetime) -> tuple[Window, Window]:
    """The UTC day and the UTC month `now` falls in."""
    day_start = datetime.datetime(now.year, now.month, now.day, tzinfo=datetime.UTC)
    next_month = datetime.datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=datetime.UTC)
    return (
        Window("day", f"day:{day_start:%Y-%m-%d}", day_start + datetime.timedelta(days=1)),
        Window("month", f"month:{now:%Y-%m}", next_month),
    )


@dataclass(frozen=True)
class Limits:
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None


class OverBudget(Exception):
    """A budget refused the request: 429, with Retry-After unless the request can never fit (None)."""

    def __init__(self, message: str, retry_after: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True)
class Reservation:
    reserved: tuple[Counter, ...]
    """The counters with a limit, charged `amount` up front."""
    counted: tuple[Counter, ...]
    """The counters without one: charged what was used, at the end."""
    amount: int


def _budget(counter: Counter, now: datetime.datetime) -> str:
    """`your daily budget of 2000 tokens per UTC day`, or the deployment's, or monthly."""
    window = next(window for window in windows(now) if window.key == counter.window)
    whose = "the deployment's" if counter.caller == DEPLOYMENT else "your"
    period = "daily" if window.name == "day" else "monthly"
    return f"{whose} {period} budget of {counter.limit} tokens per UTC {window.name}"


class Budgets:
    def __init__(
        self,
        ledger: Ledger,
        deployment_tokens_per_day: int | None,
        clock: Callable[[], datetime.datetime] = utc_now,
    ) -> None:
        self._ledger = ledger
        self._deployment_per_day = deployment_tokens_per_day
        self._clock = clock
        self._purged: datetime.datetime | None = None

    def _counters(self, caller: str, limits: Limits, now: datetime.datetime) -> list[Counter]:
        day, month = windows(now)
        expires = int(now.timestamp())
        counters = [
            Counter(caller, day.key, limits.tokens_per_day, expires + DAY_COUNTER_DAYS * 86400),
            Counter(caller, month.key, limits.tokens_per_month, expires + MONTH_COUNTER_DAYS * 86400),
        ]
        if self._deployment_per_day is not None:
            counters.append(Counter(DEPLOYMENT, day.key, self._deployment_per_day, expires + DAY_COUNTER_DAYS * 86400))
        return counters

    async def reserve(self, caller: str, limits: Limits, amount: int) -> Reservation:
        """Reserve `amount` tokens on every counter with a limit, or raise OverBudget naming the one that refused.

        Only counters with a limit are written before the model is called (one conditional
        update each); the others are counted when the stream ends. A request bigger than a
        whole budget is refused without a write: no wait would let it in."""
        now = self._clock()
        counters = self._counters(caller, limits, now)
        reserved = tuple(counter for counter in counters if counter.limit is not None)
        counted = tuple(counter for counter in counters if counter.limit is None)
        if not reserved:
            return Reservation(reserved, counted, 0)
        too_small = next((counter for counter in reserved if amount > (counter.limit or 0)), None)
        if too_small is not None:
            message = (
                f"This request could use up to {amount} tokens, more than {_budget(too_small, now)}: "
                "it cannot fit even after the window resets, so retrying will not help. "
                "Send a shorter message or history, or ask for a bigger budget."
            )
            raise OverBudget(message, None)
        refused = await self._ledger.reserve_async(reserved, amount)
        if refused is None:
            return Reservation(reserved, counted, amount)
        resets_at = next(window for window in windows(now) if window.key == refused.window).resets_at
        message = (
            f"Token budget exceeded: this request could use up to {amount} tokens, which would exceed what is "
            f"left of {_budget(refused, now)}; it resets at {iso(resets_at)}."
        )
        raise OverBudget(message, max(1, math.ceil((resets_at - now).total_seconds())))

    async def settle(self, reservation: Reservation, used: int) -> None:
        """Reconcile the counters to the tokens the request really used."""
        updates = []
        if reservation.reserved and used != reservation.amount:
            updates.append(self._ledger.adjust_async(reservation.reserved, used - reservation.amount))
        if reservation.counted and used:
            updates.append(self._ledger.adjust_async(reservation.counted, used))
        await asyncio.gather(*updates)
        now = self._clock()
        if self._purged is None or now - self._purged >= PURGE_INTERVAL:
            self._purged = now
            await self._ledger.purge_async(int(now.timestamp()))

    async def report(self, caller: str, limits: Limits) -> dict[str, dict[str, object]]:
        """`GET /api/usage`: used, limit, remaining and resets_at for the caller's day and month."""
        day, month = windows(self._clock())
        used = await self._ledger.used_async(caller, [day.key, month.key])
        report: dict[str, dict[str, object]] = {}
        for window, limit in ((day, limits.tokens_per_day), (month, limits.tokens_per_month)):
            spent = used[window.key]
            report[window.name] = {
                "used": spent,
                "limit": limit,
                "remaining": None if limit is None else max(0, limit - spent),
                "resets_at": iso(window.resets_at),
            }
        return report
