"""A finished request as it waits to be counted and written: a flat tuple, cheap for the request path."""

from __future__ import annotations

# One engine call a request took part in: (enqueued_at, started_at, finished_at, batch_rows, the request's rows).
Batch = tuple[float, float, float, int, int]


# A request as queued for counting and writing: (wall, mono, model, task, status, rows, total_s, tokens_in,
# tokens_out, request id (a client's string, or our serial number), then its (last) batch: enqueued_at,
# started_at, finished_at, batch_rows (0: it never ran), `more`: every batch of a request split into
# chunks, else None, and `extra`: more fields for its record (voice commands), else None). For an HTTP
# request a flat tuple of numbers and strings: cheap to make, and the garbage collector stops tracking it
# at its first pass, so thousands of them waiting for the next write cost no collection time.
FinishedRequest = tuple[float, float, str, str, str, int, float, int | None, int | None, str | int,
                        float, float, float, int, tuple[Batch, ...] | None, dict | None]


def batches_of(entry: FinishedRequest) -> tuple[Batch, ...]:
    """Every engine call the request took part in."""
    if entry[14] is not None:
        return entry[14]
    return ((entry[10], entry[11], entry[12], entry[13], entry[5]),) if entry[13] else ()
