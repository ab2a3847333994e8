"""A request to a model, from the handler's start to its answer: after `finish`, the record that waits to be
counted and written."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from edgeslm.core.batcher import Completion

# One engine call a request took part in: (enqueued_at, started_at, finished_at, batch_rows, the request's rows).
Batch = tuple[float, float, float, int, int]


class Finisher(Protocol):
    def finish(self, call: RequestCall, status: str, started_at: float) -> None: ...


def client_request_id(request_id: str | list[tuple[bytes, bytes]] | None) -> str | None:
    """The x-request-id a client sent, if it is one to copy into a log (printable, at most 64 characters)."""
    if isinstance(request_id, list):
        request_id = next((value.decode("latin-1") for name, value in request_id if name == b"x-request-id"), None)
    if request_id is not None and 0 < len(request_id) <= 64 and request_id.isprintable():
        return request_id
    return None


class RequestCall:
    """The server opens one (`Recorder.open`) when it hands a request to a model, reports the batch
    completions with `ran`, and `finish`es it with the status once the response is built. The
    finished call itself is queued for counting and writing.

    The request path does little here on purpose: a few attribute stores, no tuple or dict. What
    the record needs beyond that (its id when the client sent none, the energy, the JSON) is worked
    out later, in bulk. Times are in the recorder's clock; `wall` and `mono` are set by `finish`.
    """

    __slots__ = ("recorder", "model", "task", "rows", "tokens_in", "tokens_out", "request_id", "enqueued", "started",
                 "ended", "batch_rows", "more", "extra", "status", "wall", "mono", "total_s")

    def __init__(self, recorder: Finisher, model: str, task: str, rows: int, tokens_in: int | None = None,
                 request_id: str | list[tuple[bytes, bytes]] | None = None):
        self.recorder = recorder
        self.model, self.task, self.rows, self.tokens_in = model, task, rows, tokens_in
        # The client's x-request-id, or the request's raw ASGI header list to look for it in when the record is
        # written (`client_request_id`): a search the request path need not pay for.
        self.request_id = request_id
        self.tokens_out: int | None = None
        self.enqueued = self.started = self.ended = self.wall = self.mono = self.total_s = 0.0
        self.batch_rows = 0  # rows of its (last) engine call; 0: it never ran
        self.more: tuple[Batch, ...] | None = None  # every engine call of a request split into chunks
        self.extra: dict | None = None  # more fields for its record (voice commands)
        self.status: str | None = None  # "ok" or the error code, once finished

    def ran(self, completions: Sequence[Completion], chunks: Sequence[Mapping[str, Any]]) -> None:
        """The completions of the request's chunks (its feeds, split at max_batch rows), one per chunk."""
        c = completions[-1]
        self.enqueued, self.started, self.ended, self.batch_rows = (c.enqueued_at, c.started_at, c.finished_at,
                                                                    c.batch_rows)
        if len(completions) > 1:
            rows = [len(next(iter(chunk.values()))) for chunk in chunks]
            self.more = tuple([(c.enqueued_at, c.started_at, c.finished_at, c.batch_rows, n)
                               for c, n in zip(completions, rows) if c.batch_rows])

    def finish(self, status: str, started_at: float) -> None:
        """`status` is "ok" or the error code; `started_at` is when the handler began (recorder's clock).
        A second finish is ignored."""
        if self.status is None:
            self.recorder.finish(self, status, started_at)

    def batches(self) -> tuple[Batch, ...]:
        """Every engine call the request took part in."""
        if self.more is not None:
            return self.more
        return ((self.enqueued, self.started, self.ended, self.batch_rows, self.rows),) if self.batch_rows else ()

