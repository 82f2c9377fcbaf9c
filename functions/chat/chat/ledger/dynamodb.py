"""The Lambda ledger: items in the store's one DynamoDB table, under their own key prefixes.

    pk = APIKEY#<sha256 of the key>   sk = APIKEY        name, created_at, disabled, tokens_per_day/month
    pk = APIKEYS                      sk = NAME#<name>   the same fields and key_hash (listing by name)
    pk = USAGE#<digest of caller>     sk = day:<date> | month:<yyyy-mm>
                                                         used, caller, expires_at (the table's TTL)

A key lookup is one GetItem. A reservation is one conditional UpdateItem per counter
(`used <= limit - amount`), in order; when one refuses, the counters already charged
are refunded. So a counter never passes its limit, hot counters (the deployment's
day) simply serialise instead of failing the way concurrent transactions on one item
do, and each counter costs one write. The price: between a charge and its refund, a
concurrent request may be refused although it would have fitted (never admitted
wrongly). Creating, disabling and deleting a key touch two items in one transaction.
Counter writes are additions, not idempotent: the SDK's retry after a lost response
applies one twice (a reservation over-charges; a reconciliation's refund under-charges).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import threading
from collections.abc import Callable, Sequence
from typing import Any

from .base import Counter, KeyExists, KeyRecord, Ledger

KEY_LIST = "APIKEYS"
_NAMES = {"#u": "used", "#c": "caller", "#e": "expires_at"}


def key_pk(key_hash: str) -> str:
    return f"APIKEY#{key_hash}"


def usage_pk(caller: str) -> str:
    """A digest, so a caller's text (an IAM ARN can be 2 KB) never becomes a key."""
    return f"USAGE#{hashlib.sha256(caller.encode()).hexdigest()[:32]}"


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _n(value: int) -> dict[str, str]:
    return {"N": str(value)}


def _fields(record: KeyRecord) -> dict[str, Any]:
    item: dict[str, Any] = {
        "name": _s(record.name),
        "key_hash": _s(record.key_hash),
        "created_at": _s(record.created_at),
        "disabled": {"BOOL": record.disabled},
    }
    if record.tokens_per_day is not None:
        item["tokens_per_day"] = _n(record.tokens_per_day)
    if record.tokens_per_month is not None:
        item["tokens_per_month"] = _n(record.tokens_per_month)
    return item


def _record(item: dict[str, Any]) -> KeyRecord:
    def number(name: str) -> int | None:
        return int(item[name]["N"]) if name in item else None

    return KeyRecord(
        name=item["name"]["S"],
        key_hash=item["key_hash"]["S"],
        created_at=item["created_at"]["S"],
        disabled=item["disabled"]["BOOL"],
        tokens_per_day=number("tokens_per_day"),
        tokens_per_month=number("tokens_per_month"),
    )


def _code(error: Exception) -> str:
    response: dict[str, Any] = getattr(error, "response", {})
    return str(response.get("Error", {}).get("Code", ""))


