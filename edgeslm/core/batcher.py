"""DynamicBatcher: one worker thread per model gathers queued requests into batches and runs them."""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from edgeslm.core.tensors import cheaper_together, pad_stack, split_rows
from edgeslm.errors import CancelledError, OverloadedError, ShuttingDownError

log = logging.getLogger(__name__)

RunBatch = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]
BatchCost = Callable[[int, int], float]  # (rows, padded length) -> cost of running them, in any one unit


@dataclass(frozen=True, slots=True)
class Completion:
    """What happened to one request: its slice of the outputs, or its own error.

    Times are in the units of the injected clock (seconds when it is time.monotonic).
    """

    outputs: dict[str, np.ndarray] | None
    error: BaseException | None
    batch_rows: int
    batch_requests: int
    enqueued_at: float
    started_at: float
    finished_at: float

    @property
    def queue_s(self) -> float:
        return self.started_at - self.enqueued_at

    @property
    def run_s(self) -> float:
        return self.finished_at - self.started_at


class Ticket:
    """A submitted request. `cancel()` drops it if it has not started running."""

    __slots__ = ("feeds", "rows", "length", "key", "on_done", "enqueued_at", "cancelled", "_batcher")

    def __init__(self, batcher: DynamicBatcher, feeds: dict[str, np.ndarray], rows: int, length: int, key: tuple,
                 on_done: Callable[[Completion], None], enqueued_at: float):
        self._batcher = batcher
        self.feeds = feeds
        self.rows = rows
        self.length = length  # along the padded axis 1 (0 when nothing pads)
        self.key = key
        self.on_done = on_done
        self.enqueued_at = enqueued_at
        self.cancelled = False

    def cancel(self) -> None:
        self._batcher._cancel(self)


