"""Scrubbing secrets out of text that leaves the process (error bodies, SSE errors, logs).

Upstream error messages are useful to relay, but OpenAI's 401 quotes part of the
key (`Incorrect API key provided: sk-proj-****abcd`). Anything that looks like a
key, a masked key, or shares a run of characters with a known secret is replaced.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "[redacted]"
_FRAGMENT = 4
_WORD = re.compile(r"[A-Za-z0-9_\-*.+/=]{4,}")
_KEY_LIKE = re.compile(r"^(sk|rk|pk|sess|key|org|proj)[-_]|\*{2,}|^Bearer$", re.IGNORECASE)


def _fragments(secret: str) -> set[str]:
    return {secret[i : i + _FRAGMENT] for i in range(len(secret) - _FRAGMENT + 1)}


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Return `text` with key-like words and any word sharing 4+ characters with a secret removed."""
    fragments: set[str] = set()
    for secret in secrets:
        if secret:
            fragments |= _fragments(secret)

    def scrub(match: re.Match[str]) -> str:
        word = match.group(0)
        if _KEY_LIKE.search(word) or any(piece in fragments for piece in _fragments(word)):
            return REDACTED
        return word

    return _WORD.sub(scrub, text)
