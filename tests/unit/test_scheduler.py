"""Continuous-batching bookkeeping: slots, admission, prefill chunks, decode rows, cancellation, back-pressure."""

from __future__ import annotations

import numpy as np
import pytest

from edgeslm.core.scheduler import Scheduler, Sequence, State
from edgeslm.errors import OverloadedError, ShuttingDownError


def seq(prompt_len: int = 4, max_new: int = 8) -> Sequence:
    return Sequence(prompt=np.arange(prompt_len), max_new=max_new)


def start_decoding(s: Sequence) -> None:
    """What the worker does once a prompt is cached."""
    s.cached = len(s.prompt)
    s.state = State.DECODE


def test_sequences_take_the_lowest_free_slots_in_order():
    sched = Scheduler(2, max_queue=8, prefill_chunk=16)
    a, b, c = sched.submit(seq()), sched.submit(seq()), sched.submit(seq())
    step = sched.plan()
    assert (a.slot, b.slot, c.slot) == (0, 1, -1)
    assert c.state is State.WAITING and sched.waiting == 1
    assert step.prefill == (a, 0, 4)  # the oldest prompt first


def test_long_prompts_are_written_in_chunks():
    sched = Scheduler(1, max_queue=8, prefill_chunk=3)
    a = sched.submit(seq(prompt_len=7))
    assert sched.plan().prefill == (a, 0, 3)
    a.cached = 3
    assert sched.plan().prefill == (a, 3, 6)
    a.cached = 6
    assert sched.plan().prefill == (a, 6, 7)


def test_a_new_sequence_joins_the_decode_batch_at_the_next_step():
    sched = Scheduler(4, max_queue=8, prefill_chunk=16)
    a = sched.submit(seq())
    sched.plan()
    start_decoding(a)
    b = sched.submit(seq())
    step = sched.plan()
    assert step.decode == [a] and step.prefill == (b, 0, 4)  # b prefills while a decodes
    start_decoding(b)
    step = sched.plan()
    assert step.decode == [a, b] and step.width == 2 and step.prefill is None


def test_finishing_frees_the_slot_for_a_waiting_sequence():
    sched = Scheduler(1, max_queue=8, prefill_chunk=16)
    a, b = sched.submit(seq()), sched.submit(seq())
    sched.plan()
    start_decoding(a)
    assert sched.plan().decode == [a] and b.state is State.WAITING
    sched.finish(a, "stop")
    step = sched.plan()
    assert a.state is State.DONE and a.slot == -1
    assert b.slot == 0 and step.prefill == (b, 0, 4) and step.decode == []


def test_cancel_running_leaves_at_the_next_step_and_cancel_waiting_at_once():
    sched = Scheduler(1, max_queue=8, prefill_chunk=16)
    a, b, c = sched.submit(seq()), sched.submit(seq()), sched.submit(seq())
    sched.plan()
    start_decoding(a)
    sched.cancel(c)
    assert c.state is State.DONE and c.finish_reason == "cancelled" and sched.waiting == 1
    sched.cancel(a)
    step = sched.plan()
    assert set(step.left) == {a, c}
    assert a.finish_reason == "cancelled" and b.slot == 0 and step.decode == []


def test_width_covers_the_highest_decoding_slot():
    sched = Scheduler(3, max_queue=8, prefill_chunk=16)
    a, b, c = sched.submit(seq()), sched.submit(seq()), sched.submit(seq())
    sched.plan()
    for s in (a, b, c):
        start_decoding(s)
    sched.finish(b, "length")
    step = sched.plan()
    assert step.decode == [a, c] and step.width == 3  # slot 1 is idle inside the batch


def test_full_queue_and_closed_scheduler_refuse_new_work():
    sched = Scheduler(1, max_queue=2, prefill_chunk=16)
    sched.submit(seq())
    sched.submit(seq())
    with pytest.raises(OverloadedError):
        sched.submit(seq())
    waiting = sched.close()
    assert len(waiting) == 2 and all(s.finish_reason == "cancelled" for s in waiting)
    with pytest.raises(ShuttingDownError):
        sched.submit(seq())


def test_wait_for_work_returns_when_work_arrives():
    sched = Scheduler(1, max_queue=2, prefill_chunk=16)
    assert sched.wait_for_work(0.01) is False
    sched.submit(seq())
    assert sched.wait_for_work(0.01) is True
