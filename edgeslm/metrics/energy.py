"""Recent power samples as a step function, integrated over batch run windows to give joules."""

from __future__ import annotations

import threading
from collections import deque


class PowerTrace:
    """Watts over time: each sample's value holds over (previous sample time, its time].

    That is exact for counter sources (RAPL, the CPU-load estimate), whose reading is the mean
    since the previous one, and a fair reading of instantaneous meters sampled often. Before the
    first sample the first value holds; after the last, the last. Times are in the sampler's
    clock (time.monotonic in the daemon, the same clock as the batcher's completions).
    """

    def __init__(self, keep: int = 4096):
        self._times: deque[float] = deque(maxlen=keep)
        self._watts: deque[float] = deque(maxlen=keep)
        self._lock = threading.Lock()

    def add(self, t: float, watts: float) -> None:
        with self._lock:
            if self._times and t <= self._times[-1]:
                return
            self._times.append(t)
            self._watts.append(watts)

    @property
    def last_t(self) -> float | None:
        return self._times[-1] if self._times else None

    def energy_j(self, start: float, end: float) -> float | None:
        """Joules drawn over [start, end], or None with no sample yet."""
        if end <= start:
            return 0.0 if self._times else None
        with self._lock:
            times, watts = self._times, self._watts
            if not times:
                return None
            total = 0.0
            if end > times[-1]:
                total += watts[-1] * (end - max(start, times[-1]))
            i = len(times) - 1
            while i >= 0:
                hi = times[i]
                lo = times[i - 1] if i > 0 else float("-inf")
                if lo < end and hi > start:
                    total += watts[i] * (min(end, hi) - max(start, lo))
                if lo <= start:
                    break
                i -= 1
            return total

    def mean_w(self, start: float, end: float) -> float | None:
        joules = self.energy_j(start, end)
        return None if joules is None or end <= start else joules / (end - start)
