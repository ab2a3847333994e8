"""Recent power samples as a step function, integrated over batch run windows to give joules."""

from __future__ import annotations

import bisect
import threading


class PowerTrace:
    """Watts over time: each sample's value holds over (previous sample time, its time].

    That is exact for counter sources (RAPL, the CPU-load estimate), whose reading is the mean
    since the previous one, and a fair reading of instantaneous meters sampled often. Before the
    first sample the first value holds; after the last, the last. Times are in the sampler's
    clock (time.monotonic in the daemon, the same clock as the batcher's completions). The
    newest `keep` samples (at least) are kept.
    """

    def __init__(self, keep: int = 4096):
        self.keep = keep
        self._times: list[float] = []
        self._watts: list[float] = []
        self._lock = threading.Lock()

    def add(self, t: float, watts: float) -> None:
        with self._lock:
            if self._times and t <= self._times[-1]:
                return
            self._times.append(t)
            self._watts.append(watts)
            if len(self._times) > 2 * self.keep:
                del self._times[: -self.keep], self._watts[: -self.keep]

    @property
    def last_t(self) -> float | None:
        return self._times[-1] if self._times else None

    def energy_j(self, start: float, end: float) -> float | None:
        """Joules drawn over [start, end], or None with no sample yet."""
        with self._lock:
            times, watts = self._times, self._watts
            if not times:
                return None
            if end <= start:
                return 0.0
            # Sample i covers (times[i-1], times[i]]; the first covers all before it, the last all after.
            i = bisect.bisect_left(times, start)
            total, lo = 0.0, start
            while i < len(times) and lo < end:
                hi = min(times[i], end)
                if hi > lo:
                    total += watts[i] * (hi - lo)
                    lo = hi
                i += 1
            if lo < end:
                total += watts[-1] * (end - lo)
            return total

    def mean_w(self, start: float, end: float) -> float | None:
        joules = self.energy_j(start, end)
        return None if joules is None or end <= start else joules / (end - start)
