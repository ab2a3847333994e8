"""A streamed generation that stops making progress is failed after server.request_timeout_s; waiting for a
KV-cache slot, or events that keep coming, do not count against it."""

from __future__ import annotations

import asyncio

from edgeslm.errors import DeadlineError
from edgeslm.server.completions import _Deadline, _Listener


class FakeGeneration:
    def __init__(self, waiting: bool = False):
        self.waiting = waiting
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def test_no_progress_fails_the_generation_and_progress_keeps_it_alive():
    async def scenario() -> tuple[list, FakeGeneration, list, FakeGeneration]:
        loop = asyncio.get_running_loop()
        # Events every 20 ms for half a second, against a 0.2 s deadline: never failed.
        busy, busy_listener = FakeGeneration(), _Listener(loop)
        deadline = _Deadline(busy_listener, busy, 0.2, "m")
        for _ in range(25):
            busy_listener._put(object())  # type: ignore[arg-type]
            await asyncio.sleep(0.02)
        deadline.cancel()
        # No event at all: failed with DeadlineError, and the generation cancelled.
        stuck, stuck_listener = FakeGeneration(), _Listener(loop)
        _Deadline(stuck_listener, stuck, 0.05, "m")
        item = await asyncio.wait_for(stuck_listener.queue.get(), 10)
        busy_items = [busy_listener.queue.get_nowait() for _ in range(busy_listener.queue.qsize())]
        return busy_items, busy, [item], stuck

    busy_items, busy, stuck_items, stuck = asyncio.run(scenario())
    assert len(busy_items) == 25 and not any(isinstance(i, BaseException) for i in busy_items)
    assert not busy.cancelled
    assert isinstance(stuck_items[0], DeadlineError) and "request_timeout_s" in stuck_items[0].message
    assert stuck.cancelled


def test_waiting_for_a_slot_does_not_count():
    async def scenario() -> tuple[int, FakeGeneration, object]:
        loop = asyncio.get_running_loop()
        queued, listener = FakeGeneration(waiting=True), _Listener(loop)
        _Deadline(listener, queued, 0.05, "m")
        await asyncio.sleep(0.3)  # six deadlines pass while it waits
        failed_while_waiting = listener.queue.qsize()
        queued.waiting = False  # it got a slot and then made no progress
        return failed_while_waiting, queued, await asyncio.wait_for(listener.queue.get(), 10)

    failed_while_waiting, queued, item = asyncio.run(scenario())
    assert failed_while_waiting == 0
    assert isinstance(item, DeadlineError) and queued.cancelled
