"""Structured logs and CloudWatch metrics (Powertools), shared by every entry point.

Metrics are buffered in-process and written as EMF lines when Powertools'
`log_metrics` returns; on Lambda the runtime loop wraps every invocation in it
and in `inject_lambda_context` (see `runtime/loop.py`). Service and namespace
are Powertools' own `POWERTOOLS_SERVICE_NAME` / `POWERTOOLS_METRICS_NAMESPACE`,
read by Powertools, so the loop's instances and these are the same ones.
(`make run` turns metrics off: nothing reads EMF on a laptop.)
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from .usage import NO_USAGE, Usage

# Powertools still auto-flushes every 100 values when disabled; honour the switch here.
METRICS_ENABLED = os.environ.get("POWERTOOLS_METRICS_DISABLED", "").lower() not in ("1", "true")

logger = Logger()
# Powertools writes its own JSON lines; the Lambda runtime loop's root handler must not repeat them.
logging.getLogger(logger.name).propagate = False
# botocore's DEBUG wire log prints Secrets Manager replies, secret values included.
logging.getLogger("botocore").setLevel(logging.INFO)
metrics = Metrics()


@dataclass
class StreamOutcome:
    """What one chat stream did, for metrics and the access log line."""

    caller: str = ""
    model: str = ""
    status: int = 0
    first_token_seconds: float | None = None
    duration_seconds: float = 0.0
    events: int = 0
    error_kind: str | None = None
    client_disconnected: bool = False
    usage: Usage = NO_USAGE

    @property
    def outcome(self) -> str:
        """One word for how the request ended: complete, disconnected, or the error's kind."""
        if self.client_disconnected:
            return "disconnected"
        return self.error_kind or ("complete" if self.status == 200 else "refused")


def record(outcome: StreamOutcome) -> None:
    _log(outcome)
    if METRICS_ENABLED:
        _add_metrics(outcome)


def _add_metrics(outcome: StreamOutcome) -> None:
    metrics.add_metric(name="Streams", unit=MetricUnit.Count, value=1)
    if outcome.first_token_seconds is not None:
        metrics.add_metric(
            name="TimeToFirstToken",
            unit=MetricUnit.Milliseconds,
            value=round(outcome.first_token_seconds * 1000, 1),
        )
    metrics.add_metric(
        name="StreamDuration", unit=MetricUnit.Milliseconds, value=round(outcome.duration_seconds * 1000, 1)
    )
    if outcome.error_kind is not None:
        metrics.add_metric(name=f"UpstreamError.{outcome.error_kind}", unit=MetricUnit.Count, value=1)
    if outcome.client_disconnected:
        metrics.add_metric(name="ClientDisconnects", unit=MetricUnit.Count, value=1)
    # Service-wide totals only. A per-caller dimension would make every key its own custom metric
    # (billed per metric per month, unbounded as keys are created); per-caller figures are in the
    # log line, the usage counters and `tools.keys usage`.
    usage = outcome.usage
    if usage.source != "none":
        metrics.add_metric(name="PromptTokens", unit=MetricUnit.Count, value=usage.prompt_tokens)
        metrics.add_metric(name="CompletionTokens", unit=MetricUnit.Count, value=usage.completion_tokens)
        if usage.source == "estimated":
            metrics.add_metric(name="UsageEstimated", unit=MetricUnit.Count, value=1)


def _log(outcome: StreamOutcome) -> None:
    usage = outcome.usage
    logger.info(
        "chat stream finished",
        caller=outcome.caller,
        model=outcome.model,
        outcome=outcome.outcome,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        usage=usage.source,
        status=outcome.status,
        first_token_ms=None if outcome.first_token_seconds is None else round(outcome.first_token_seconds * 1000, 1),
        duration_ms=round(outcome.duration_seconds * 1000, 1),
        events=outcome.events,
        error_kind=outcome.error_kind,
        client_disconnected=outcome.client_disconnected,
    )
