"""DynamicBatcher on a fake run function: batching, padding, isolation, back-pressure, cancellation."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edgeslm.core.batcher import Completion, DynamicBatcher
from edgeslm.errors import CancelledError, OverloadedError, ShuttingDownError


class Recorder:
    """run_batch that records batch shapes, can be held closed, and echoes ids * 2."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.fail_when = None

    def __call__(self, feeds):
        self.started.set()
        self.gate.wait(5)
        ids = feeds["ids"]
        self.shapes.append(ids.shape)
        if self.fail_when is not None and np.any(ids == self.fail_when):
            raise RuntimeError("poisoned row")
        return {"doubled": ids * 2, "rowsum": ids.sum(axis=1)}


def collect():
    done: list[Completion] = []
    event = threading.Event()

    def on_done(c: Completion) -> None:
        done.append(c)
        event.set()

    return done, event, on_done


def wait_for(n, done, timeout=5.0):
    deadline = threading.Event()
    for _ in range(int(timeout * 100)):
        if len(done) >= n:
            return
        deadline.wait(0.01)
    raise AssertionError(f"only {len(done)} of {n} completions arrived")


def test_queued_requests_run_as_one_padded_batch(clock):
    run = Recorder()
    batcher = DynamicBatcher(run, clock=clock, pad_values={"ids": 0}, max_batch=8)
    run.gate.clear()
    batcher.start()
    first, _, on_first = collect()
    batcher.submit({"ids": np.array([[1, 2, 3, 4]])}, on_first)  # occupies the worker
    assert run.started.wait(5)
    results = [collect() for _ in range(3)]
    rows = [np.array([[5]]), np.array([[6, 7], [8, 9]]), np.array([[1, 1, 1]])]
    for (_, _, on_done), ids in zip(results, rows):
        batcher.submit({"ids": ids}, on_done)
    run.gate.set()
    for _, event, _ in results:
        assert event.wait(5)
    batcher.stop()
    assert run.shapes == [(1, 4), (4, 3)]  # the three waiting requests ran together, padded to 3
    for (done, _, _), ids in zip(results, rows):
        c = done[0]
        assert c.error is None and c.batch_rows == 4 and c.batch_requests == 3
        np.testing.assert_array_equal(c.outputs["doubled"][:, : ids.shape[1]], ids * 2)
        np.testing.assert_array_equal(c.outputs["rowsum"], ids.sum(axis=1))  # pads add nothing


def _run_queued(batcher, run, rows_list):
    """Hold the worker on a first request, queue `rows_list`, release; the shapes of the batches after it."""
    run.gate.clear()
    batcher.start()
    _, _, on_first = collect()
    batcher.submit({"ids": np.array([[1]])}, on_first)
    assert run.started.wait(5)
    done, _, on_done = collect()
    for ids in rows_list:
        batcher.submit({"ids": ids}, on_done)
    run.gate.set()
    wait_for(len(rows_list), done)
    batcher.stop()
    assert all(c.error is None for c in done)
    return run.shapes[1:]


def test_with_a_cost_texts_share_a_batch_only_while_padding_is_cheaper_than_a_call(clock):
    # A call costs 4 token slots beyond the slots it computes (rows x padded length).
    run = Recorder()
    batcher = DynamicBatcher(run, clock=clock, pad_values={"ids": 0}, max_batch=16,
                             cost=lambda rows, length: 4 + rows * length)
    short = [np.ones((1, 2), np.int64) for _ in range(3)]
    long = np.ones((1, 9), np.int64)
    # Padding a 2-token text to 9 wastes 7 slots, more than its own call (4): the long one runs apart.
    # The other short ones join at no cost; a 3-token one adds 1 slot per row so far (3) < 4: it joins.
    shapes = _run_queued(batcher, run, [short[0], long, short[1], short[2], np.ones((1, 3), np.int64)])
    assert shapes == [(4, 3), (1, 9)]


def test_without_a_cost_every_length_shares_the_batch(clock):
    run = Recorder()
    batcher = DynamicBatcher(run, clock=clock, pad_values={"ids": 0}, max_batch=16)
    shapes = _run_queued(batcher, run, [np.ones((1, 2), np.int64), np.ones((1, 9), np.int64)])
    assert shapes == [(2, 9)]


def test_a_cost_never_splits_equal_lengths(clock):
    run = Recorder()
    calls = []

    def cost(rows, length):
        calls.append((rows, length))
        return rows * length  # no fixed cost: only exact lengths would ever be worth sharing a call

    batcher = DynamicBatcher(run, clock=clock, pad_values={"ids": 0}, max_batch=16, cost=cost)
    shapes = _run_queued(batcher, run, [np.ones((2, 5), np.int64), np.ones((1, 5), np.int64),
                                        np.ones((1, 6), np.int64)])
    assert shapes == [(3, 5), (1, 6)]
    assert calls == [(4, 6), (3, 5), (1, 6)]  # only the 6-token one was weighed: equal lengths join unasked


def test_max_batch_splits_work(clock):
    run = Recorder()
    run.gate.clear()
    batcher = DynamicBatcher(run, clock=clock, pad_values={"ids": 0}, max_batch=2)
    batcher.start()
    done, _, on_done = collect()
    for i in range(5):
        batcher.submit({"ids": np.array([[i + 1]])}, on_done)
    run.gate.set()
    wait_for(5, done)
    batcher.stop()
    assert all(shape[0] <= 2 for shape in run.shapes)
    assert sum(shape[0] for shape in run.shapes) == 5


