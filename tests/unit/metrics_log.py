"""A generated metrics log whose stats are known in advance."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson

from edgeslm.metrics.files import JsonlWriter


def iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def write_known_log(folder: Path, start: float) -> None:
    """Two hours from `start` (a whole UTC hour).

    Hour 1: model a, 100 ok requests, total_ms 1..100, 1 row alone in its batch, run 10 ms, 0.05 J.
    Hour 2: model a, 10 overloaded; model b, 50 ok requests, total_ms 2..100 step 2, 2 rows of a 4-row batch,
    run 20 ms, 0.1 J. Samples every 10 s: 3 W in hour 1, 5 W in hour 2, idle 2 W, 50 then 60 C; throttled
    (now) in samples 100-102 and 200: two episodes; the last sample says under-voltage since boot.
    """
    records = []
    for i in range(100):
        records.append({"kind": "request", "ts": iso(start + 10 * i + 5), "model": "a", "task": "classify",
                        "status": "ok", "rows": 1, "batch": 1, "queue_ms": 0.1, "run_ms": 10.0,
                        "total_ms": float(i + 1), "energy_j": 0.05, "power_source": "fake"})
    for i in range(10):
        records.append({"kind": "request", "ts": iso(start + 3600 + i), "model": "a", "task": "classify",
                        "status": "overloaded", "rows": 1, "total_ms": 0.2})
    for i in range(50):
        records.append({"kind": "request", "ts": iso(start + 3700 + 10 * i), "model": "b", "task": "embed",
                        "status": "ok", "rows": 2, "batch": 4, "run_ms": 20.0, "total_ms": float(2 * (i + 1)),
                        "energy_j": 0.1, "power_source": "fake"})
    for i in range(720):
        sample = {"kind": "sample", "ts": iso(start + 10 * i + 9), "source": "fake", "n": 10,
                  "w": 3.0 if i < 360 else 5.0, "idle_w": 2.0, "temp_c": 50.0 if i < 360 else 60.0,
                  "throttled": 0x50005 if 100 <= i <= 102 else 0x8 if i == 200 else 0}
        if i == 719:
            sample["throttled"] = 0x10000
        records.append(sample)
    records.sort(key=lambda r: r["ts"])
    writer = JsonlWriter(folder, rotate_bytes=64 << 10, budget_bytes=10 << 20)
    for i in range(0, len(records), 50):
        writer.write([orjson.dumps(r) for r in records[i: i + 50]])
    writer.close()
