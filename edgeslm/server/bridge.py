"""Glue between HTTP handlers and the batch workers: bodies, JSON errors, awaiting completions."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from edgeslm.core.batcher import Completion, Ticket
from edgeslm.core.tensors import merge_groups
from edgeslm.errors import (
    BadInputError,
    BodyTooLargeError,
    CancelledError,
    DeadlineError,
    EdgeslmError,
    GpioError,
    MicrophoneError,
    ModelNotReadyError,
    OverloadedError,
    UnknownModelError,
    VoiceUnavailableError,
)
from edgeslm.metrics.recorder import Recorder
from edgeslm.server.schemas import fields_at
from edgeslm.tasks.served import ServedModel
from edgeslm.tasks.text import LONG_TEXT_CHARS

log = logging.getLogger(__name__)
JSON = "application/json"
CALL_KEY = "edgeslm.call"  # scope key of the request's RequestCall (edgeslm.metrics.recorder)
TASKS_SCOPE_KEY = "edgeslm.tasks"  # uvicorn's set of the server's request tasks (put there by server.access)
_M = TypeVar("_M", bound=BaseModel)
_T = TypeVar("_T")

# Most specific first; HTTP status lives only here.
STATUS: tuple[tuple[type[EdgeslmError], int, str], ...] = (
    (BodyTooLargeError, 413, "invalid_request_error"),
    (BadInputError, 400, "invalid_request_error"),
    (UnknownModelError, 404, "not_found_error"),
    (ModelNotReadyError, 503, "service_unavailable"),
    (VoiceUnavailableError, 503, "service_unavailable"),
    (MicrophoneError, 503, "service_unavailable"),
    (GpioError, 503, "service_unavailable"),
    (OverloadedError, 503, "service_unavailable"),
    (DeadlineError, 504, "timeout_error"),
    (CancelledError, 499, "cancelled"),
)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status, headers, media_type=JSON)


def error_response(status: int, code: str, message: str, *, param: str | None = None,
                   kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> Response:
    return json_response({"error": {"code": code, "message": message, "type": kind, "param": param}}, status, headers)


def response_for(exc: EdgeslmError) -> Response:
    for cls, status, kind in STATUS:
        if isinstance(exc, cls):
            headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, OverloadedError) else None
            return error_response(status, exc.code, exc.message, param=exc.param, kind=kind, headers=headers)
    log.error("unmapped error: %s", exc)
    return error_response(500, exc.code, exc.message, param=exc.param, kind="server_error")


def endpoint(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """Turn edgeslm errors into JSON error bodies; anything else is a bug, logged and answered 500.

    A request that reached a model (ModelCaller put its RequestCall in the scope) is recorded
    with its final status: "ok", the error code, or "cancelled" if the client went away.
    """

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        started = time.monotonic()
        status = "cancelled"
        try:
            response = await handler(request)
            status = "ok"
            return response
        except EdgeslmError as exc:
            status = exc.code
            return response_for(exc)
        except Exception:
            status = "internal_error"
            log.exception("bug while serving %s %s", request.method, request.url.path)
            return error_response(500, "internal_error", "edgeslm hit a bug; the log has the traceback",
                                  kind="server_error")
        finally:
            call = request.scope.get(CALL_KEY)
            if call is not None:
                call.finish(status, started)

    return wrapped


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) anything over `limit` bytes before reading it where possible.

    A body that stops arriving does not hold this forever: past server.body_timeout_s the connection's guard
    (server.connections.ConnectionGuard) answers 408 and closes it, and receive() says http.disconnect.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError(f"body is {declared} bytes; the limit is {limit} (server.max_body_bytes)")
    # ASGI messages read directly: Starlette's request.stream() generator costs more than a small body.
    chunks, size = [], 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise CancelledError("client disconnected while sending the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError(f"body is over {limit} bytes (server.max_body_bytes); send less per request")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)  # one chunk (the usual case) is returned as it is, not copied


_TYPE_TAG = re.compile(r"^(str|int|float|bool|none|.*\[.*\])$")


def field_path(loc: Sequence[Any]) -> str | None:
    """("input", "list[str]", 2) -> "input[2]": pydantic's union tags dropped, indices bracketed."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _TYPE_TAG.match(part):
            out += f".{part}" if out else part
    return out or None


def parse(model: type[_M], body: bytes | dict) -> _M:
    """Validate a body against a schema; malformed JSON is 400, wrong fields are 400 naming the field."""
    try:
        return model.model_validate(body) if isinstance(body, dict) else model.model_validate_json(body or b"")
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        if first["type"] == "json_invalid":
            raise BadInputError(f"body is not valid JSON: {first['msg']}", code="invalid_json") from None
        parts, described = [], set()
        for error in errors[:5]:
            part = f"{field_path(error['loc']) or 'body'}: {error['msg']}"
            # An unknown field: name the fields of the object it was sent in (a message, a tensor, the body).
            where = tuple(error["loc"][:-1])
            if error["type"] == "extra_forbidden" and where not in described:
                described.add(where)
                allowed = fields_at(model, where)
                if allowed is not None:
                    inside = field_path(where)
                    part += f" (allowed fields{f' in {inside}' if inside else ''}: {', '.join(allowed)})"
            parts.append(part)
        raise BadInputError("; ".join(parts), param=field_path(first["loc"]), code="invalid_field") from None


