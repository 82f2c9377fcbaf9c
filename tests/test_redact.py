"""Redaction: what leaves the process never carries a key, a masked key, or a piece of a known secret."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chat.redact import REDACTED, redact

KEY = "sk-test-FAKE-KEY-FOR-REDACTION-ONLY-7Qp"
KEY_ALPHABET = st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def fragments(secret: str) -> set[str]:
    return {secret[i : i + 4] for i in range(len(secret) - 3)}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # OpenAI's 401 quotes the key's masked tail.
        (
            "Incorrect API key provided: sk-proj-****abcd. You can find your API key at https://x.example/keys.",
            f"Incorrect API key provided: {REDACTED} You can find your API key at https://x.example/keys.",
        ),
        ("Authorization: Bearer abc.def", f"Authorization: {REDACTED} abc.def"),
        ("key_live_1234 and ab-1 and org-Abcd1234", f"{REDACTED} and ab-1 and {REDACTED}"),
        ("The model is overloaded; try again in 20 s.", "The model is overloaded; try again in 20 s."),
    ],
)
def test_key_shaped_words_are_removed_and_prose_is_kept(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_any_word_sharing_four_characters_with_a_known_secret_goes() -> None:
    text = f"upstream said: token {KEY[10:16]} rejected, full {KEY}; tail ...{KEY[-5:]}"
    out = redact(text, [KEY])
    assert all(piece not in out.replace(REDACTED, " ") for piece in fragments(KEY))
    assert out.startswith("upstream said: token ")
    assert "rejected, full" in out


def test_empty_secrets_redact_nothing_extra() -> None:
    assert redact("plain words only", ["", ""]) == "plain words only"


@given(
    secret=st.text(KEY_ALPHABET, min_size=8, max_size=40),
    before=st.text(max_size=30),
    after=st.text(max_size=30),
)
def test_no_piece_of_a_known_secret_survives(secret: str, before: str, after: str) -> None:
    out = redact(before + secret + after, [secret]).replace(REDACTED, "\0")
    assert not any(piece in out for piece in fragments(secret)), out
