"""What an engine call costs beyond the tokens it computes: measured once at load, it tells the batcher
when padding a short text to a long one's length is cheaper than giving it a call of its own."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from edgeslm.runtime.base import Engine
from edgeslm.tasks.text import TextEncoder

SHORT_TOKENS = 16  # the length both timed batches use (the shortest seq bucket on fixed-shape models)
MANY_ROWS = 8  # rows of the second batch (the next batch bucket up on fixed-shape models)


def token_feeds(encoder: TextEncoder, rows: int, length: int) -> dict[str, np.ndarray]:
    """Feeds of `rows` identical texts of exactly `length` tokens (real ids, every position unmasked)."""
    one = encoder.encode(["turn on the kitchen light"]).feeds
    return {name: np.ascontiguousarray(np.broadcast_to(np.resize(array[0], length), (rows, length)))
            for name, array in one.items()}


def measure_call_tokens(engine: Engine, encoder: TextEncoder, *, budget_s: float = 1.0,
                        clock: Callable[[], float] = time.perf_counter) -> float | None:
    """The fixed cost of one call of `engine`, in token slots (rows x positions); call it before
    `engine.set_call_tokens`.

    Times a batch of one short text and one of several (each the fastest of its runs, alternating, within
    about `budget_s`) and fits time = fixed + per_slot * slots through the two; fixed / per_slot
    is the answer. None when the two cannot tell them apart (the bigger batch ran no slower): the batcher
    then pads as it always did.
    """
    length = min(min(engine.seq_buckets) if engine.seq_buckets else SHORT_TOKENS, encoder.max_len)
    small, many = 1, MANY_ROWS
    if engine.batch_buckets:  # two batch buckets, each run as one call
        small, *bigger = sorted(engine.batch_buckets)
        if not bigger:
            return None  # one batch size: rows never share a call, so padding rows is never weighed
        many = bigger[0]
    feeds = {rows: token_feeds(encoder, rows, length) for rows in (small, many)}
    best = {rows: float("inf") for rows in feeds}
    started = clock()
    # The first round warms up (first-run allocations) and is timed too: a model so big that it alone
    # fills the budget is measured by it. Then rounds alternate until the budget, at most 20.
    for _ in range(21):
        for rows, batch in feeds.items():
            t0 = clock()
            engine.run(batch)
            best[rows] = min(best[rows], clock() - t0)
        if clock() - started >= budget_s:
            break
    slots = {rows: engine.batch_cost(rows, length) for rows in feeds}  # call_tokens not yet set: slots alone
    per_slot = (best[many] - best[small]) / (slots[many] - slots[small])
    if per_slot <= 0:
        return None
    return max(0.0, best[small] / per_slot - slots[small])
