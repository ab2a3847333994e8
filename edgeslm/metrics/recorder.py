"""Request records: taken on the request path for almost nothing, given energy and written by a flush thread."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from typing import Any, Protocol

import numpy as np
import orjson

from edgeslm.core.batcher import Completion
from edgeslm.metrics.energy import PowerTrace
from edgeslm.metrics.files import JsonlWriter
from edgeslm.metrics.finished import Batch, FinishedRequest

log = logging.getLogger(__name__)

class RequestObserver(Protocol):
    """What counts finished requests (the Prometheus metrics), in batches."""

    def observe_many(self, finished: Sequence[FinishedRequest]) -> None: ...

    def add_energy(self, joules_by_model: Mapping[str, float]) -> None: ...


class RequestCall:
    """One request to one model, from the handler's start to its answer.

    The server opens it when it hands the request to a model, reports the batch completions
    with `ran`, and `finish`es it with the status once the response is built.
    """

    __slots__ = ("recorder", "model", "task", "rows", "tokens_in", "tokens_out", "request_id", "enqueued", "started",
                 "ended", "batch_rows", "more", "extra", "finished")

    def __init__(self, recorder: Recorder, model: str, task: str, rows: int, tokens_in: int | None,
                 request_id: str | int):
        self.recorder = recorder
        self.model, self.task, self.rows = model, task, rows
        self.tokens_in: int | None = tokens_in
        self.tokens_out: int | None = None
        self.request_id = request_id
        self.enqueued = self.started = self.ended = 0.0
        self.batch_rows = 0
        self.more: tuple[Batch, ...] | None = None
        self.extra: dict[str, Any] | None = None  # more fields for the record (a generation's first_token_ms)
        self.finished = False

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
        """`status` is "ok" or the error code; `started_at` is when the handler began (recorder's clock)."""
        if not self.finished:
            self.finished = True
            self.recorder.finish(self, status, started_at)


_ENDED = itemgetter(12)  # of a FinishedRequest: when its (last) batch ended; 0.0 if it never ran


def _floats(values: np.ndarray) -> list[list[bytes]]:
    """Each float of each row as JSON, the whole array formatted by orjson in one call."""
    values = np.atleast_2d(values)
    items = orjson.dumps(values.ravel().tolist())[1:-1].split(b",")
    n = values.shape[1]
    return [items[i * n:(i + 1) * n] for i in range(len(values))]


class IsoStamp:
    """Unix seconds -> "2025-01-31T08:00:00.123Z", formatting the date part once per second.

    Called from the event loop (requests) and the sampler's thread (samples): each cache is one tuple,
    replaced whole, so a thread never pairs one second with another's text."""

    _MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))
    _MILLIS_BYTES = tuple(m.encode() for m in _MILLIS)

    def __init__(self) -> None:
        self._date: tuple[int, str] = (-1, "")  # (a second, its date part)
        self._latest: tuple[int, str] = (-1, "")  # (a millisecond, its stamp)

    def __call__(self, wall: float) -> str:
        millis = int(wall * 1000)
        latest = self._latest
        if millis == latest[0]:  # requests finish many to a millisecond under load
            return latest[1]
        second, ms = divmod(millis, 1000)
        stamp = self._date_part(second) + self._MILLIS[ms]
        self._latest = (millis, stamp)
        return stamp

    def columns(self, walls: Sequence[float]) -> tuple[list[bytes], list[bytes]]:
        """The stamps of many times as two columns of bytes: up to the second, and the rest."""
        millis = (np.array(walls) * 1000).astype(np.int64)
        seconds, ms = np.divmod(millis, 1000)
        low, high = int(seconds.min()), int(seconds.max())
        if low == high:  # the usual slice: all within one second
            prefixes = [self._date_part(low).encode()] * len(millis)
        else:
            prefixes = [self._date_part(s).encode() for s in seconds.tolist()]
        suffixes = self._MILLIS_BYTES
        return prefixes, [suffixes[m] for m in ms.tolist()]

    def _date_part(self, second: int) -> str:
        cached, text = self._date
        if second != cached:
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._date = (second, text)
        return text


