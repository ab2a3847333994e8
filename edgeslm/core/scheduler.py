"""Continuous batching bookkeeping: KV-cache slots, admission, and what each engine step runs."""

from __future__ import annotations

import enum
import itertools
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeslm.errors import OverloadedError, ShuttingDownError


class State(enum.Enum):
    WAITING = "waiting"  # queued for a slot
    PREFILL = "prefill"  # has a slot; prompt not yet all in the cache
    DECODE = "decode"  # one token per step
    DONE = "done"


@dataclass(eq=False)
class Sequence:
    """One generation request as the scheduler sees it. `payload` belongs to the caller (sampler, callbacks...)."""

    prompt: np.ndarray
    max_new: int
    payload: Any = None
    id: int = 0
    slot: int = -1
    cached: int = 0  # tokens already written to the KV cache
    pending: int = -1  # the last chosen token, not yet in the cache
    generated: int = 0
    state: State = State.WAITING
    cancelled: bool = False
    finish_reason: str | None = None


@dataclass
class Step:
    """One iteration of the engine loop.

    prefill: (sequence, start, stop) to write prompt[start:stop] to its slot, or None.
    decode: sequences that each feed their pending token; `width` rows (slots 0..width-1) run.
    left: sequences that left since the last step (cancelled); their slots are free again.
    """

    prefill: tuple[Sequence, int, int] | None
    decode: list[Sequence]
    width: int
    left: list[Sequence] = field(default_factory=list)


class Scheduler:
    """Admits sequences into `slots` KV-cache slots and plans steps: one prefill chunk, then one decode row per
    decoding sequence. A sequence joins the decode batch the step after its prompt is cached; one that
    finishes or is cancelled frees its slot before the next step. Thread-safe: submit and cancel come from
    request threads, plan / finish from the engine worker.
    """

    def __init__(self, slots: int, *, max_queue: int, prefill_chunk: int):
        if slots < 1 or prefill_chunk < 1:
            raise ValueError("slots and prefill_chunk must be at least 1")
        self.slots = slots
        self.max_queue = max_queue
        self.prefill_chunk = prefill_chunk
        self._by_slot: list[Sequence | None] = [None] * slots
        self._waiting: deque[Sequence] = deque()
        self._left: list[Sequence] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self.closed = False

    def submit(self, seq: Sequence) -> Sequence:
        with self._lock:
            if self.closed:
                raise ShuttingDownError("the model is shutting down; retry on the next daemon")
            if len(self._waiting) >= self.max_queue:
                raise OverloadedError(f"{len(self._waiting)} generations are already waiting for a slot; retry soon")
            seq.id = next(self._ids)
            seq.state = State.WAITING
            self._waiting.append(seq)
            self._work.notify()
        return seq

    def cancel(self, seq: Sequence) -> None:
        """Drop a sequence: at once if it waits, at the next step if it runs."""
        with self._lock:
            if seq.state is State.DONE or seq.cancelled:
                return
            seq.cancelled = True
            if seq.state is State.WAITING:
                self._waiting.remove(seq)
                seq.state, seq.finish_reason = State.DONE, "cancelled"
                self._left.append(seq)
            self._work.notify()

    def finish(self, seq: Sequence, reason: str) -> None:
        """The engine worker is done with `seq` (stop, length, error): free its slot."""
        with self._lock:
            self._release(seq, reason)

    def _release(self, seq: Sequence, reason: str) -> None:
        if seq.slot >= 0 and self._by_slot[seq.slot] is seq:
            self._by_slot[seq.slot] = None
        seq.slot, seq.state, seq.finish_reason = -1, State.DONE, reason

    def _admit(self) -> None:
        for slot, holder in enumerate(self._by_slot):
            if not self._waiting:
                return
            if holder is None:
                seq = self._waiting.popleft()
                seq.slot, seq.state, seq.cached = slot, State.PREFILL, 0
                self._by_slot[slot] = seq

    @property
    def running(self) -> list[Sequence]:
        return [s for s in self._by_slot if s is not None]

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def has_work(self) -> bool:
        return bool(self._waiting or self._left or any(s is not None for s in self._by_slot))

    def plan(self) -> Step:
        """What to run now (possibly nothing: check `prefill` and `decode`)."""
        with self._lock:
            left, self._left = self._left, []
            for seq in self._by_slot:
                if seq is not None and seq.cancelled:
                    self._release(seq, "cancelled")
                    left.append(seq)
            self._admit()
            prefill = None
            # Oldest first: the lowest id among sequences still writing their prompt.
            filling = [s for s in self._by_slot if s is not None and s.state is State.PREFILL]
            if filling:
                seq = min(filling, key=lambda s: s.id)
                stop = min(len(seq.prompt), seq.cached + self.prefill_chunk)
                prefill = (seq, seq.cached, stop)
            decode = [s for s in self._by_slot if s is not None and s.state is State.DECODE]
            width = max((s.slot for s in decode), default=-1) + 1
            return Step(prefill, decode, width, left)

    def wait_for_work(self, timeout_s: float | None = None) -> bool:
        """Block the worker until something is queued, running or cancelled (or `close` is called)."""
        with self._work:
            return self._work.wait_for(lambda: self.closed or self.has_work(), timeout_s)

    def wake(self) -> None:
        """Wake a worker blocked in wait_for_work (to notice a stop)."""
        with self._work:
            self._work.notify_all()

    def close(self) -> list[Sequence]:
        """Refuse new work; hand back the sequences still waiting so the caller can fail them."""
        with self._lock:
            self.closed = True
            waiting, self._waiting = list(self._waiting), deque()
            for seq in waiting:
                seq.state, seq.finish_reason = State.DONE, "cancelled"
            self._work.notify_all()
            return waiting