class DynamoDBLedger(Ledger):
    workers = 16

    def __init__(self, table: str, client: Callable[[], Any] | None = None) -> None:
        """`client` shares the conversation store's boto3 client; without it the ledger makes its own."""
        super().__init__()
        self.table = table
        self._shared_client = client
        self._client: Any = None
        self._guard = threading.Lock()

    def client(self) -> Any:
        if self._shared_client is not None:
            return self._shared_client()
        with self._guard:
            if self._client is None:
                import boto3
                from botocore.config import Config

                config = Config(connect_timeout=3, read_timeout=10, retries={"mode": "standard", "max_attempts": 3})
                self._client = boto3.session.Session().client("dynamodb", config=config)
            return self._client

    def reset(self) -> None:
        """Forget an own client (after a SnapStart restore: its credentials and connections are stale)."""
        with self._guard:
            self._client = None

    # -- keys

    def create_key(self, record: KeyRecord) -> None:
        fields = _fields(record)
        absent = "attribute_not_exists(pk)"
        try:
            self.client().transact_write_items(
                TransactItems=[
                    {
                        "Put": {
                            "TableName": self.table,
                            "Item": {"pk": _s(KEY_LIST), "sk": _s(f"NAME#{record.name}"), **fields},
                            "ConditionExpression": absent,
                        }
                    },
                    {
                        "Put": {
                            "TableName": self.table,
                            "Item": {"pk": _s(key_pk(record.key_hash)), "sk": _s("APIKEY"), **fields},
                            "ConditionExpression": absent,
                        }
                    },
                ]
            )
        except Exception as error:
            if _code(error) == "TransactionCanceledException":
                raise KeyExists(f"A key named {record.name!r} exists already.") from None
            raise

    def key_by_hash(self, key_hash: str) -> KeyRecord | None:
        response = self.client().get_item(
            TableName=self.table, Key={"pk": _s(key_pk(key_hash)), "sk": _s("APIKEY")}, ConsistentRead=True
        )
        item = response.get("Item")
        return None if item is None else _record(item)

    def all_keys(self) -> list[KeyRecord]:
        request: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": _s(KEY_LIST)},
            "ConsistentRead": True,
        }
        found = []
        while True:
            page = self.client().query(**request)
            found += [_record(item) for item in page.get("Items", [])]
            if "LastEvaluatedKey" not in page:
                return sorted(found, key=lambda record: record.name)
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _by_name(self, name: str) -> KeyRecord | None:
        response = self.client().get_item(
            TableName=self.table, Key={"pk": _s(KEY_LIST), "sk": _s(f"NAME#{name}")}, ConsistentRead=True
        )
        item = response.get("Item")
        return None if item is None else _record(item)

    def _both(self, record: KeyRecord) -> list[dict[str, Any]]:
        return [
            {"pk": _s(KEY_LIST), "sk": _s(f"NAME#{record.name}")},
            {"pk": _s(key_pk(record.key_hash)), "sk": _s("APIKEY")},
        ]

    def set_disabled(self, name: str, disabled: bool) -> bool:
        record = self._by_name(name)
        if record is None:
            return False
        self.client().transact_write_items(
            TransactItems=[
                {
                    "Update": {
                        "TableName": self.table,
                        "Key": key,
                        "UpdateExpression": "SET disabled = :d",
                        "ConditionExpression": "attribute_exists(pk)",
                        "ExpressionAttributeValues": {":d": {"BOOL": disabled}},
                    }
                }
                for key in self._both(record)
            ]
        )
        return True

    def delete_key(self, name: str) -> bool:
        record = self._by_name(name)
        if record is None:
            return False
        self.client().transact_write_items(
            TransactItems=[{"Delete": {"TableName": self.table, "Key": key}} for key in self._both(record)]
        )
        return True

    # -- counters

    def _charge(self, counter: Counter, amount: int, *, conditional: bool) -> bool:
        request: dict[str, Any] = {
            "TableName": self.table,
            "Key": {"pk": _s(usage_pk(counter.caller)), "sk": _s(counter.window)},
            "UpdateExpression": "SET #u = if_not_exists(#u, :zero) + :n, #c = :c, #e = :e",
            "ExpressionAttributeNames": _NAMES,
            "ExpressionAttributeValues": {
                ":zero": _n(0),
                ":n": _n(amount),
                ":c": _s(counter.caller),
                ":e": _n(counter.expires_at),
            },
        }
        if conditional and counter.limit is not None:
            request["ConditionExpression"] = "attribute_not_exists(#u) OR #u <= :room"
            request["ExpressionAttributeValues"][":room"] = _n(counter.limit - amount)
        try:
            self.client().update_item(**request)
        except Exception as error:
            if _code(error) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def reserve(self, counters: Sequence[Counter], amount: int) -> Counter | None:
        charged: list[Counter] = []
        try:
            for counter in counters:
                fits = counter.limit is None or amount <= counter.limit
                if not fits or not self._charge(counter, amount, conditional=True):
                    self.adjust(charged, -amount)
                    return counter
                charged.append(counter)
        except Exception:
            self.adjust(charged, -amount)
            raise
        return None

    async def adjust_async(self, counters: Sequence[Counter], delta: int) -> None:
        """One UpdateItem per counter, all at once: the stream's last event waits for one round trip."""
        await asyncio.gather(*(self._run(functools.partial(self.adjust, [counter], delta)) for counter in counters))

    def adjust(self, counters: Sequence[Counter], delta: int) -> None:
        for counter in counters:
            self._charge(counter, delta, conditional=False)

    def purge(self, before: int) -> None:
        """Nothing to do: the table's TTL (`expires_at`) removes expired counters."""

    def used(self, caller: str, windows: Sequence[str]) -> dict[str, int]:
        found = {}
        for window in windows:
            response = self.client().get_item(
                TableName=self.table,
                Key={"pk": _s(usage_pk(caller)), "sk": _s(window)},
                ProjectionExpression="#u",
                ExpressionAttributeNames={"#u": "used"},
                ConsistentRead=True,
            )
            found[window] = int(response.get("Item", {}).get("used", {"N": "0"})["N"])
        return found
