"""How the app reports an error after bytes have been sent: two ASGI trailers the Lambda runtime reads.

lambda-streaming-runtime.md §2 ("Errors after bytes have been sent"): once the
prelude is out, a failure cannot change the status, so the app first reports it
in-band (SSE `event:error`), then, when the server offers the ASGI
`http.response.trailers` extension (only the Lambda runtime does), sends the
`stream-error-type` / `stream-error-message` pair. The runtime turns it into
Lambda's error trailers (`Lambda-Runtime-Function-Error-Type` / `-Body`), which
reach InvokeWithResponseStream callers.
"""

from __future__ import annotations

from collections.abc import Iterable

EXTENSION = "http.response.trailers"
ERROR_TYPE = "stream-error-type"
ERROR_MESSAGE = "stream-error-message"


def error_trailers(error_type: str, message: str) -> list[tuple[bytes, bytes]]:
    """The trailer fields for a failure of kind `error_type` (header values are latin-1)."""
    return [
        (ERROR_TYPE.encode(), error_type.encode("latin-1", "replace")),
        (ERROR_MESSAGE.encode(), message.encode("latin-1", "replace")),
    ]


def read_error(fields: Iterable[tuple[bytes, bytes]]) -> tuple[str, str] | None:
    """`(error_type, message)` if the trailers report a failure, else None."""
    values = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in fields}
    if ERROR_TYPE not in values:
        return None
    return values[ERROR_TYPE], values.get(ERROR_MESSAGE, "")
