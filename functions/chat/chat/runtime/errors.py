"""The one shape Lambda takes an error in: `{errorMessage, errorType, stackTrace}`.

The same JSON goes to `/invocation/{id}/error`, `/init/error` and `/restore/error`
as the body (lambda-streaming-runtime.md §1), and, base64-encoded, into the
`Lambda-Runtime-Function-Error-Body` trailer of a streamed response (§2).
"""

from __future__ import annotations

import traceback


def lambda_error(error_type: str, message: str, stack_trace: list[str] | None = None) -> dict[str, object]:
    return {"errorMessage": message, "errorType": error_type, "stackTrace": stack_trace or []}


def exception_error(error: BaseException, error_type: str | None = None) -> dict[str, object]:
    """What awslambdaric sends for an exception: its type (unless given), message and traceback."""
    return lambda_error(error_type or type(error).__name__, str(error), traceback.format_tb(error.__traceback__))
