"""Text generation with continuous batching: one worker thread runs prefill chunks and batched decode steps."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from edgeslm.core.sampling import Sampler, SamplingParams
from edgeslm.core.scheduler import Scheduler, State, Step
from edgeslm.core.scheduler import Sequence as Seq
from edgeslm.errors import BadInputError, EdgeslmError, ShuttingDownError
from edgeslm.tasks.decoder import Decoder
from edgeslm.tasks.textstream import TextStream

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate: prompt token ids, at most `max_tokens` new tokens, how to sample, where to stop."""

    prompt_ids: np.ndarray
    max_tokens: int
    sampling: SamplingParams = SamplingParams()
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False


@dataclass(frozen=True)
class GenerationEvent:
    """New text of one sequence; the last event has `finish_reason` (stop, length, cancelled or error)."""

    text: str
    completion_tokens: int
    prompt_tokens: int
    finish_reason: str | None = None
    error: BaseException | None = None
    # On the last event: (enqueued, first step, finished, share_s) on the generator's clock, where
    # share_s sums each step's duration divided by the sequences in that step (this sequence's share).
    timing: tuple[float, float, float, float] | None = None


OnEvent = Callable[[GenerationEvent], None]


class _Job:
    __slots__ = ("sampler", "stream", "on_event", "request", "enqueued", "started", "share_s")

    def __init__(self, request: GenerationRequest, sampler: Sampler, stream: TextStream, on_event: OnEvent,
                 enqueued: float):
        self.request, self.sampler, self.stream, self.on_event = request, sampler, stream, on_event
        self.enqueued, self.started, self.share_s = enqueued, None, 0.0


class Generation:
    """A submitted request; `cancel()` drops it at the next step and frees its slot."""

    def __init__(self, generator: Generator, seq: Seq):
        self._generator = generator
        self.seq = seq

    def cancel(self) -> None:
        self._generator.scheduler.cancel(self.seq)

    @property
    def done(self) -> bool:
        return self.seq.state is State.DONE

    @property
    def waiting(self) -> bool:
        """Still queued for a KV-cache slot."""
        return self.seq.state is State.WAITING


