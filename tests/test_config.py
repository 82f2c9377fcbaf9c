"""Configuration: every setting read from its variable, every bad value refused by name.

`Settings.from_env` and `RuntimeSettings.from_env` take the environment as a
mapping, so these tests give them one; nothing is mocked.
"""

from __future__ import annotations

import dataclasses
import re

import pytest

from chat.config import ConfigError, Settings
from chat.runtime.settings import RuntimeSettings

# field -> (variable, a value to set, what the field becomes)
SETTINGS: dict[str, tuple[str, str, object]] = {
    "openai_api_key": ("OPENAI_API_KEY", " sk-test-FAKE ", "sk-test-FAKE"),
    "openai_api_key_secret_id": ("OPENAI_API_KEY_SECRET_ID", "chat/openai", "chat/openai"),
    "openai_base_url": ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1"),
    "openai_model": ("OPENAI_MODEL", "gpt-4.1-mini", "gpt-4.1-mini"),
    "openai_max_tokens": ("OPENAI_MAX_TOKENS", "256", 256),
    "openai_max_retries": ("OPENAI_MAX_RETRIES", "2", 2),
    "openai_stream_usage": ("OPENAI_STREAM_USAGE", "off", False),
    "connect_timeout": ("OPENAI_CONNECT_TIMEOUT", "2.5", 2.5),
    "first_token_timeout": ("OPENAI_FIRST_TOKEN_TIMEOUT", "60", 60.0),
    "idle_timeout": ("OPENAI_IDLE_TIMEOUT", "7", 7.0),
    "max_body_bytes": ("CHAT_MAX_BODY_BYTES", "2048", 2048),
    "max_history_turns": ("CHAT_MAX_HISTORY_TURNS", "0", 0),
    "heartbeat_seconds": ("CHAT_HEARTBEAT_SECONDS", "0.5", 0.5),
    "deadline_margin_seconds": ("CHAT_DEADLINE_MARGIN_SECONDS", "3", 3.0),
    "auth_token_secret_id": ("CHAT_AUTH_TOKEN_SECRET_ID", "arn:aws:secretsmanager:x", "arn:aws:secretsmanager:x"),
    "cors_allow_origins": (
        "CHAT_CORS_ALLOW_ORIGINS",
        " https://a.example, ,https://b.example ",
        ("https://a.example", "https://b.example"),
    ),
    "secret_cache_seconds": ("CHAT_SECRET_CACHE_SECONDS", "0", 0),
    "store_url": ("CHAT_STORE_URL", "dynamodb://chat-table", "dynamodb://chat-table"),
    "retention_days": ("CHAT_RETENTION_DAYS", "1.5", 1.5),
    "stop_poll_seconds": ("CHAT_STOP_POLL_SECONDS", "0.05", 0.05),
    "answer_lock_seconds": ("CHAT_ANSWER_LOCK_SECONDS", "60", 60.0),
    "history_token_budget": ("CHAT_HISTORY_TOKEN_BUDGET", "4000", 4000),
    "resume_batch_seconds": ("CHAT_RESUME_BATCH_SECONDS", "0.25", 0.25),
    "resume_batch_bytes": ("CHAT_RESUME_BATCH_BYTES", "65536", 65536),
    "resume_ttl_seconds": ("CHAT_RESUME_TTL_SECONDS", "120", 120.0),
    "resume_poll_seconds": ("CHAT_RESUME_POLL_SECONDS", "1", 1.0),
    "resume_max_followers": ("CHAT_RESUME_MAX_FOLLOWERS", "2", 2),
    "auth": ("CHAT_AUTH", " Keys ", "keys"),
    "key_cache_seconds": ("CHAT_KEY_CACHE_SECONDS", "5", 5.0),
    "budget_tokens_per_day": ("CHAT_BUDGET_TOKENS_PER_DAY", "100000", 100000),
    "budget_tokens_per_month": ("CHAT_BUDGET_TOKENS_PER_MONTH", "2000000", 2000000),
    "deployment_tokens_per_day": ("CHAT_DEPLOYMENT_TOKENS_PER_DAY", "5000000", 5000000),
    "reserve_completion_tokens": ("CHAT_RESERVE_COMPLETION_TOKENS", "1024", 1024),
}

