"""Token counts of one request: what the model reported, or an estimate marked as such.

The upstream reports usage in a final stream chunk when asked
(`stream_options.include_usage`). When the stream ends without it (the client left,
a timeout, a stop, an upstream that ignores the option) the counts are estimated
here, without a tokenizer: no download, no network, microseconds per call.

The estimate: a quarter of a token per ASCII character (OpenAI's rule of thumb for
English, about 4 characters per token), one token per other character (CJK text is
roughly one token per character), rounded up, plus 4 tokens of framing per message
and 3 for the reply's priming, as OpenAI's cookbook counts them. It is close for
most text but can be far too low (60 KB of "1 " is 60,000 tokens, estimated 15,007),
so it only prices what a stream used when the model reported nothing.

What a request reserves on its budgets (`prompt_bound`) is a true upper bound instead:
OpenAI's tokenizers are byte-level BPE, so every token of the text is at least one
byte, and a text of n UTF-8 bytes is at most n tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

TOKENS_PER_MESSAGE = 4
REPLY_PRIMING_TOKENS = 3

Source = Literal["reported", "estimated", "none"]


def estimate_text(text: str) -> int:
    """Estimated tokens of `text` (see the module docstring for the rule)."""
    ascii_chars = len(text.encode("ascii", "ignore"))
    return (ascii_chars + 3) // 4 + (len(text) - ascii_chars)


def estimate_messages(messages: Iterable[Mapping[str, str]]) -> int:
    """Estimated prompt tokens of Chat Completions messages."""
    return REPLY_PRIMING_TOKENS + sum(TOKENS_PER_MESSAGE + estimate_text(m["content"]) for m in messages)


def prompt_bound(messages: Iterable[Mapping[str, str]]) -> int:
    """At most how many prompt tokens the messages can be: one per UTF-8 byte, plus the framing.

    A lone surrogate (in a turn stored before the parser replaced them) counts its 3 bytes, never fails."""
    return REPLY_PRIMING_TOKENS + sum(
        TOKENS_PER_MESSAGE + len(m["content"].encode(errors="surrogatepass")) for m in messages
    )


@dataclass(frozen=True)
class Usage:
    """Tokens one request used; `source` says whether the model reported them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    source: Source = "none"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


NO_USAGE = Usage()


def reported(chunk_usage: object) -> Usage | None:
    """The `usage` object of a stream chunk as Usage, or None when it is absent or malformed."""
    if not isinstance(chunk_usage, dict):
        return None
    prompt, completion = chunk_usage.get("prompt_tokens"), chunk_usage.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int) or prompt < 0 or completion < 0:
        return None
    return Usage(prompt, completion, "reported")
