"""The invocation loop: init, SnapStart, then `/next` -> answer (buffered or streamed) -> flush -> `/next`."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any, cast

from aws_lambda_powertools import Logger, Metrics
from mangum import Mangum
from mangum.types import LambdaContext as MangumContext

from . import logs
from .client import Invocation, RuntimeAPIError, RuntimeClient
from .context import LambdaContext
from .errors import exception_error
from .mode import should_stream
from .response_stream import ResponseStream
from .settings import RuntimeSettings
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


def observed(dispatch: Callable[[Any, LambdaContext], None]) -> Callable[[Any, LambdaContext], None]:
    """`dispatch` inside Powertools' own invocation decorators, as a managed-runtime handler would be.

    `inject_lambda_context` tags every Powertools log line with the context (and
    cold start); `log_metrics` writes the invocation's metrics as EMF when the
    dispatch returns -- after a streamed response ended, before the next `/next`,
    after which the environment may freeze. Powertools reads its service and
    namespace from the environment, so these instances share the app's.
    """
    # An invocation that recorded no metric (healthz, an error) is normal, not worth a warning each time.
    warnings.filterwarnings("ignore", "No application metrics to publish", UserWarning)
    return cast(Callable[[Any, LambdaContext], None], Metrics().log_metrics(Logger().inject_lambda_context(dispatch)))


class Runtime:
    def __init__(self, client: RuntimeClient, handler: Mangum, settings: RuntimeSettings) -> None:
        self.client = client
        self.handler = handler
        self.settings = settings
        self.loop = asyncio.get_event_loop()  # Mangum created (and set) it; loop-bound clients live on it.
        self.dispatch = observed(self._dispatch)

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
        try:
            try:
                event = json.loads(invocation.event)
            except ValueError as error:
                self.client.post_error(request_id, exception_error(error), "Runtime.UnmarshalError")
                return
            self.dispatch(event, context)
        finally:
            logs.set_request_id("")

    def _dispatch(self, event: Any, context: LambdaContext) -> None:
        if should_stream(event, self.settings):
            self._stream(event, context)
        else:
            self._buffered(event, context)

    def _buffered(self, event: Any, context: LambdaContext) -> None:
        try:
            body = json.dumps(self.handler(event, _for_mangum(context))).encode()
        except Exception as error:
            log.exception("invocation failed")
            self.client.post_error(context.aws_request_id, exception_error(error), "Function.Unhandled")
            return
        self.client.post_response(context.aws_request_id, body)

    def _stream(self, event: Any, context: LambdaContext) -> None:
        try:
            parsed = self.handler.infer(event, _for_mangum(context))
        except Exception as error:
            log.exception("unsupported event")
            self.client.post_error(context.aws_request_id, exception_error(error), "Function.Unhandled")
            return
        self.loop.run_until_complete(self._stream_async(parsed, context))

    async def _stream_async(self, parsed: Any, context: LambdaContext) -> None:
        deadline = self.loop.time() + context.get_remaining_time_in_millis() / 1000
        try:
            stream = await ResponseStream.open(self.client.address, context.aws_request_id, deadline)
        except OSError as error:
            raise RuntimeAPIError(f"cannot open the streamed response: {error}") from error
        await stream_response(self.handler.app, parsed, stream, config=self.handler.config)
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
        client.post_init_error(exception_error(error), "Runtime.BeforeSnapshotError")
        sys.exit(64)
    client.restore_next()
    try:
        for hook, args, kwargs in get_after_restore():
            hook(*args, **kwargs)
    except Exception as error:
        log.exception("after-restore hook failed")
        client.post_restore_error(exception_error(error), "Runtime.AfterRestoreError")
        sys.exit(65)


def main() -> None:
    logs.configure()
    client = RuntimeClient(os.environ["AWS_LAMBDA_RUNTIME_API"])
    try:
        handler = load_handler(os.environ.get("_HANDLER") or DEFAULT_HANDLER)
    except Exception as error:
        error_type = "Runtime.HandlerNotFound" if isinstance(error, HandlerError) else "Runtime.ImportModuleError"
        log.exception("init failed")
        client.post_init_error(exception_error(error, error_type), error_type)
        sys.exit(1)
    if os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE") == "snap-start":
        run_snapstart_hooks(client)
    try:
        Runtime(client, handler, RuntimeSettings.from_env()).serve_forever()
    except RuntimeAPIError:
        log.exception("the Runtime API failed; ending this environment")
        sys.exit(1)
