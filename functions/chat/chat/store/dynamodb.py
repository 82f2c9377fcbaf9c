"""The Lambda backend: one DynamoDB table (template.yaml's `ChatTable`) for all of the service's state.

Keys are generic strings, `pk` and `sk`, prefixed by item type so other kinds of
records share the table without colliding (conversations use `CONV#`; add your own
prefix). The attribute `expires_at` (epoch seconds) is the table's TTL. The sparse
index `gsi1` (`gsi1pk`, `gsi1sk`) lists a caller's conversations newest first.

A conversation (`pk = CONV#<owner digest>#<id>`):

    sk = META                       title, created_at, updated_at, gsi1pk = OWNER#<owner digest>,
                                    gsi1sk = <updated_at>#<id>, expires_at (the conversation's expiry)
    sk = LOCK                       turn_id, expires_at (the lock's expiry), stop_requested
    sk = TURN#<seq:08>#0            the user's message of turn <seq>
    sk = TURN#<seq:08>#1#<part:04>  the answer, split over items of at most 350 kB (items stop at 400 kB);
                                    part 0 carries role/status and is written last, so a reader
                                    never sees half an answer
    sk = EVENTS#<seq:08>#<first:08> a resumable answer's events from index <first> (one item per batch,
                                    JSON `events`, `ended_at` on the last); its own short expiry
    sk = FOLLOW#<seq:08>#<slot:04>  a follower's lease on one of the answer's follower slots (expires_at)

Reads of one conversation are one strongly consistent Query. `begin_turn` and
`finish_turn` are each one TransactWriteItems (plus one PutItem per extra 350 kB of
answer); a transaction's token makes boto3's own retries idempotent.

TTL deletes items one by one, so the turns always outlive META: they are written to expire
ITEM_EXPIRY_SLACK after it, and when activity moves META's expiry past the oldest turn's,
`finish_turn` moves every turn's forward again (so at most once per ITEM_EXPIRY_SLACK of activity).

boto3 is imported on first use, not at import: a stateless cold start never pays for it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

from ..usage import Usage
from .base import (
    AnswerEvents,
    Conversation,
    ConversationNotFound,
    ConversationSummary,
    EventBatch,
    Message,
    Page,
    StopResult,
    Store,
    StoreBusy,
    StoreUnavailable,
    TurnEnd,
    TurnStart,
    decode_cursor,
    encode_cursor,
    iso,
    list_position,
    owner_key,
)

INDEX = "gsi1"
PART_BYTES = 350_000
ITEM_EXPIRY_SLACK = 86400
# Why DynamoDB cancels a transaction that may pass if sent again: another transaction on the same item,
# or throttling. botocore retries neither; `_transact` does, this many times.
TRANSIENT = frozenset({"TransactionConflict", "ThrottlingError"})
TRANSACT_ATTEMPTS = 4
_NAMES = {"#t": "turn_id", "#e": "expires_at", "#s": "stop_requested", "#u": "updated_at", "#g": "gsi1sk"}


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _n(value: float) -> dict[str, str]:
    return {"N": repr(value) if isinstance(value, float) else str(value)}


def conversation_pk(owner: str, conversation_id: str) -> str:
    return f"CONV#{owner_key(owner)}#{conversation_id}"


def turn_sk(seq: int, answer_part: int | None = None) -> str:
    return f"TURN#{seq:08d}#0" if answer_part is None else f"TURN#{seq:08d}#1#{answer_part:04d}"


def events_sk(seq: int, first: int) -> str:
    return f"EVENTS#{seq:08d}#{first:08d}"


def split_utf8(text: str, limit: int = PART_BYTES) -> list[str]:
    """Split text into pieces of at most `limit` UTF-8 bytes, never inside a character."""
    data = text.encode()
    parts: list[str] = []
    start = 0
    while start < len(data) or not parts:
        end = min(start + limit, len(data))
        while end < len(data) and (data[end] & 0xC0) == 0x80:
            end -= 1
        parts.append(data[start:end].decode())
        start = end
    return parts


def _usage_attributes(usage: Usage | None) -> dict[str, Any]:
    if usage is None:
        return {}
    return {
        "prompt_tokens": _n(usage.prompt_tokens),
        "completion_tokens": _n(usage.completion_tokens),
        "usage": _s(usage.source),
    }


def _usage_of(item: dict[str, Any]) -> Usage | None:
    if "usage" not in item:
        return None
    source = item["usage"]["S"]
    if source not in ("reported", "estimated", "none"):
        return None
    return Usage(int(item["prompt_tokens"]["N"]), int(item["completion_tokens"]["N"]), source)


class DynamoDBStore(Store):
    workers = 16

    def __init__(self, table: str) -> None:
        super().__init__()
        self.table = table
        self._client: Any = None
        self._guard = threading.Lock()

    def client(self) -> Any:
        """The boto3 client, created on first use (honours AWS_ENDPOINT_URL_DYNAMODB, AWS_REGION...)."""
        with self._guard:
            if self._client is None:
                import boto3
                from botocore.config import Config

                config = Config(
                    connect_timeout=3,
                    read_timeout=10,
                    retries={"mode": "standard", "max_attempts": 3},
                    max_pool_connections=self.workers,  # one per store thread (botocore's default is 10)
                )
                self._client = boto3.session.Session().client("dynamodb", config=config)
            return self._client

    def warm(self) -> None:
        import boto3  # noqa: F401

    def reset(self) -> None:
        """Forget the client (after a SnapStart restore: its credentials and connections are stale)."""
        with self._guard:
            self._client = None

    def _cancellation_codes(self, error: Exception) -> list[str]:
        response: dict[str, Any] = getattr(error, "response", {})
        return [reason.get("Code", "None") for reason in response.get("CancellationReasons", [])]

    def _is(self, error: Exception, code: str) -> bool:
        response: dict[str, Any] = getattr(error, "response", {})
        return bool(response.get("Error", {}).get("Code") == code)

    def _transact(self, items: list[dict[str, Any]], token: str | None = None) -> None:
        """TransactWriteItems, sent again after a short backoff while it is cancelled only for TRANSIENT reasons.

        Each attempt has its own token (boto3's retries of one attempt stay idempotent); the writes
        themselves are idempotent, so a repeated attempt changes nothing more."""
        for attempt in range(TRANSACT_ATTEMPTS):
            request: dict[str, Any] = {"TransactItems": items}
            if token is not None:
                request["ClientRequestToken"] = f"{token}{attempt}"
            try:
                self.client().transact_write_items(**request)
                return
            except Exception as error:
                codes = set(self._cancellation_codes(error)) - {"None"}
                if attempt == TRANSACT_ATTEMPTS - 1 or not codes or not codes <= TRANSIENT:
                    raise
                time.sleep(0.05 * 2**attempt)

    def _items(self, pk: str, *, keys_only: bool = False) -> Iterator[dict[str, Any]]:
        request: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": _s(pk)},
            "ConsistentRead": True,
        }
        if keys_only:
            request["ProjectionExpression"] = "pk, sk, #e"
            request["ExpressionAttributeNames"] = {"#e": "expires_at"}
        while True:
            page = self.client().query(**request)
            yield from page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                return
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _load(self, owner: str, conversation_id: str, now: float) -> Conversation | None:
        meta: dict[str, Any] | None = None
        turns: list[tuple[int, str, dict[str, Any]]] = []
        answers: dict[int, list[str]] = {}
        oldest = None
        for item in self._items(conversation_pk(owner, conversation_id)):
            sk = item["sk"]["S"]
            if sk == "LOCK" or sk.startswith(("EVENTS#", "FOLLOW#")):
                continue
            if sk == "META":
                meta = item
            elif sk.startswith("TURN#"):
                expires = int(item["expires_at"]["N"])
                oldest = expires if oldest is None else min(oldest, expires)
                _, seq_text, kind, *part = sk.split("#")
                seq = int(seq_text)
                if kind == "0":
                    turns.append((seq, "user", item))
                    continue
                answers.setdefault(seq, []).append(item["content"]["S"])
                if part == ["0000"]:
                    turns.append((seq, "assistant", item))
        if meta is None or int(meta["expires_at"]["N"]) <= now:
            return None
        messages = []
        for seq, role, item in turns:
            content = item["content"]["S"] if role == "user" else "".join(answers[seq])
            messages.append(Message(role, content, item["status"]["S"], item["created_at"]["S"], _usage_of(item)))
        summary = ConversationSummary(
            conversation_id, meta["title"]["S"], meta["created_at"]["S"], meta["updated_at"]["S"]
        )
        next_seq = max((seq for seq, _, _ in turns), default=-1) + 1
        return Conversation(
            summary, tuple(messages), next_seq, oldest if oldest is not None else int(meta["expires_at"]["N"])
        )

    def _list(self, owner: str, limit: int, cursor: str | None, now: float) -> Page:
        owner_digest = owner_key(owner)
        request: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": INDEX,
            "KeyConditionExpression": "gsi1pk = :o",
            "FilterExpression": "#e > :now",
            "ExpressionAttributeNames": {"#e": "expires_at"},
            "ExpressionAttributeValues": {":o": _s(f"OWNER#{owner_digest}"), ":now": _n(now)},
            "ScanIndexForward": False,
            "Limit": limit,
        }
        if cursor is not None:
            updated_at, conversation_id = decode_cursor(cursor)
            request["ExclusiveStartKey"] = {
                "pk": _s(f"CONV#{owner_digest}#{conversation_id}"),
                "sk": _s("META"),
                "gsi1pk": _s(f"OWNER#{owner_digest}"),
                "gsi1sk": _s(list_position(updated_at, conversation_id)),
            }
        page = self.client().query(**request)
        summaries = tuple(
            ConversationSummary(
                item["pk"]["S"].rsplit("#", 1)[1],
                item["title"]["S"],
                item["created_at"]["S"],
                item["updated_at"]["S"],
            )
            for item in page.get("Items", [])
        )
        last = page.get("LastEvaluatedKey")
        return Page(summaries, encode_cursor(last["gsi1sk"]["S"]) if last else None)

    def _meta_update(self, pk: str, stamp: str, conversation_id: str, expires_at: int, now: float) -> dict[str, Any]:
        return {
            "TableName": self.table,
            "Key": {"pk": _s(pk), "sk": _s("META")},
            "UpdateExpression": "SET #u = :u, #g = :g, #e = :e",
            "ConditionExpression": "attribute_exists(pk) AND #e > :now",
            "ExpressionAttributeNames": {name: _NAMES[name] for name in ("#u", "#g", "#e")},
            "ExpressionAttributeValues": {
                ":u": _s(stamp),
                ":g": _s(list_position(stamp, conversation_id)),
                ":e": _n(expires_at),
                ":now": _n(now),
            },
        }

    def _begin_turn(self, start: TurnStart) -> None:
        pk = conversation_pk(start.owner, start.conversation_id)
        stamp = iso(start.now)
        lock = {
            "Put": {
                "TableName": self.table,
                "Item": {
                    "pk": _s(pk),
                    "sk": _s("LOCK"),
                    "turn_id": _s(start.turn_id),
                    "expires_at": _n(int(start.lock_until) + 1),
                    "stop_requested": {"BOOL": False},
                },
                "ConditionExpression": "attribute_not_exists(pk) OR #e < :now OR #t = :turn",
                "ExpressionAttributeNames": {"#e": "expires_at", "#t": "turn_id"},
                "ExpressionAttributeValues": {":now": _n(start.now), ":turn": _s(start.turn_id)},
            }
        }
        message = {
            "Put": {
                "TableName": self.table,
                "Item": {
                    "pk": _s(pk),
                    "sk": _s(turn_sk(start.seq)),
                    "role": _s("user"),
                    "content": _s(start.message),
                    "status": _s("complete"),
                    "created_at": _s(stamp),
                    "turn_id": _s(start.turn_id),
                    "expires_at": _n(start.expires_at + ITEM_EXPIRY_SLACK),
                },
                "ConditionExpression": "attribute_not_exists(pk) OR #t = :turn",
                "ExpressionAttributeNames": {"#t": "turn_id"},
                "ExpressionAttributeValues": {":turn": _s(start.turn_id)},
            }
        }
        if start.title is None:
            meta = {"Update": self._meta_update(pk, stamp, start.conversation_id, start.expires_at, start.now)}
        else:
            # Unconditional and idempotent: ids are random, and a repeated first turn keeps the first title.
            meta = {
                "Update": {
                    "TableName": self.table,
                    "Key": {"pk": _s(pk), "sk": _s("META")},
                    "UpdateExpression": "SET #title = if_not_exists(#title, :title),"
                    " #c = if_not_exists(#c, :u), #u = :u, #o = :o, #g = :g, #e = :e",
                    "ExpressionAttributeNames": {
                        "#title": "title",
                        "#c": "created_at",
                        "#u": "updated_at",
                        "#o": "gsi1pk",
                        "#g": "gsi1sk",
                        "#e": "expires_at",
                    },
                    "ExpressionAttributeValues": {
                        ":title": _s(start.title),
                        ":u": _s(stamp),
                        ":o": _s(f"OWNER#{owner_key(start.owner)}"),
                        ":g": _s(list_position(stamp, start.conversation_id)),
                        ":e": _n(start.expires_at),
                    },
                }
            }
        try:
            self.client().transact_write_items(
                TransactItems=[lock, message, meta], ClientRequestToken=f"{start.turn_id}-b"
            )
        except Exception as error:
            if not self._is(error, "TransactionCanceledException"):
                raise
            codes = self._cancellation_codes(error)
            if "ConditionalCheckFailed" not in codes:  # contention or throttling: transient, not a turn in progress
                reason = next((code for code in codes if code != "None"), "TransactionCanceled")
                raise StoreUnavailable(f"The conversation store failed ({reason}); try again.") from None
            lock_code, message_code, meta_code = (codes + ["None"] * 3)[:3]
            if start.title is None and meta_code == "ConditionalCheckFailed":
                raise ConversationNotFound("Conversation not found.") from None
            if message_code == "ConditionalCheckFailed" and lock_code != "ConditionalCheckFailed":
                raise StoreBusy("Another answer was written to this conversation meanwhile; reload it.") from None
            raise StoreBusy("An answer is already in progress in this conversation.") from None

    def _finish_turn(self, end: TurnEnd) -> None:
        pk = conversation_pk(end.owner, end.conversation_id)
        stamp = iso(end.now)
        parts = split_utf8(end.content)
        client = self.client()
        # Extra parts first: part 0 (in the transaction) is what makes the answer visible.
        for number, text in enumerate(parts[1:], start=1):
            client.put_item(
                TableName=self.table,
                Item={
                    "pk": _s(pk),
                    "sk": _s(turn_sk(end.seq, number)),
                    "content": _s(text),
                    "turn_id": _s(end.turn_id),
                    "expires_at": _n(end.expires_at + ITEM_EXPIRY_SLACK),
                },
            )
        answer = {
            "Put": {
                "TableName": self.table,
                "Item": {
                    "pk": _s(pk),
                    "sk": _s(turn_sk(end.seq, 0)),
                    "role": _s("assistant"),
                    "content": _s(parts[0]),
                    "status": _s(end.status),
                    "created_at": _s(stamp),
                    "turn_id": _s(end.turn_id),
                    "expires_at": _n(end.expires_at + ITEM_EXPIRY_SLACK),
                    "parts": _n(len(parts)),
                    **_usage_attributes(end.usage),
                },
            }
        }
        release = {
            "Delete": {
                "TableName": self.table,
                "Key": {"pk": _s(pk), "sk": _s("LOCK")},
                "ConditionExpression": "#t = :turn",
                "ExpressionAttributeNames": {"#t": "turn_id"},
                "ExpressionAttributeValues": {":turn": _s(end.turn_id)},
            }
        }
        meta = {"Update": self._meta_update(pk, stamp, end.conversation_id, end.expires_at, end.now)}
        try:
            try:
                self._transact([answer, release, meta], f"{end.turn_id}-e")
            except Exception as error:
                codes = self._cancellation_codes(error)
                if codes[1:2] != ["ConditionalCheckFailed"] or codes[2:3] == ["ConditionalCheckFailed"]:
                    raise
                # The lock is no longer ours (it expired and was taken, or was released): store the answer anyway.
                self._transact([answer, meta])
        except Exception as error:
            if self._cancellation_codes(error)[-1:] != ["ConditionalCheckFailed"]:
                raise
            # META's check failed: deleted (or expired) meanwhile, it stays gone, with the parts written above.
            for number in range(1, len(parts)):
                client.delete_item(TableName=self.table, Key={"pk": _s(pk), "sk": _s(turn_sk(end.seq, number))})
            return
        if end.refresh_expiry:
            self._refresh_expiry(pk, end.expires_at + ITEM_EXPIRY_SLACK)

    def _refresh_expiry(self, pk: str, expires_at: int) -> None:
        """Move every turn's TTL forward past META's, so an active conversation's first turns do not expire."""
        client = self.client()
        for item in list(self._items(pk, keys_only=True)):
            if item["sk"]["S"] == "LOCK" or item["sk"]["S"].startswith(("EVENTS#", "FOLLOW#")):
                continue  # the lock, resumable events and follower leases keep their own, shorter expiry
            if int(item.get("expires_at", {"N": "0"})["N"]) >= expires_at:
                continue
            try:
                client.update_item(
                    TableName=self.table,
                    Key={"pk": item["pk"], "sk": item["sk"]},
                    UpdateExpression="SET #e = :e",
                    ConditionExpression="attribute_exists(pk)",
                    ExpressionAttributeNames={"#e": "expires_at"},
                    ExpressionAttributeValues={":e": _n(expires_at)},
                )
            except Exception as error:
                if not self._is(error, "ConditionalCheckFailedException"):
                    raise

    def _exists(self, pk: str, now: float) -> bool:
        item = (
            self.client()
            .get_item(
                TableName=self.table,
                Key={"pk": _s(pk), "sk": _s("META")},
                ConsistentRead=True,
                ProjectionExpression="#e",
                ExpressionAttributeNames={"#e": "expires_at"},
            )
            .get("Item")
        )
        return item is not None and int(item["expires_at"]["N"]) > now

    def _request_stop(self, owner: str, conversation_id: str, now: float) -> StopResult:
        pk = conversation_pk(owner, conversation_id)
        if not self._exists(pk, now):
            return "missing"
        try:
            self.client().update_item(
                TableName=self.table,
                Key={"pk": _s(pk), "sk": _s("LOCK")},
                UpdateExpression="SET #s = :yes",
                ConditionExpression="attribute_exists(pk) AND #e > :now",
                ExpressionAttributeNames={"#s": "stop_requested", "#e": "expires_at"},
                ExpressionAttributeValues={":yes": {"BOOL": True}, ":now": _n(now)},
            )
        except Exception as error:
            if self._is(error, "ConditionalCheckFailedException"):
                return "idle"
            raise
        return "stopping"

    def _stop_requested(self, owner: str, conversation_id: str, turn_id: str) -> bool:
        item = (
            self.client()
            .get_item(
                TableName=self.table,
                Key={"pk": _s(conversation_pk(owner, conversation_id)), "sk": _s("LOCK")},
                ConsistentRead=True,
                ProjectionExpression="#t, #s",
                ExpressionAttributeNames={"#t": "turn_id", "#s": "stop_requested"},
            )
            .get("Item")
        )
        return item is None or item["turn_id"]["S"] != turn_id or bool(item["stop_requested"]["BOOL"])

    def _delete(self, owner: str, conversation_id: str, now: float) -> bool:
        pk = conversation_pk(owner, conversation_id)
        if not self._exists(pk, now):
            return False
        keys = [{"pk": item["pk"], "sk": item["sk"]} for item in self._items(pk, keys_only=True)]
        client = self.client()
        for first in range(0, len(keys), 25):
            requests = [{"DeleteRequest": {"Key": key}} for key in keys[first : first + 25]]
            pending: dict[str, Any] = {self.table: requests}
            for attempt in range(8):
                pending = client.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}
                if not pending:
                    break
                time.sleep(0.05 * 2**attempt)  # throttled: back off, as AWS asks for unprocessed items
            else:
                raise StoreUnavailable("The conversation store is throttling deletes; try again.")
        return True

    def _write_events(self, batch: EventBatch) -> None:
        item = {
            "pk": _s(conversation_pk(batch.owner, batch.conversation_id)),
            "sk": _s(events_sk(batch.seq, batch.first)),
            "events": _s(json.dumps(batch.events, ensure_ascii=False)),
            "expires_at": _n(batch.expires_at),
        }
        if batch.ended_at is not None:
            item["ended_at"] = _n(batch.ended_at)
        self.client().put_item(TableName=self.table, Item=item)

    def _read_events(
        self, owner: str, conversation_id: str, seq: int | None, since: int, now: float, check: bool
    ) -> AnswerEvents | None:
        pk = conversation_pk(owner, conversation_id)
        if check and not self._exists(pk, now):
            return None
        client = self.client()
        if seq is None:
            newest = client.query(
                TableName=self.table,
                KeyConditionExpression="pk = :pk AND begins_with(sk, :events)",
                FilterExpression="#e > :now",
                ExpressionAttributeNames={"#e": "expires_at"},
                ExpressionAttributeValues={":pk": _s(pk), ":events": _s("EVENTS#"), ":now": _n(now)},
                ProjectionExpression="sk",
                ScanIndexForward=False,
                ConsistentRead=True,
                Limit=1,
            ).get("Items", [])
            if not newest:
                return AnswerEvents(None, ())
            seq = int(newest[0]["sk"]["S"].split("#")[1])
        request: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "pk = :pk AND sk BETWEEN :low AND :high",
            "ExpressionAttributeValues": {
                ":pk": _s(pk),
                ":low": _s(events_sk(seq, since)),
                ":high": _s(events_sk(seq, 99_999_999)),
            },
            "ConsistentRead": True,
        }
        batches = []
        while True:
            page = client.query(**request)
            for item in page.get("Items", []):
                if int(item["expires_at"]["N"]) <= now:
                    continue
                events = tuple((kind, data) for kind, data in json.loads(item["events"]["S"]))
                ended = float(item["ended_at"]["N"]) if "ended_at" in item else None
                first = int(item["sk"]["S"].rsplit("#", 1)[1])
                batches.append(
                    EventBatch(owner, conversation_id, seq, first, events, int(item["expires_at"]["N"]), ended)
                )
            if "LastEvaluatedKey" not in page:
                return AnswerEvents(seq, tuple(batches))
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _take_follower_slot(
        self, owner: str, conversation_id: str, seq: int, slots: int, until: float, now: float
    ) -> int | None:
        pk = conversation_pk(owner, conversation_id)
        client = self.client()
        for slot in range(slots):
            try:
                client.put_item(
                    TableName=self.table,
                    Item={"pk": _s(pk), "sk": _s(f"FOLLOW#{seq:08d}#{slot:04d}"), "expires_at": _n(int(until) + 1)},
                    ConditionExpression="attribute_not_exists(pk) OR #e < :now",
                    ExpressionAttributeNames={"#e": "expires_at"},
                    ExpressionAttributeValues={":now": _n(now)},
                )
            except Exception as error:
                if self._is(error, "ConditionalCheckFailedException"):
                    continue
                raise
            return slot
        return None

    def _release_follower_slot(self, owner: str, conversation_id: str, seq: int, slot: int) -> None:
        self.client().delete_item(
            TableName=self.table,
            Key={"pk": _s(conversation_pk(owner, conversation_id)), "sk": _s(f"FOLLOW#{seq:08d}#{slot:04d}")},
        )