class Generator:
    """Runs a Decoder for many sequences at once.

    Each loop iteration writes at most one prompt chunk (`prefill_chunk` tokens) and then runs one
    decode step for every sequence that has its prompt cached, so a new request joins the running
    batch at the next step and a long prompt never stalls the others for more than one chunk.
    Events are delivered on the worker thread, in order, exactly one with a finish_reason per request.
    """

    def __init__(self, decoder: Decoder, tokenizer: Tokenizer, *, stop_token_ids: Sequence[int], max_queue: int,
                 prefill_chunk: int, name: str = "generate", clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.stop_ids = frozenset(int(i) for i in stop_token_ids)
        self.scheduler = Scheduler(decoder.slots, max_queue=max_queue, prefill_chunk=prefill_chunk)
        self.name = name
        self.steps = 0
        self.peak_batch = 0  # most sequences decoded in one step so far
        self.finished = {"stop": 0, "length": 0, "cancelled": 0, "error": 0}  # sequences by how they ended
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._deadline_passed = threading.Event()
        self._step = (0.0, 0)  # (start, sequences) of the step running now, for energy shares

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"generate-{self.name}", daemon=True)
        self._thread.start()

    def submit(self, request: GenerationRequest, on_event: OnEvent) -> Generation:
        """Queue a request (OverloadedError when the queue is full); events arrive through `on_event`."""
        prompt = np.asarray(request.prompt_ids, dtype=np.int64)
        if len(prompt) == 0:
            raise BadInputError("the prompt has no tokens; send some text", param="prompt")
        if len(prompt) + request.max_tokens > self.decoder.context:
            raise BadInputError(
                f"the prompt is {len(prompt)} tokens and max_tokens is {request.max_tokens}, over the "
                f"{self.decoder.context}-token context: lower max_tokens or shorten the prompt", param="max_tokens")
        sampler = Sampler(request.sampling, self.decoder.layout.vocab)
        sampler.observe(prompt)
        job = _Job(request, sampler, TextStream(self.tokenizer, request.stop), on_event, self.clock())
        seq = Seq(prompt=prompt, max_new=request.max_tokens, payload=job)
        return Generation(self, self.scheduler.submit(seq))

    def _emit(self, seq: Seq, text: str, finish: str | None = None, error: BaseException | None = None) -> None:
        job: _Job = seq.payload
        if finish is not None:
            self.finished[finish] = self.finished.get(finish, 0) + 1
        timing = None
        if finish is not None:
            now = self.clock()
            began, sharing = self._step
            share = job.share_s + (now - began) / sharing if sharing else job.share_s
            timing = (job.enqueued, now if job.started is None else job.started, now, share)
        event = GenerationEvent(text, seq.generated, len(seq.prompt), finish, error, timing)
        try:
            job.on_event(event)
        except Exception:  # a broken listener must not stop the batch
            log.exception("generation listener failed")

    def _finish(self, seq: Seq, reason: str, text: str = "", error: BaseException | None = None) -> None:
        self.scheduler.finish(seq, reason)
        self._emit(seq, text, reason, error)

    def _accept(self, seq: Seq, token: int) -> None:
        """A token was chosen for `seq`: stream its text and decide whether the sequence goes on."""
        job: _Job = seq.payload
        seq.generated += 1
        if token in self.stop_ids and not job.request.ignore_eos:
            self._finish(seq, "stop", job.stream.close())
            return
        text, stopped = job.stream.push(token)
        if stopped:
            self._finish(seq, "stop", text)
        elif seq.generated >= seq.max_new or seq.cached >= self.decoder.context:
            self._finish(seq, "length", text + job.stream.close())
        else:
            seq.pending = token
            seq.state = State.DECODE
            self._emit(seq, text)

    def _prefill(self, seq: Seq, start: int, stop: int) -> None:
        logits = self.decoder.prefill(seq.slot, seq.prompt[start:stop], start)
        seq.cached = stop
        if stop == len(seq.prompt):
            self._accept(seq, seq.payload.sampler.pick(logits))

    def _decode(self, rows: list[Seq]) -> None:
        width = max(seq.slot for seq in rows) + 1
        tokens = np.zeros(width, np.int64)
        positions = np.zeros(width, np.int32)
        for seq in self.scheduler.running:
            if seq.slot < width:
                # Rows without a decoding sequence write one junk entry at their next free position.
                positions[seq.slot] = seq.cached
        for seq in rows:
            tokens[seq.slot] = seq.pending
        logits = self.decoder.decode(tokens, positions)
        self.peak_batch = max(self.peak_batch, len(rows))
        for seq in rows:
            seq.cached += 1
            self._accept(seq, seq.payload.sampler.pick(logits[seq.slot]))

    def _run(self, step: Step) -> None:
        rows = list(step.decode)
        involved = list(rows)
        if step.prefill is not None:
            involved.append(step.prefill[0])
        began = self.clock()
        for seq in involved:
            if seq.payload.started is None:
                seq.payload.started = began
        self._step = (began, len(involved))
        try:
            if step.prefill is not None:
                seq = step.prefill[0]
                self._prefill(*step.prefill)
                if seq.state is State.DECODE:
                    rows.append(seq)  # its prompt is cached: it decodes in this very step
            if rows:
                self._decode(rows)
        except Exception as exc:
            log.exception("generation step failed on model %s", self.name)
            error = exc if isinstance(exc, EdgeslmError) else BadInputError(
                f"the model could not run this step: {exc}", code="inference_failed")
            for seq in involved:
                if seq.state is not State.DONE:
                    self._finish(seq, "error", error=error)
        finally:
            spent = (self.clock() - began) / len(involved)
            for seq in involved:
                seq.payload.share_s += spent
            self._step = (0.0, 0)

    def _loop(self) -> None:
        while True:
            self.scheduler.wait_for_work(0.5)
            if self._stopping and (self._deadline_passed.is_set() or not self.scheduler.has_work()):
                break
            step = self.scheduler.plan()
            for seq in step.left:
                self._emit(seq, "", "cancelled")
            if step.prefill is not None or step.decode:
                self.steps += 1
                self._run(step)
        for seq in self.scheduler.running:
            self._finish(seq, "cancelled", error=ShuttingDownError("the daemon stopped before this finished"))

    def stop(self, *, timeout_s: float | None = None) -> None:
        """Take no new requests, let running ones finish for up to `timeout_s`, then cancel the rest."""
        for seq in self.scheduler.close():
            self._emit(seq, "", "cancelled", ShuttingDownError("the daemon is stopping; retry on the next one"))
        self._stopping = True
        if self._thread is None:
            return
        self._thread.join(timeout_s)
        self._deadline_passed.set()
        self.scheduler.wake()
        self._thread.join()