def as_list(value: str | list[str], cap: int) -> list[str]:
    texts = [value] if isinstance(value, str) else value
    if not texts:
        raise BadInputError("input is an empty list; send at least one text", param="input")
    if len(texts) > cap:
        raise BadInputError(
            f"input has {len(texts)} texts; at most {cap} per request (server.max_inputs): split the request",
            param="input",
        )
    return texts


def _settle(future: asyncio.Future, completion: Completion) -> None:
    if not future.done():
        future.set_result(completion)


def _fail(future: asyncio.Future, error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


async def _watch_disconnect(receive: Callable[[], Awaitable[dict]], future: asyncio.Future,
                            tickets: Sequence[Ticket]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    for ticket in tickets:
        ticket.cancel()
    _fail(future, CancelledError("client disconnected"))


def _request_id(scope: dict) -> str | None:
    # The raw header list: a miss through request.headers costs a KeyError per request.
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            return value.decode("latin-1")
    return None


class ModelCaller:
    """Submits requests to batchers from the event loop and awaits them without blocking it.

    Requests that arrive alone may run inline (see DynamicBatcher.submit); a request still
    waiting after `watch_after_s` gets a watcher that cancels it if its client goes away.
    """

    watch_after_s = 0.05

    def __init__(self, recorder: Recorder | None = None) -> None:
        self.active = 0
        self.recorder = recorder
        self._loop_thread = threading.get_ident()

    def _on_done(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future) -> Callable[[Completion], None]:
        def on_done(completion: Completion) -> None:
            if threading.get_ident() == self._loop_thread:
                _settle(future, completion)
            else:
                loop.call_soon_threadsafe(_settle, future, completion)

        return on_done

    async def run(self, model: ServedModel, feeds: dict[str, np.ndarray], request: Request, *,
                  timeout_s: float, pad: bool = True, task: str = "tensors",
                  tokens_in: int | None = None, lengths: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The request's outputs, in row order; raises the request's own error. `lengths` (each text's
        tokens) lets a request of unlike texts run in pieces that pad less (ServedModel.chunks)."""
        loop = asyncio.get_running_loop()
        call = None
        if self.recorder is not None:
            rows = next(iter(feeds.values())).shape[0]
            call = self.recorder.open(model.name, task, rows, tokens_in, _request_id(request.scope))
            request.scope[CALL_KEY] = call
        self._loop_thread = threading.get_ident()
        self.active += 1
        try:
            if self.active == 1 and len(request.scope.get(TASKS_SCOPE_KEY, ())) != 1:
                # Let requests that arrived together reach this point too. When the server's only task is
                # this one, none did: their tasks are made as their bytes are read, before any task runs.
                await asyncio.sleep(0)
            alone = self.active == 1
            chunks, order = model.chunks(feeds, lengths if pad else None)
            futures: list[asyncio.Future] = []
            tickets: list[Ticket] = []
            try:
                for chunk in chunks:
                    future = loop.create_future()
                    futures.append(future)
                    tickets.append(model.batcher.submit(chunk, self._on_done(loop, future), pad=pad,
                                                        alone=alone and len(chunks) == 1))
            except OverloadedError:
                for ticket in tickets:
                    ticket.cancel()
                raise
            waiting = futures[0] if len(futures) == 1 else asyncio.gather(*futures)
            if not waiting.done():
                await self._wait(loop, waiting, tickets, request, model, timeout_s)
            completions = [f.result() for f in futures]
            if call is not None:
                call.ran(completions, chunks)
        finally:
            self.active -= 1
        for completion in completions:
            if completion.error is not None:
                error = completion.error
                if isinstance(error, EdgeslmError):
                    raise error
                raise BadInputError(f"model {model.name!r} could not run this input: {error}",
                                    code="inference_failed") from error
        # Chunks may have joined batches padded to different lengths: merging re-pads sequence outputs to agree.
        return merge_groups([c.outputs for c in completions], order)

    async def _wait(self, loop: asyncio.AbstractEventLoop, waiting: asyncio.Future, tickets: Sequence[Ticket],
                    request: Request, model: ServedModel, timeout_s: float) -> None:
        watcher: asyncio.Task | None = None

        def start_watcher() -> None:
            nonlocal watcher
            watcher = loop.create_task(_watch_disconnect(request.receive, waiting, tickets))

        def expire() -> None:
            for ticket in tickets:
                ticket.cancel()
            _fail(waiting, DeadlineError(
                f"model {model.name!r} did not answer within {timeout_s:g} s (server.request_timeout_s)"))

        watch_timer = loop.call_later(self.watch_after_s, start_watcher)
        deadline_timer = loop.call_later(timeout_s, expire)
        try:
            await waiting
        finally:
            watch_timer.cancel()
            deadline_timer.cancel()
            if watcher is not None:
                watcher.cancel()


async def prepared(chars: int, prepare: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """`prepare(*args, **kwargs)` (tokenising a request's `chars` characters of text): on a worker thread when the
    text is long (tasks.text.LONG_TEXT_CHARS), so one big request does not stall the event loop; inline
    otherwise, since a thread hop costs a short voice command ~50 us."""
    if chars > LONG_TEXT_CHARS:
        return await asyncio.to_thread(prepare, *args, **kwargs)
    return prepare(*args, **kwargs)
