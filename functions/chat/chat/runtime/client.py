"""The Runtime API calls that are one request, one answer: next, response, error, restore.

Blocking `http.client` on one kept-alive connection is right here: the loop
handles one invocation at a time, and `/next` is a long poll with no timeout.
Streamed responses use their own connection (see `streaming.py`).
"""

from __future__ import annotations

import http.client
import json
import logging
from dataclasses import dataclass

from .context import ContextError, LambdaContext
from .errors import exception_error

API_VERSION = "2018-06-01"
log = logging.getLogger("chat.runtime")


class RuntimeAPIError(RuntimeError):
    """The Runtime API answered with a status that ends this environment."""


@dataclass(frozen=True)
class Invocation:
    event: bytes
    context: LambdaContext
    trace_id: str | None


class RuntimeClient:
    def __init__(self, address: str) -> None:
        self.address = address
        self._connection = http.client.HTTPConnection(address)

    def _request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        url = f"/{API_VERSION}{path}"
        try:
            self._connection.request(method, url, body=body, headers=headers or {})
            response = self._connection.getresponse()
        except (http.client.HTTPException, OSError):
            # A kept-alive connection the other side closed: one fresh attempt.
            self._connection.close()
            self._connection.request(method, url, body=body, headers=headers or {})
            response = self._connection.getresponse()
        payload = response.read()
        return response.status, {name.lower(): value for name, value in response.getheaders()}, payload

    def next_invocation(self) -> Invocation:
        """Long-poll for the next invocation; one whose context headers are broken is failed here."""
        while True:
            status, headers, event = self._request("GET", "/runtime/invocation/next")
            if status != 200:
                raise RuntimeAPIError(f"/runtime/invocation/next answered {status}")
            try:
                context = LambdaContext.from_headers(headers)
            except ContextError as error:
                request_id = headers.get("lambda-runtime-aws-request-id", "")
                self.post_error(request_id, exception_error(error), "Runtime.LambdaContextUnmarshalError")
                continue
            return Invocation(event=event, context=context, trace_id=headers.get("lambda-runtime-trace-id") or None)

    def post_response(self, request_id: str, body: bytes) -> None:
        status, _, answer = self._request(
            "POST", f"/runtime/invocation/{request_id}/response", body, {"Content-Type": "application/json"}
        )
        if status >= 500:
            raise RuntimeAPIError(f"/response answered {status}")
        if status != 202:  # 413: over Lambda's 6 MB buffered limit; the caller gets Lambda's error
            log.warning("response refused with %s: %s", status, answer[:200].decode(errors="replace"))

    def post_error(self, request_id: str, payload: dict[str, object], error_type: str) -> None:
        self._post_error(f"/runtime/invocation/{request_id}/error", payload, error_type)

    def post_init_error(self, payload: dict[str, object], error_type: str) -> None:
        self._post_error("/runtime/init/error", payload, error_type)

    def restore_next(self) -> None:
        """Block until a SnapStart snapshot has been restored."""
        status, _, _ = self._request("GET", "/runtime/restore/next")
        if status != 200:
            raise RuntimeAPIError(f"/runtime/restore/next answered {status}")

    def post_restore_error(self, payload: dict[str, object], error_type: str) -> None:
        self._post_error("/runtime/restore/error", payload, error_type)

    def _post_error(self, path: str, payload: dict[str, object], error_type: str) -> None:
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json", "Lambda-Runtime-Function-Error-Type": error_type}
        status, _, _ = self._request("POST", path, body, headers)
        if status >= 500:
            raise RuntimeAPIError(f"{path} answered {status}")