# Values no setting of the kind may take; each must be refused with the variable's name.
NUMBER_FIELDS = [
    name for name, (_, _, value) in SETTINGS.items() if isinstance(value, (int, float)) and not isinstance(value, bool)
]
BAD_NUMBERS = ["abc", "-1", "nan", "inf", "1e999"]


def test_every_setting_has_a_case_here() -> None:
    """A new setting without a line in SETTINGS fails here: give it one (and a README row)."""
    assert {field.name for field in dataclasses.fields(Settings)} == set(SETTINGS)


def test_unset_variables_give_the_documented_defaults() -> None:
    assert Settings.from_env({}) == Settings()


@pytest.mark.parametrize("field", sorted(SETTINGS))
def test_each_setting_is_read_from_its_variable(field: str) -> None:
    variable, raw, expected = SETTINGS[field]
    settings = Settings.from_env({variable: raw})
    assert getattr(settings, field) == expected
    assert getattr(settings, field) != getattr(Settings(), field), "the case must differ from the default"


@pytest.mark.parametrize("field", NUMBER_FIELDS)
@pytest.mark.parametrize("raw", BAD_NUMBERS)
def test_a_bad_number_is_refused_naming_its_variable(field: str, raw: str) -> None:
    variable = SETTINGS[field][0]
    with pytest.raises(ConfigError, match=re.escape(variable)):
        Settings.from_env({variable: raw})


@pytest.mark.parametrize("field", [name for name in NUMBER_FIELDS if isinstance(SETTINGS[name][2], int)])
def test_a_fraction_is_refused_where_a_whole_number_is_needed(field: str) -> None:
    variable = SETTINGS[field][0]
    with pytest.raises(ConfigError, match=f"{re.escape(variable)} must be a whole number"):
        Settings.from_env({variable: "20.5"})


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("CHAT_MAX_BODY_BYTES", "15"),
        ("OPENAI_MAX_TOKENS", "0"),
        ("OPENAI_IDLE_TIMEOUT", "0"),
        ("CHAT_STOP_POLL_SECONDS", "0.01"),
        ("CHAT_HISTORY_TOKEN_BUDGET", "8"),
        ("CHAT_BUDGET_TOKENS_PER_DAY", "0"),
        ("CHAT_RESERVE_COMPLETION_TOKENS", "0"),
    ],
)
def test_values_below_a_minimum_are_refused(variable: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=f"{re.escape(variable)} must be at least"):
        Settings.from_env({variable: raw})


@pytest.mark.parametrize("raw", ["maybe", "2", "enabled"])
def test_a_flag_takes_only_true_or_false(raw: str) -> None:
    with pytest.raises(ConfigError, match="OPENAI_STREAM_USAGE must be true or false"):
        Settings.from_env({"OPENAI_STREAM_USAGE": raw})


@pytest.mark.parametrize("raw", ["token", "IAM_ROLE", "open"])
def test_chat_auth_takes_only_its_three_modes(raw: str) -> None:
    with pytest.raises(ConfigError, match="CHAT_AUTH must be one of none, keys, iam"):
        Settings.from_env({"CHAT_AUTH": raw})


def test_the_api_key_stays_out_of_the_settings_repr() -> None:
    assert "sk-test-FAKE" not in repr(Settings.from_env({"OPENAI_API_KEY": "sk-test-FAKE"}))


def test_runtime_settings_come_from_the_template_variables() -> None:
    assert RuntimeSettings.from_env({}) == RuntimeSettings()
    settings = RuntimeSettings.from_env(
        {
            "CHAT_FUNCTION_URL_STREAMING": " TRUE ",
            "CHAT_REST_STREAMING_ROUTES": "post /api/chat/stream, GET  /x ,nopath, ",
            "AWS_SAM_LOCAL": "true",
        }
    )
    assert settings == RuntimeSettings(
        function_url_streaming=True,
        rest_streaming_routes=frozenset({"POST /api/chat/stream", "GET /x"}),
        sam_local=True,
    )


def test_a_resume_batch_over_one_dynamodb_item_is_refused() -> None:
    with pytest.raises(ConfigError, match="CHAT_RESUME_BATCH_BYTES must be at most 300000"):
        Settings.from_env({"CHAT_RESUME_BATCH_BYTES": "400000"})