class Recorder:
    """Collects request and sample records; a flush thread counts and writes them every `flush_interval_s`.

    The request path only appends to a queue. `absorb` moves queued requests into the
    counters (the flush thread and every scrape call it); `flush` writes the records.

    Energy per request: the power trace integrated over each batch's run window (the engine
    call), shared among the batch's requests by rows: every row of a padded batch costs the
    same compute. A request split into chunks sums its chunks. A record waits for the first
    power sample after its batch ended (so the window is covered by measurements), at most
    `energy_wait_s`; then it is written with what the trace has. With no request to write,
    sample records are held until `idle_write_s` has passed since the last write.
    """

    def __init__(self, writer: JsonlWriter | None, trace: PowerTrace, *, observer: RequestObserver | None = None,
                 source_name: str = "none", clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time, flush_interval_s: float = 5.0,
                 energy_wait_s: float = 3.0, max_pending: int = 100_000, waits_for_power: bool = True,
                 idle_write_s: float = 60.0, prepare_interval_s: float = 0.5, slice_records: int = 128):
        self.writer = writer
        self.trace = trace
        self.observer = observer
        self.source_name = source_name
        self.clock = clock
        self.wall_clock = wall_clock
        self.flush_interval_s = flush_interval_s
        self.energy_wait_s = energy_wait_s
        self.max_pending = max_pending
        self.waits_for_power = waits_for_power
        self.idle_write_s = idle_write_s
        self.prepare_interval_s = prepare_interval_s
        self.slice_records = slice_records
        self._tick_s = min(flush_interval_s, prepare_interval_s)  # how often records are prepared
        self._lines: list[bytes] = []  # serialised (each ending in a newline), not yet written
        self._last_write = float("-inf")
        self.in_flight = 0
        self.last_finished = float("-inf")
        self.overflowed = 0
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(3).hex()
        self._id_prefix_bytes = self._id_prefix.encode()
        self._stamp = IsoStamp()
        self._json_cache: dict[str, bytes] = {}
        self._finished: deque[FinishedRequest] = deque()  # not yet counted
        self._pending: deque[FinishedRequest] = deque()  # counted, not yet written
        self._samples: deque[dict] = deque(maxlen=1000)
        self._absorb_lock = threading.Lock()
        self._flush_lock = threading.Lock()  # the pending and serialised records
        self._write_lock = threading.Lock()  # the file
        self._event_loop: asyncio.AbstractEventLoop | None = None  # where records are prepared, once one is seen
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def dropped(self) -> int:
        """Records lost: not written (disk) or not even queued (the flush thread fell behind)."""
        return self.overflowed + (self.writer.dropped if self.writer is not None else 0)

    # -- the request path (event loop thread) ------------------------------------------------------------------
    def open(self, model: str, task: str, rows: int, tokens_in: int | None = None,
             request_id: str | None = None) -> RequestCall:
        if self._event_loop is None:
            self._attach()
        self.in_flight += 1
        if request_id is None or not (0 < len(request_id) <= 64 and request_id.isprintable()):
            return RequestCall(self, model, task, rows, tokens_in, next(self._ids))
        return RequestCall(self, model, task, rows, tokens_in, request_id)

    def finish(self, call: RequestCall, status: str, started_at: float) -> None:
        now = self.clock()
        self.in_flight -= 1
        self.last_finished = now
        if len(self._finished) >= self.max_pending:
            self.overflowed += 1
            return
        self._finished.append((self.wall_clock(), now, call.model, call.task, status, call.rows, now - started_at,
                               call.tokens_in, call.tokens_out, call.request_id, call.enqueued, call.started,
                               call.ended, call.batch_rows, call.more, call.extra))

    def record(self, model: str, task: str, status: str, *, started_at: float, ended_at: float,
               extra: dict | None = None) -> None:
        """A piece of work done off the HTTP path (a voice command), from any thread: it is charged the
        energy of its whole window (recorder's clock), and `extra` joins its record."""
        if len(self._finished) >= self.max_pending:
            self.overflowed += 1
            return
        self.last_finished = ended_at
        self._finished.append((self.wall_clock(), ended_at, model, task, status, 1, ended_at - started_at, None,
                               None, next(self._ids), started_at, started_at, ended_at, 1, None, extra))

    def activity(self) -> tuple[int, float]:
        return self.in_flight, self.last_finished

    def add_sample(self, record: dict) -> None:
        """A sampler summary; stamped now and written with the next flush."""
        stamped = {"kind": "sample", "ts": self._stamp(self.wall_clock()), "mono_ns": int(self.clock() * 1e9)}
        stamped.update(record)
        self._samples.append(stamped)

    # -- the flush thread (and scrapes) ------------------------------------------------------------------------
    def absorb(self) -> None:
        """Count the requests finished since the last call; queue their records for writing."""
        with self._absorb_lock:
            finished = self._finished
            taken = [finished.popleft() for _ in range(len(finished))]  # what the event loop adds meanwhile stays
            if not taken:
                return
            if self.observer is not None:
                self.observer.observe_many(taken)
            if self.writer is not None:
                self._pending.extend(taken)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="metrics-writer", daemon=True)
            self._thread.start()

    def _attach(self) -> None:
        """Prepare records on the running event loop from now on (called there by the first request).

        Serialising on the loop's own thread, a slice at a time between requests, was measured cheaper
        than on the flush thread: the two threads' hand-offs of the GIL cost more than the work
        (about 30 us per request at 32 clients on a 2-core VM). The flush thread keeps the file writes,
        which wait on the disk without the GIL."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not on an event loop: the flush thread prepares
        self._event_loop = loop
        loop.call_later(self._tick_s, self._tick)

    def _tick(self) -> None:
        if self._stop.is_set() or self._event_loop is None:
            return
        try:
            more = self.prepare(limit=self.slice_records)
        except Exception:
            log.exception("metrics: preparing records failed; they are kept for the next try")
            more = False
        if more:
            self._event_loop.call_soon(self._tick)
        else:
            self._event_loop.call_later(self._tick_s, self._tick)

    def _loop(self) -> None:
        # Records are written every flush_interval_s; until a request has run on the event loop (or with
        # none, such as a daemon serving only voice commands), they are also prepared here.
        step_s = min(self.flush_interval_s, self.prepare_interval_s)
        write_at = self.clock() + self.flush_interval_s
        while not self._stop.wait(step_s):
            try:
                if self._event_loop is None or self._event_loop.is_closed():
                    self.prepare()
                if self.clock() >= write_at:
                    write_at = self.clock() + self.flush_interval_s
                    self.write()
            except Exception:
                log.exception("metrics flush failed; records kept for the next one")

    def flush(self, *, final: bool = False) -> int:
        """Write every record that is ready (all of them when `final`); returns how many were written."""
        self.prepare(final=final)
        return self.write(final=final)

    def prepare(self, *, final: bool = False, limit: int | None = None) -> bool:
        """Count finished requests and serialise the records whose energy is known (all when `final`), at most
        `limit` of them; True if more are ready."""
        self.absorb()
        if self.writer is None:
            return False
        with self._flush_lock:
            covered = self.trace.last_t
            give_up = self.clock() - self.energy_wait_s
            pending = self._pending
            taken = [pending.popleft() for _ in range(len(pending) if limit is None else min(limit, len(pending)))]
            # Under load every record taken is ready: each batch ended before the last power sample.
            if taken and self.waits_for_power and not final and (covered is None or max(map(_ENDED, taken)) > covered):
                for i, entry in enumerate(taken):
                    ended = entry[12] if entry[13] else None  # chunks run in order: the last ends last
                    if ended is not None and (covered is None or covered < ended) and entry[1] > give_up:
                        pending.extendleft(reversed(taken[i:]))  # waiting for power: these and all after them
                        del taken[i:]
                        break
            if not taken:
                return False
            lines, energy = self._serialise(taken)
            self._lines.extend(lines)
            if energy and self.observer is not None:
                self.observer.add_energy(energy)
            return limit is not None and len(taken) >= limit and bool(pending)

    def _serialise(self, taken: list[FinishedRequest]) -> tuple[list[bytes], dict[str, float]]:
        """The records' lines (each ending in a newline) and their joules by model."""
        plain = self._plain_lines(taken)
        if plain is not None:
            return plain
        energy: dict[str, float] = defaultdict(float)
        batch_j: dict[tuple[float, float], float | None] = {}  # a batch's energy, computed once for its requests
        out = []
        for entry in taken:
            record = self._request_record(entry, batch_j)
            if "energy_j" in record:
                energy[entry[2]] += record["energy_j"]
            # The newline joins each record to a small copy and frees orjson's buffer at once: keeping
            # thousands of orjson's own buffers cost 5-7 us per record here, this costs under 1 us.
            out.append(orjson.dumps(record) + b"\n")
        return out, energy

    def _plain_lines(self, taken: list[FinishedRequest]) -> tuple[list[bytes], dict[str, float]] | None:
        """The usual slice under load, column by column: every request ran in one engine call, none carries extra
        fields, and tokens_in and tokens_out are each given for all or for none. Else None.

        The same lines as `_request_record` + orjson (a test holds them equal), in ~30% less time (in-process):
        numpy does the arithmetic and the timestamps for the whole slice, orjson formats each column of
        floats in one call, and each line is one bytes %-format."""
        (wall, mono, model, task, status, rows, total_s, tokens_in, tokens_out, request_id,
         enqueued, started, ended, batch_rows, more, extra) = zip(*taken)
        n = len(taken)
        if more.count(None) < n or extra.count(None) < n or 0 in batch_rows:
            return None
        optional = []
        for name, column in ((b"tokens_in", tokens_in), (b"tokens_out", tokens_out)):
            missing = column.count(None)
            if not missing:
                optional.append((name, column))
            elif missing < n:
                return None
        start, end = np.array(started), np.array(ended)
        if set(map(type, request_id)) == {int}:  # our serial numbers
            id_format, ids = b'"%s-%%d"' % self._id_prefix_bytes, request_id
        else:
            id_format, ids = b"%s", [orjson.dumps(self._record_id(rid)) for rid in request_id]
        seconds = np.stack([start - np.array(enqueued), end - start, np.array(total_s)])
        queue_ms, run_ms, total_ms = _floats(np.floor(seconds * 1e6 + 0.5) / 1000)
        columns: list[Sequence[Any]] = [
            *self._stamp.columns(wall), (np.array(mono) * 1e9).astype(np.int64).tolist(), ids,
            self._json_strings(model), self._json_strings(task), self._json_strings(status), rows, batch_rows,
            queue_ms, run_ms, total_ms]
        template = (b'{"kind":"request","ts":"%s%s","mono_ns":%d,"id":' + id_format + b',"model":%s,"task":%s,'
                    b'"status":%s,"rows":%d,"batch":%d,"queue_ms":%s,"run_ms":%s,"total_ms":%s')
        for name, column in optional:
            template += b',"%s":%%d' % name
            columns.append(column)
        energy: dict[str, float] = {}
        # One integration per batch: its requests share its start and end times.
        _, first, batch_of = np.unique(start, return_index=True, return_inverse=True)
        if not np.array_equal(end[first][batch_of], end):
            return None  # two models' batches started at the same instant
        batch_j = [self.trace.energy_j(started[i], ended[i]) for i in first.tolist()]
        if None not in batch_j:
            joules = np.floor(np.array(batch_j)[batch_of] * np.array(rows) / np.array(batch_rows) * 1e6 + 0.5) / 1e6
            template += b',"energy_j":%s,"power_source":' + orjson.dumps(self.source_name)
            columns.append(_floats(joules)[0])
            for name, j in zip(model, joules.tolist()):
                energy[name] = energy.get(name, 0.0) + j
        template += b"}\n"
        return [template % values for values in zip(*columns)], energy

    def _record_id(self, request_id: str | int) -> str:
        """A client's id as given; our serial number under this process's prefix."""
        return request_id if request_id.__class__ is str else f"{self._id_prefix}-{request_id}"  # type: ignore[return-value]

    def _json_strings(self, values: Sequence[str]) -> list[bytes]:
        cache = self._json_cache
        try:
            return [cache[v] for v in values]
        except KeyError:
            if len(cache) > 1000:  # statuses and names are few; this only bounds a misuse
                cache.clear()
            for v in values:
                cache.setdefault(v, orjson.dumps(v))
            return [cache[v] for v in values]

    def write(self, *, final: bool = False) -> int:
        """Append the serialised records (and the sample records) to the file; returns how many were written."""
        if self.writer is None:
            return 0
        with self._write_lock:  # in order; the records' lock is not held while the disk is slow
            with self._flush_lock:
                lines, self._lines = self._lines, []
                # Sample records alone (an idle daemon) wait for a minute's worth: each write dirties a page.
                idle = not lines and self.clock() - self._last_write < self.idle_write_s
                samples = []
                while self._samples and not (idle and not final):
                    samples.append(orjson.dumps(self._samples.popleft()) + b"\n")
                lines = samples + lines
                if lines:
                    self._last_write = self.clock()
            return self.writer.write_lines(lines)

    def _request_record(self, entry: FinishedRequest, batch_j: dict[tuple[float, float], float | None]) -> dict:
        (wall, mono, model, task, status, rows, total_s, tokens_in, tokens_out, request_id,
         enqueued, started, ended, batch_rows, more, extra) = entry
        rid = self._record_id(request_id)
        joules: float | None = None
        # Milliseconds to the microsecond: short in JSON.
        if more is None and batch_rows:  # the usual request, one engine call: its fields in one dict literal
            record = {"kind": "request", "ts": self._stamp(wall), "mono_ns": int(mono * 1e9), "id": rid,
                      "model": model, "task": task, "status": status, "rows": rows, "batch": batch_rows,
                      "queue_ms": int((started - enqueued) * 1e6 + 0.5) / 1000,
                      "run_ms": int((ended - started) * 1e6 + 0.5) / 1000,
                      "total_ms": int(total_s * 1e6 + 0.5) / 1000}
            batch = self._batch_energy(started, ended, batch_j)
            if batch is not None:
                joules = batch * rows / batch_rows
        else:
            record = {"kind": "request", "ts": self._stamp(wall), "mono_ns": int(mono * 1e9), "id": rid,
                      "model": model, "task": task, "status": status, "rows": rows}
            if more:  # split into chunks, each in an engine call of its own
                record["batch"] = max(b[3] for b in more)
                record["queue_ms"] = int(max(b[1] - b[0] for b in more) * 1e6 + 0.5) / 1000
                record["run_ms"] = int(sum(b[2] - b[1] for b in more) * 1e6 + 0.5) / 1000
                joules = self._energy(more, batch_j)
            record["total_ms"] = int(total_s * 1e6 + 0.5) / 1000
        if tokens_in is not None:
            record["tokens_in"] = tokens_in
        if tokens_out is not None:
            record["tokens_out"] = tokens_out
        if extra:
            record.update(extra)
        if joules is not None:
            record["energy_j"] = int(joules * 1e6 + 0.5) / 1e6
            record["power_source"] = self.source_name
        return record

    def _energy(self, batches: tuple[Batch, ...], batch_j: dict[tuple[float, float], float | None]) -> float | None:
        """The request's share (its rows of the batch's rows) of each batch's energy, summed."""
        total = None
        for _, started, finished, batch_rows, rows in batches:
            joules = self._batch_energy(started, finished, batch_j)
            if joules is None:
                return None
            total = (total or 0.0) + joules * rows / batch_rows
        return total

    def _batch_energy(self, started: float, ended: float,
                      batch_j: dict[tuple[float, float], float | None]) -> float | None:
        """One engine call's joules, integrated once for all the requests that shared it."""
        window = (started, ended)
        return batch_j[window] if window in batch_j else batch_j.setdefault(window, self.trace.energy_j(started, ended))

    def close(self) -> None:
        """Stop the flush thread and write everything still buffered."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        try:
            self.flush(final=True)
        finally:
            if self.writer is not None:
                self.writer.close()