def test_one_bad_request_fails_alone(clock):
    run = Recorder()
    run.fail_when = 13
    run.gate.clear()
    batcher = DynamicBatcher(run, clock=clock, pad_values={"ids": 0}, max_batch=8)
    batcher.start()
    blocker, _, on_blocker = collect()
    batcher.submit({"ids": np.array([[1]])}, on_blocker)
    assert run.started.wait(5)
    good, _, on_good = collect()
    bad, _, on_bad = collect()
    batcher.submit({"ids": np.array([[2, 3]])}, on_good)
    batcher.submit({"ids": np.array([[13]])}, on_bad)
    batcher.submit({"ids": np.array([[4]])}, on_good)
    run.gate.set()
    wait_for(2, good)
    wait_for(1, bad)
    batcher.stop()
    assert [c.error for c in good] == [None, None]
    assert isinstance(bad[0].error, RuntimeError) and "poisoned" in str(bad[0].error)


def test_full_queue_refuses_at_once(clock):
    run = Recorder()
    run.gate.clear()
    batcher = DynamicBatcher(run, clock=clock, pad_values={"ids": 0}, max_batch=1, max_queue=2)
    batcher.start()
    done, _, on_done = collect()
    batcher.submit({"ids": np.array([[1]])}, on_done)
    assert run.started.wait(5)
    batcher.submit({"ids": np.array([[2]])}, on_done)
    batcher.submit({"ids": np.array([[3]])}, on_done)
    with pytest.raises(OverloadedError) as info:
        batcher.submit({"ids": np.array([[4]])}, on_done)
    assert info.value.retry_after_s >= 1
    run.gate.set()
    wait_for(3, done)
    batcher.stop()
    assert len(done) == 3


def test_cancelled_request_never_runs_and_frees_its_slot(clock):
    run = Recorder()
    run.gate.clear()
    batcher = DynamicBatcher(run, clock=clock, pad_values={"ids": 0}, max_batch=4, max_queue=1)
    batcher.start()
    done, _, on_done = collect()
    batcher.submit({"ids": np.array([[1]])}, on_done)
    assert run.started.wait(5)
    gone, _, on_gone = collect()
    ticket = batcher.submit({"ids": np.array([[99]])}, on_gone)
    ticket.cancel()
    assert isinstance(gone[0].error, CancelledError)
    batcher.submit({"ids": np.array([[2]])}, on_done)  # the slot is free again
    run.gate.set()
    wait_for(2, done)
    batcher.stop()
    assert all(99 not in range(s[0]) for s in run.shapes)
    assert len(gone) == 1  # exactly one completion per request


def test_incompatible_shapes_run_in_separate_batches(clock):
    run = Recorder()
    run.gate.clear()
    batcher = DynamicBatcher(run, clock=clock, pad_values={"ids": 0}, max_batch=8)
    batcher.start()
    done, _, on_done = collect()
    batcher.submit({"ids": np.array([[1]])}, on_done)
    assert run.started.wait(5)
    batcher.submit({"ids": np.array([[1, 2]])}, on_done, pad=False)
    batcher.submit({"ids": np.array([[3, 4, 5]])}, on_done, pad=False)
    batcher.submit({"ids": np.array([[6, 7]])}, on_done, pad=False)
    run.gate.set()
    wait_for(4, done)
    batcher.stop()
    assert sorted(run.shapes[1:]) == [(1, 3), (2, 2)]  # same-shape raw requests merged, others not padded


def test_stop_drains_queue_then_refuses(clock):
    run = Recorder()
    run.gate.clear()
    batcher = DynamicBatcher(run, clock=clock, pad_values={"ids": 0}, max_batch=1)
    batcher.start()
    done, _, on_done = collect()
    for i in range(3):
        batcher.submit({"ids": np.array([[i + 1]])}, on_done)
    threading.Timer(0.05, run.gate.set).start()
    assert batcher.stop(timeout_s=5)
    assert [c.error for c in done] == [None, None, None]
    with pytest.raises(ShuttingDownError):
        batcher.submit({"ids": np.array([[1]])}, on_done)


def test_stop_without_drain_fails_waiting_requests(clock):
    run = Recorder()
    run.gate.clear()
    batcher = DynamicBatcher(run, clock=clock, pad_values={"ids": 0}, max_batch=1)
    batcher.start()
    done, _, on_done = collect()
    batcher.submit({"ids": np.array([[1]])}, on_done)
    assert run.started.wait(5)
    batcher.submit({"ids": np.array([[2]])}, on_done)
    threading.Timer(0.05, run.gate.set).start()
    batcher.stop(drain=False, timeout_s=5)
    errors = sorted(type(c.error).__name__ for c in done)
    assert errors == ["NoneType", "ShuttingDownError"]


def test_times_come_from_the_injected_clock(clock):
    def run(feeds):
        clock.advance(0.25)
        return {"out": feeds["ids"]}

    batcher = DynamicBatcher(run, clock=clock, pad_values={"ids": 0})
    batcher.start()
    done, event, on_done = collect()
    clock.advance(1.0)
    batcher.submit({"ids": np.array([[1]])}, on_done)
    assert event.wait(5)
    batcher.stop()
    assert done[0].enqueued_at == 1.0 and done[0].run_s == pytest.approx(0.25)
