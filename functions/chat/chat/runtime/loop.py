"""The invocation loop: init, SnapStart, then `/next` -> answer (buffered or streamed) -> flush -> `/next`."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import sys
from typing import Any, cast

from mangum import Mangum
from mangum.types import LambdaContext as MangumContext

from .. import observability
from ..config import RuntimeSettings
from . import logs
from .client import Invocation, RuntimeAPIError, RuntimeClient, error_payload
from .context import LambdaContext
from .mode import should_stream
from .response_stream import ResponseStream
from .streaming import stream_response

log = logging.getLogger("chat.runtime")
DEFAULT_HANDLER = "chat.handler.handler"
TRACE_ID = "_X_AMZN_TRACE_ID"


def _for_mangum(context: LambdaContext) -> MangumContext:
    """Mangum's protocol says `memory_limit_in_mb: int`; the managed runtime (and so ours) gives a str."""
    return cast(MangumContext, context)


class HandlerError(Exception):
    """`_HANDLER` does not name a Mangum instance."""


def load_handler(spec: str) -> Mangum:
    """Import `package.module.name`; it must be the `Mangum(app)` instance (its `.infer` and `.app` are used)."""
    module_name, _, attribute = spec.rpartition(".")
    module = importlib.import_module(module_name)
    handler = getattr(module, attribute, None)
    if not isinstance(handler, Mangum):
        raise HandlerError(f"{spec} must name a Mangum instance, found {type(handler).__name__}")
    return handler


class Runtime:
    def __init__(self, client: RuntimeClient, handler: Mangum, settings: RuntimeSettings) -> None:
        self.client = client
        self.handler = handler
        self.settings = settings
        self.loop = asyncio.get_event_loop()  # Mangum created (and set) it; loop-bound clients live on it.

    def serve_forever(self) -> None:
        while True:
            self.handle(self.client.next_invocation())

    def handle(self, invocation: Invocation) -> None:
        context = invocation.context
        request_id = context.aws_request_id
        if invocation.trace_id:
            os.environ[TRACE_ID] = invocation.trace_id
        else:
            os.environ.pop(TRACE_ID, None)
        logs.set_request_id(request_id)
        observability.begin_invocation(context)
        try:
            try:
                event = json.loads(invocation.event)
            except ValueError as error:
                self.client.post_error(request_id, error_payload(error), "Runtime.UnmarshalError")
                return
            if should_stream(event, self.settings):
                self._stream(event, context)
            else:
                self._buffered(event, context)
        finally:
            observability.end_invocation()
            logs.set_request_id("")

    def _buffered(self, event: Any, context: LambdaContext) -> None:
        try:
            body = json.dumps(self.handler(event, _for_mangum(context))).encode()
        except Exception as error:
            log.exception("invocation failed")
            self.client.post_error(context.aws_request_id, error_payload(error), "Function.Unhandled")
            return
        self.client.post_response(context.aws_request_id, body)

    def _stream(self, event: Any, context: LambdaContext) -> None:
        try:
            parsed = self.handler.infer(event, _for_mangum(context))
        except Exception as error:
            log.exception("unsupported event")
            self.client.post_error(context.aws_request_id, error_payload(error), "Function.Unhandled")
            return
        self.loop.run_until_complete(self._stream_async(parsed, context))

    async def _stream_async(self, parsed: Any, context: LambdaContext) -> None:
        try:
            stream = await ResponseStream.open(self.client.address, context.aws_request_id)
        except OSError as error:
            raise RuntimeAPIError(f"cannot open the streamed response: {error}") from error
        await stream_response(
            self.handler.app,
            parsed,
            stream,
            config=self.handler.config,
            remaining_seconds=context.get_remaining_time_in_millis() / 1000,
        )
        if not stream.accepted:
            log.warning("streamed response not accepted: %r", stream.status_line.decode("latin-1").strip())


def run_snapstart_hooks(client: RuntimeClient) -> None:
    """What the managed runtime does for SnapStart: hooks before the snapshot, wait, hooks after restore."""
    from snapshot_restore_py import get_after_restore, get_before_snapshot

    try:
        for hook, args, kwargs in get_before_snapshot():
            hook(*args, **kwargs)
    except Exception as error:
        log.exception("before-snapshot hook failed")
        client.post_init_error(error_payload(error), "Runtime.BeforeSnapshotError")
        sys.exit(64)
    client.restore_next()
    try:
        for hook, args, kwargs in get_after_restore():
            hook(*args, **kwargs)
    except Exception as error:
        log.exception("after-restore hook failed")
        client.post_restore_error(error_payload(error), "Runtime.AfterRestoreError")
        sys.exit(65)


def main() -> None:
    logs.configure()
    client = RuntimeClient(os.environ["AWS_LAMBDA_RUNTIME_API"])
    try:
        handler = load_handler(os.environ.get("_HANDLER") or DEFAULT_HANDLER)
    except Exception as error:
        error_type = "Runtime.HandlerNotFound" if isinstance(error, HandlerError) else "Runtime.ImportModuleError"
        log.exception("init failed")
        client.post_init_error(error_payload(error, error_type), error_type)
        sys.exit(1)
    if os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE") == "snap-start":
        run_snapstart_hooks(client)
    try:
        Runtime(client, handler, RuntimeSettings.from_env()).serve_forever()
    except RuntimeAPIError:
        log.exception("the Runtime API failed; ending this environment")
        sys.exit(1)
