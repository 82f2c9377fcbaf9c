"""Every setting the service reads, with its typed default, in one place.

Settings come from environment variables only, so the same code runs under
uvicorn, `sam local` and Lambda; nothing else in the app reads `os.environ` for
them. The other readers of the environment read variables that are not the app's:
the Lambda runtime loop (`runtime/`: the platform's variables and its invoke-mode
settings in `runtime/settings.py`) and Powertools (its `POWERTOOLS_*` variables).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field


class ConfigError(ValueError):
    """An environment variable holds a value the service cannot use."""


def _text(env: Mapping[str, str], name: str, default: str = "") -> str:
    return env.get(name, "").strip() or default


def _number(env: Mapping[str, str], name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value):  # float() takes "nan", "inf" and "1e999"; no limit means anything with them
        raise ConfigError(f"{name} must be a finite number, got {raw!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum:g}, got {raw!r}")
    return value


def _whole(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    value = _number(env, name, default, minimum=minimum)
    if value != int(value):
        raise ConfigError(f"{name} must be a whole number, got {env[name]!r}")
    return int(value)


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("true", "1", "yes", "on"):
        return True
    if raw in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {env[name]!r}")


def _optional_whole(env: Mapping[str, str], name: str) -> int | None:
    return _whole(env, name, 0, minimum=1) if env.get(name, "").strip() else None


AUTH_MODES = ("none", "keys", "iam")
MAX_RESUME_BATCH_BYTES = 300_000  # one batch is one DynamoDB item, and items stop at 400 KB


def _batch_bytes(env: Mapping[str, str]) -> int:
    value = _whole(env, "CHAT_RESUME_BATCH_BYTES", Settings.resume_batch_bytes, minimum=1)
    if value > MAX_RESUME_BATCH_BYTES:
        raise ConfigError(f"CHAT_RESUME_BATCH_BYTES must be at most {MAX_RESUME_BATCH_BYTES}, got {value}")
    return value


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    value = _text(env, name, default).lower()
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {env[name]!r}")
    return value


def _origins(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in env.get(name, "").split(",") if item.strip())


@dataclass(frozen=True)
class Settings:
    """The service configuration; `Settings.from_env()` is the only constructor code uses."""

    # Upstream model.
    openai_api_key: str = field(default="", repr=False)
    openai_api_key_secret_id: str = ""
    openai_base_url: str = ""
    openai_model: str = "gpt-4o"
    openai_max_tokens: int | None = None
    openai_max_retries: int = 0
    openai_stream_usage: bool = True
    connect_timeout: float = 10.0
    first_token_timeout: float = 120.0
    idle_timeout: float = 30.0
    # Client-facing limits.
    max_body_bytes: int = 64 * 1024
    max_history_turns: int = 50
    heartbeat_seconds: float = 15.0
    deadline_margin_seconds: float = 2.0
    # Access control.
    auth_token_secret_id: str = ""
    cors_allow_origins: tuple[str, ...] = ()
    secret_cache_seconds: int = 300
    # Conversations (the store).
    store_url: str = "sqlite:///.data/chat.sqlite3"
    retention_days: float = 30.0
    stop_poll_seconds: float = 0.5
    answer_lock_seconds: float = 900.0
    history_token_budget: int = 16000
    # Resumable answers (events kept in the store for followers).
    resume_batch_seconds: float = 0.5
    resume_batch_bytes: int = 32 * 1024
    resume_ttl_seconds: float = 600.0
    resume_poll_seconds: float = 0.5
    resume_max_followers: int = 5
    # Callers and budgets (usage counters live in the same store).
    auth: str = "none"
    key_cache_seconds: float = 30.0
    budget_tokens_per_day: int | None = None
    budget_tokens_per_month: int | None = None
    deployment_tokens_per_day: int | None = None
    reserve_completion_tokens: int = 4096

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            openai_api_key=_text(env, "OPENAI_API_KEY"),
            openai_api_key_secret_id=_text(env, "OPENAI_API_KEY_SECRET_ID"),
            openai_base_url=_text(env, "OPENAI_BASE_URL"),
            openai_model=_text(env, "OPENAI_MODEL", cls.openai_model),
            openai_max_tokens=_optional_whole(env, "OPENAI_MAX_TOKENS"),
            openai_max_retries=_whole(env, "OPENAI_MAX_RETRIES", cls.openai_max_retries),
            openai_stream_usage=_flag(env, "OPENAI_STREAM_USAGE", cls.openai_stream_usage),
            connect_timeout=_number(env, "OPENAI_CONNECT_TIMEOUT", cls.connect_timeout, minimum=0.001),
            first_token_timeout=_number(env, "OPENAI_FIRST_TOKEN_TIMEOUT", cls.first_token_timeout, minimum=0.001),
            idle_timeout=_number(env, "OPENAI_IDLE_TIMEOUT", cls.idle_timeout, minimum=0.001),
            max_body_bytes=_whole(env, "CHAT_MAX_BODY_BYTES", cls.max_body_bytes, minimum=16),
            max_history_turns=_whole(env, "CHAT_MAX_HISTORY_TURNS", cls.max_history_turns),
            heartbeat_seconds=_number(env, "CHAT_HEARTBEAT_SECONDS", cls.heartbeat_seconds, minimum=0.001),
            deadline_margin_seconds=_number(env, "CHAT_DEADLINE_MARGIN_SECONDS", cls.deadline_margin_seconds),
            auth_token_secret_id=_text(env, "CHAT_AUTH_TOKEN_SECRET_ID"),
            cors_allow_origins=_origins(env, "CHAT_CORS_ALLOW_ORIGINS"),
            secret_cache_seconds=_whole(env, "CHAT_SECRET_CACHE_SECONDS", cls.secret_cache_seconds),
            store_url=_text(env, "CHAT_STORE_URL", cls.store_url),
            retention_days=_number(env, "CHAT_RETENTION_DAYS", cls.retention_days, minimum=0.001),
            stop_poll_seconds=_number(env, "CHAT_STOP_POLL_SECONDS", cls.stop_poll_seconds, minimum=0.05),
            answer_lock_seconds=_number(env, "CHAT_ANSWER_LOCK_SECONDS", cls.answer_lock_seconds, minimum=1),
            history_token_budget=_whole(env, "CHAT_HISTORY_TOKEN_BUDGET", cls.history_token_budget, minimum=16),
            resume_batch_seconds=_number(env, "CHAT_RESUME_BATCH_SECONDS", cls.resume_batch_seconds, minimum=0.01),
            resume_batch_bytes=_batch_bytes(env),
            resume_ttl_seconds=_number(env, "CHAT_RESUME_TTL_SECONDS", cls.resume_ttl_seconds, minimum=1),
            resume_poll_seconds=_number(env, "CHAT_RESUME_POLL_SECONDS", cls.resume_poll_seconds, minimum=0.05),
            resume_max_followers=_whole(env, "CHAT_RESUME_MAX_FOLLOWERS", cls.resume_max_followers, minimum=1),
            auth=_choice(env, "CHAT_AUTH", AUTH_MODES, cls.auth),
            key_cache_seconds=_number(env, "CHAT_KEY_CACHE_SECONDS", cls.key_cache_seconds),
            budget_tokens_per_day=_optional_whole(env, "CHAT_BUDGET_TOKENS_PER_DAY"),
            budget_tokens_per_month=_optional_whole(env, "CHAT_BUDGET_TOKENS_PER_MONTH"),
            deployment_tokens_per_day=_optional_whole(env, "CHAT_DEPLOYMENT_TOKENS_PER_DAY"),
            reserve_completion_tokens=_whole(
                env, "CHAT_RESERVE_COMPLETION_TOKENS", cls.reserve_completion_tokens, minimum=1
            ),
        )