class DynamicBatcher:
    """Collects requests for one engine into batches of at most `max_batch` rows.

    `submit` never blocks: a full queue raises OverloadedError at once. The worker
    takes whatever is queued (waiting up to `max_delay_s` after the first request
    for more, if asked), pads inputs named in `pad_values` along axis 1 to the
    longest row, concatenates along axis 0, calls `run_batch` once and hands each
    request its rows through `on_done`, on the worker thread. If a batch fails,
    its requests are re-run one by one, so one bad request fails alone.
    Requests only share a batch when their non-padded dims and dtypes agree, and,
    given `cost` (rows, padded length -> what a run costs), when running them
    together costs no more than running them apart: padding a short text to a long
    one is worth it only while the padding is cheaper than a call of its own.
    """

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        clock: Callable[[], float],
        pad_values: Mapping[str, int | float] | None = None,
        max_batch: int = 32,
        max_delay_s: float = 0.0,
        max_queue: int = 256,
        inline_max_s: float = 0.0,
        cost: BatchCost | None = None,
        name: str = "model",
    ):
        self._run_batch = run_batch
        self._clock = clock
        self._pad_values = dict(pad_values or {})
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self.inline_max_s = inline_max_s
        self.cost = cost
        self.name = name
        self._queue: deque[Ticket] = deque()
        self._queued_rows = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._running = False  # a batch is in the engine (on the worker, or inline on a caller)
        self._batch_s = 0.0  # moving average of one batch's run time, for Retry-After and inlining
        self.batches_run = 0
        self.inline_runs = 0

    # -- client side ---------------------------------------------------------
    def submit(self, feeds: Mapping[str, np.ndarray], on_done: Callable[[Completion], None], *,
               pad: bool = True, alone: bool = False) -> Ticket:
        """Queue one request of n rows; `on_done` is called exactly once.

        With pad=False (raw tensors) the request only shares a batch with others of exactly its shapes.
        With alone=True the caller vouches that no other request is on its way; if the engine is then
        idle and its batches take at most `inline_max_s`, the request runs at once in the caller's
        thread: two thread wake-ups cost more than such a run, and there is nothing to batch with.
        `on_done` is then called before submit returns.
        """
        feeds = dict(feeds)
        rows = next(iter(feeds.values())).shape[0]
        length = max((a.shape[1] for name, a in feeds.items() if pad and name in self._pad_values and a.ndim >= 2),
                     default=0)
        key = (pad, *(
            (name, a.dtype.str, a.shape[2:] if pad and name in self._pad_values else a.shape[1:])
            for name, a in sorted(feeds.items())
        ))
        with self._cond:
            if self._stopping:
                raise ShuttingDownError(f"model {self.name!r} is shutting down; retry on the next daemon")
            if len(self._queue) >= self.max_queue:
                raise OverloadedError(
                    f"model {self.name!r} has {len(self._queue)} requests queued (max_queue); retry shortly",
                    retry_after_s=self._retry_after_s(),
                )
            ticket = Ticket(self, feeds, rows, length, key, on_done, self._clock())
            inline = (alone and not self._running and not self._queue and rows <= self.max_batch
                      and self._batch_s <= self.inline_max_s and self.batches_run > 0)
            if inline:
                self._running = True
            else:
                self._queue.append(ticket)
                self._queued_rows += rows
                self._cond.notify()
        if inline:
            try:
                self.inline_runs += 1
                self._run([ticket])
            finally:
                with self._cond:
                    self._running = False
                    if self._queue or self._stopping:  # the worker waits on these; waking it for nothing costs the GIL
                        self._cond.notify()
        return ticket

    def _retry_after_s(self) -> int:
        batches_ahead = self._queued_rows / max(self.max_batch, 1)
        return max(1, math.ceil(batches_ahead * self._batch_s))

    def _cancel(self, ticket: Ticket) -> None:
        with self._cond:
            if ticket.cancelled:
                return
            ticket.cancelled = True
            try:
                self._queue.remove(ticket)
            except ValueError:
                return  # already taken by the worker; it checks the flag before running
            self._queued_rows -= ticket.rows
        self._deliver(ticket, None, CancelledError("request cancelled before it ran"), 0, 0, self._clock(), 0.0)

    @property
    def padded_inputs(self) -> frozenset[str]:
        """The inputs padded along axis 1 when requests share a batch (token ids, masks)."""
        return frozenset(self._pad_values)

    @property
    def depth(self) -> int:
        """Requests waiting (not yet running)."""
        return len(self._queue)

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=f"batch-{self.name}", daemon=True)
            self._thread.start()

    def stop(self, *, drain: bool = True, timeout_s: float | None = None) -> bool:
        """Refuse new work; run (drain) or fail what is queued; True if the worker ended in time."""
        with self._cond:
            self._stopping = True
            dropped = [] if drain else list(self._queue)
            if not drain:
                self._queue.clear()
                self._queued_rows = 0
            self._cond.notify_all()
        for ticket in dropped:
            self._deliver(ticket, None, ShuttingDownError("daemon stopped before this request ran"), 0, 0,
                          self._clock(), 0.0)
        if self._thread is not None:
            self._thread.join(timeout_s)
            return not self._thread.is_alive()
        return True

    # -- worker side ---------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                while (not self._queue or self._running) and not self._stopping:
                    self._cond.wait()
                while self._running:  # stopping, but an inline run still owns the engine
                    self._cond.wait()
                if not self._queue:
                    return
                if self.max_delay_s > 0 and not self._stopping:
                    deadline = self._queue[0].enqueued_at + self.max_delay_s
                    while self._queued_rows < self.max_batch and not self._stopping:
                        remaining = deadline - self._clock()
                        if remaining <= 0:
                            break
                        self._cond.wait(remaining)
                        if not self._queue:
                            break
                batch = self._take()
                self._running = bool(batch)
            if batch:
                try:
                    self._run(batch)
                finally:
                    with self._cond:
                        self._running = False

    def _take(self) -> list[Ticket]:
        """Pop the first request and every later compatible one that still fits (caller holds the lock)."""
        if not self._queue:
            return []
        first = self._queue.popleft()
        batch, rows, rest = [first], first.rows, deque()
        cost, length = self.cost, first.length
        while self._queue:
            ticket = self._queue.popleft()
            fits = ticket.key == first.key and rows + ticket.rows <= self.max_batch
            if fits and cost is not None and ticket.length != length:
                fits = cheaper_together(cost, rows, length, ticket.rows, ticket.length)
                length = max(length, ticket.length) if fits else length
            if fits:
                batch.append(ticket)
                rows += ticket.rows
            else:
                rest.append(ticket)
                if rows >= self.max_batch:
                    break
        rest.extend(self._queue)
        self._queue = rest
        self._queued_rows -= rows
        return batch

    def _run(self, batch: list[Ticket]) -> None:
        started = self._clock()
        live = []
        for ticket in batch:
            if ticket.cancelled:
                self._deliver(ticket, None, CancelledError("request cancelled before it ran"), 0, 0, started, started)
            else:
                live.append(ticket)
        if not live:
            return
        rows = sum(t.rows for t in live)
        try:
            feeds = {
                name: pad_stack([t.feeds[name] for t in live], self._pad_values[name])
                if live[0].key[0] and name in self._pad_values and live[0].feeds[name].ndim >= 2
                else (live[0].feeds[name] if len(live) == 1 else np.concatenate([t.feeds[name] for t in live]))
                for name in live[0].feeds
            }
            outputs = dict(self._run_batch(feeds))
        except Exception as exc:
            if len(live) > 1:
                for ticket in live:
                    self._run([ticket])
                return
            finished = self._clock()
            self._deliver(live[0], None, exc, rows, 1, started, finished)
            return
        finished = self._clock()
        self.batches_run += 1
        self._batch_s = 0.8 * self._batch_s + 0.2 * (finished - started) if self._batch_s else finished - started
        for ticket, piece in zip(live, split_rows(outputs, [t.rows for t in live])):
            self._deliver(ticket, piece, None, rows, len(live), started, finished)

    def _deliver(self, ticket: Ticket, outputs: dict[str, np.ndarray] | None, error: BaseException | None,
                 rows: int, requests: int, started: float, finished: float) -> None:
        try:
            ticket.on_done(Completion(outputs, error, rows, requests, ticket.enqueued_at, started, finished))
        except Exception:
            log.exception("batcher %s: a completion callback failed", self.name)
