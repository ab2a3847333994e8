"""HTTP for the hardware edge: GET /v1/events (SSE), POST /v1/audio/intent, GET /v1/gpio, simulated presses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from edgeslm.config import Config
from edgeslm.errors import BadInputError, DeadlineError, GpioError, VoiceUnavailableError
from edgeslm.events import Event, Subscription, parse_kinds
from edgeslm.server.bridge import endpoint, json_response, parse, read_body
from edgeslm.server.edge import EdgeServices
from edgeslm.server.edge_schemas import PressRequest
from edgeslm.voice.wav import read_wav, wav_from_multipart

KEEPALIVE_S = 15.0
SHUTDOWN_POLL_S = 0.5
INFERENCE_PATHS = ("/v1/classify", "/v1/embeddings", "/v1/completions", "/v1/chat/", "/v2/models/")
TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes"), ("false", "0", "no")


def sse(event: Event) -> bytes:
    return (f"id: {event.id}\nevent: {event.kind}\ndata: ".encode() + orjson.dumps(event.as_dict()) + b"\n\n")


def query_kinds(request: Request) -> list[str]:
    """The kinds of `?kinds=a,b`; an unknown one is a 400 (events.parse_kinds)."""
    try:
        return parse_kinds(request.query_params.get("kinds", ""))
    except ValueError as exc:
        raise BadInputError(f"kinds has {exc}", param="kinds") from None


def query_flag(request: Request, name: str, default: bool) -> bool:
    """A yes/no query parameter; anything but a clear spelling is a 400, so a typo never flips the default."""
    text = request.query_params.get(name)
    if text is None:
        return default
    word = text.strip().lower()
    if word in TRUE_WORDS or word in FALSE_WORDS:
        return word in TRUE_WORDS
    raise BadInputError(f"{name} is {text!r}; give true or false (also 1/0, yes/no)", param=name)


class EdgeApi:
    """Handlers over one EdgeServices."""

    def __init__(self, edge: EdgeServices, config: Config):
        self.edge, self.server = edge, config.server

    async def events(self, request: Request) -> Response:
        kinds = query_kinds(request)
        since_text = request.query_params.get("since") or request.headers.get("last-event-id")
        since = None
        if since_text is not None:
            if not since_text.isdigit():
                raise BadInputError(f"since is {since_text!r}; give an event id (a whole number)", param="since")
            since = int(since_text)
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        subscription = self.edge.bus.subscribe(kinds=kinds or None, since=since,
                                               wake=lambda: loop.call_soon_threadsafe(wake.set))
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(self._stream(subscription, wake), media_type="text/event-stream", headers=headers)

    async def _stream(self, subscription: Subscription, wake: asyncio.Event) -> AsyncIterator[bytes]:
        idle = 0.0
        try:
            yield b"retry: 2000\n: edgeslm events\n\n"
            while True:
                wake.clear()
                events = subscription.drain()
                dropped = subscription.take_dropped()
                if dropped:
                    yield b"event: dropped\ndata: " + orjson.dumps({"count": dropped}) + b"\n\n"
                for event in events:
                    yield sse(event)
                if subscription.closed or self.edge.stopping():
                    return
                try:
                    await asyncio.wait_for(wake.wait(), SHUTDOWN_POLL_S)
                    idle = 0.0
                except TimeoutError:
                    idle += SHUTDOWN_POLL_S
                    if idle >= KEEPALIVE_S:
                        idle = 0.0
                        yield b": ping\n\n"
        finally:
            subscription.close()

    async def audio_intent(self, request: Request) -> Response:
        voice = self.edge.voice
        if voice is None:
            raise VoiceUnavailableError("voice commands are not configured; add [[voice.intents]] and "
                                        "[voice.vad] model_path to the config")
        act = query_flag(request, "act", default=True)
        body = await read_body(request, self.server.max_body_bytes)
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            body = wav_from_multipart(body, content_type)
        config = self.edge.voice_config
        samples = read_wav(body, sample_rate=config.sample_rate_hz, max_seconds=config.max_seconds)
        try:
            result = await asyncio.wait_for(asyncio.to_thread(voice.run_upload, samples, act=act),
                                            self.server.request_timeout_s)
        except TimeoutError:
            raise DeadlineError(f"the voice pipeline did not answer within {self.server.request_timeout_s:g} s "
                                "(server.request_timeout_s); a capture may be holding it") from None
        answer: dict[str, Any] = {"status": result.status, **result.event_data(), "actions": result.actions}
        return json_response(answer)

    async def gpio_status(self, request: Request) -> Response:
        board = self.edge.board
        if board is None:
            return json_response({"backend": None, "triggers": [], "outputs": []})
        return json_response(board.status())

    async def gpio_press(self, request: Request) -> Response:
        board = self.edge.board
        if board is None:
            raise GpioError("no GPIO backend is running; set [gpio] backend = \"mock\" for simulated presses")
        pin_text = request.path_params["pin"]
        if not pin_text.isdigit():
            raise BadInputError(f"pin {pin_text!r} is not a BCM pin number", param="pin")
        raw = await read_body(request, 4096)
        body = parse(PressRequest, raw if raw.strip() else b"{}")
        board.press(int(pin_text), body.hold_ms)
        return json_response({"pin": int(pin_text), "pressed": True, "hold_ms": body.hold_ms})


class BusyLed:
    """ASGI middleware: the busy LED is on while any inference request is in flight."""

    def __init__(self, app: ASGIApp, edge: EdgeServices):
        self.app, self.edge = app, edge

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        leds = self.edge.leds
        if scope["type"] != "http" or leds is None or not scope["path"].startswith(INFERENCE_PATHS):
            await self.app(scope, receive, send)
            return
        leds.busy(+1)
        try:
            await self.app(scope, receive, send)
        finally:
            leds.busy(-1)


def mount_edge(app: Starlette, edge: EdgeServices | None, config: Config) -> None:
    """Add the edge routes to `app` (and the busy-LED middleware when one is configured)."""
    api = EdgeApi(edge or EdgeServices.idle(), config)
    app.router.routes.extend([
        Route("/v1/events", endpoint(api.events), methods=["GET"]),
        Route("/v1/audio/intent", endpoint(api.audio_intent), methods=["POST"]),
        Route("/v1/gpio", endpoint(api.gpio_status), methods=["GET"]),
        Route("/v1/gpio/{pin}/press", endpoint(api.gpio_press), methods=["POST"]),
    ])
    if config.gpio.busy_led_pin is not None and edge is not None:
        app.add_middleware(BusyLed, edge=edge)
    app.state.edge = api.edge
