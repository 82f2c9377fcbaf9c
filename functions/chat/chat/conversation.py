"""A stored conversation on the request path: what the model sees, and the writes of one turn.

`start_turn` does the one store read a continued conversation needs (its turns) and
fits them to the token budget. The `ConversationTurn` it returns is what the relay
calls: `begin` (lock + user turn, one atomic write, run while the upstream request
opens), `add` per relayed chunk, `wait_for_stop` (polls the stop flag), and `finish`
(the answer with its status, which releases the lock) before the stream's last event.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from .chat_request import BadRequest, ChatRequest, Turn
from .config import Settings
from .observability import logger
from .store.base import Store, StoreError, TurnEnd, TurnStart, new_id, valid_id
from .usage import Usage, estimate_messages

HEADER = b"x-conversation-id"
NOT_FOUND = "Conversation not found."
STOPPED = "The answer was stopped."
TITLE_CHARS = 80
DAY = 86400


def title_of(message: str) -> str:
    """The conversation's title: its first message on one line, cut at a word near 80 characters."""
    line = " ".join(message.split())
    if len(line) <= TITLE_CHARS:
        return line
    cut = line[:TITLE_CHARS].rsplit(" ", 1)[0] or line[:TITLE_CHARS]
    return cut + "…"


def _cost(turn: Turn) -> int:
    return estimate_messages([{"role": turn.role, "content": turn.content}])


def fit_history(turns: list[Turn], message: str, budget: int) -> tuple[Turn, ...]:
    """The newest turns that fit `budget` estimated tokens with the message; system turns always stay.

    Whole turns are dropped, oldest first, never cut; a message over the budget on its
    own is refused, since nothing could be sent."""
    used = _cost(Turn("user", message))
    if used > budget:
        raise BadRequest(
            f"The message is about {used} tokens; a conversation's context is limited to {budget} "
            "(CHAT_HISTORY_TOKEN_BUDGET). Send a shorter message."
        )
    system = [turn for turn in turns if turn.role == "system"]
    used += sum(_cost(turn) for turn in system)
    kept: list[Turn] = []
    for turn in reversed([turn for turn in turns if turn.role != "system"]):
        used += _cost(turn)
        if used > budget:
            break
        kept.append(turn)
    return (*system, *reversed(kept))


@dataclass
class ConversationTurn:
    """One user message and its answer in a stored conversation."""

    store: Store
    settings: Settings
    owner: str
    conversation_id: str
    seq: int
    message: str
    title: str | None = None
    oldest_expiry: int | None = None
    """When the first of the stored turns expires (None: a new conversation)."""
    turn_id: str = field(default_factory=new_id)
    parts: list[str] = field(default_factory=list)
    _begun: asyncio.Future[None] | None = None
    _finished: asyncio.Future[bool] | None = None

    @property
    def header(self) -> tuple[bytes, bytes]:
        return HEADER, self.conversation_id.encode()

    def _expires_at(self, now: float) -> int:
        return int(now + self.settings.retention_days * DAY)

    async def begin(self, remaining_seconds: float | None) -> None:
        """Lock the conversation and store the user's turn (raises StoreError: busy, gone, unavailable).

        The lock expires with the invocation on Lambda (`remaining_seconds`), else after
        CHAT_ANSWER_LOCK_SECONDS, so a crashed process cannot hold it for good."""
        now = time.time()
        lock_seconds = self.settings.answer_lock_seconds
        if remaining_seconds is not None:
            lock_seconds = min(lock_seconds, remaining_seconds)
        start = TurnStart(
            owner=self.owner,
            conversation_id=self.conversation_id,
            seq=self.seq,
            turn_id=self.turn_id,
            message=self.message,
            now=now,
            lock_until=now + lock_seconds,
            expires_at=self._expires_at(now),
            title=self.title,
        )
        # Shielded: a client leaving mid-write must not leave the outcome unknown to `finish`.
        self._begun = asyncio.ensure_future(self.store.begin_turn(start))
        await asyncio.shield(self._begun)

    def add(self, contents: list[str]) -> None:
        self.parts.extend(contents)

    async def finish(self, status: str, usage: Usage | None = None) -> bool:
        """Store the answer with `status` (and the tokens it used) and release the lock, once; False if the
        store failed."""
        if self._finished is None:
            counted = usage if usage is not None and usage.source != "none" else None
            self._finished = asyncio.ensure_future(self._finish(status, counted))
        return await asyncio.shield(self._finished)

    async def _finish(self, status: str, usage: Usage | None) -> bool:
        if self._begun is None:
            return True
        try:
            await self._begun
        except StoreError:
            return True  # the turn never began: there is nothing to store or release
        now = time.time()
        expires_at = self._expires_at(now)
        end = TurnEnd(
            owner=self.owner,
            conversation_id=self.conversation_id,
            seq=self.seq,
            turn_id=self.turn_id,
            content="".join(self.parts),
            status=status,
            now=now,
            expires_at=expires_at,
            refresh_expiry=self.oldest_expiry is not None and self.oldest_expiry < expires_at,
            usage=usage,
        )
        try:
            await self.store.finish_turn(end)
        except StoreError:
            logger.exception("the answer could not be stored", conversation_id=self.conversation_id)
            return False
        return True

    async def wait_for_stop(self) -> None:
        """Return once a stop was asked for (or the conversation was deleted), polling at a bounded rate."""
        while True:
            await asyncio.sleep(self.settings.stop_poll_seconds)
            try:
                if await self.store.stop_requested(self.owner, self.conversation_id, self.turn_id):
                    return
            except StoreError:
                logger.warning("the stop flag could not be read", conversation_id=self.conversation_id)


async def start_turn(
    store: Store, settings: Settings, owner: str, chat: ChatRequest
) -> tuple[ChatRequest, ConversationTurn]:
    """The request the model gets (the stored turns as history) and the turn to write.

    Raises BadRequest (404 for an unknown, foreign or malformed id; 400 over the token
    budget) and StoreError. A new conversation costs no read; a continued one, one."""
    if chat.conversation_id is None:
        fit_history([], chat.message, settings.history_token_budget)
        turn = ConversationTurn(store, settings, owner, new_id(), 0, chat.message, title=title_of(chat.message))
        return ChatRequest(message=chat.message), turn
    if not valid_id(chat.conversation_id):
        raise BadRequest(NOT_FOUND, 404)
    now = time.time()
    conversation = await store.load(owner, chat.conversation_id, now)
    if conversation is None:
        raise BadRequest(NOT_FOUND, 404)
    stored = [Turn(message.role, message.content) for message in conversation.messages if message.content]
    history = fit_history(stored, chat.message, settings.history_token_budget)
    turn = ConversationTurn(
        store,
        settings,
        owner,
        chat.conversation_id,
        conversation.next_seq,
        chat.message,
        oldest_expiry=conversation.oldest_expiry,
    )
    return ChatRequest(message=chat.message, history=history), turn
