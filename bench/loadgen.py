"""A small closed-loop HTTP/1.1 load generator over a Unix socket (keep-alive, N concurrent clients)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import numpy as np


def build_requests(path: str, bodies: Sequence[bytes]) -> list[bytes]:
    return [
        b"POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (path.encode(), len(body), body)
        for body in bodies
    ]


async def _client(sock: str, requests: Sequence[bytes], offset: int, stop_at: float, latencies: list[float],
                  errors: list[int]) -> None:
    reader, writer = await asyncio.open_unix_connection(sock)
    i = offset
    clock = time.perf_counter
    try:
        while clock() < stop_at:
            request = requests[i % len(requests)]
            i += 1
            started = clock()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            latencies.append(clock() - started)
            if not head.startswith(b"HTTP/1.1 200"):
                errors.append(int(head[9:12]))
    finally:
        writer.close()


async def _run(sock: str, requests: Sequence[bytes], clients: int, seconds: float, warmup_s: float) -> dict:
    warm: list[float] = []
    await asyncio.gather(*(_client(sock, requests, c, time.perf_counter() + warmup_s, warm, [])
                           for c in range(clients)))
    latencies: list[float] = []
    errors: list[int] = []
    started = time.perf_counter()
    await asyncio.gather(*(_client(sock, requests, c * 7, started + seconds, latencies, errors)
                           for c in range(clients)))
    elapsed = time.perf_counter() - started
    lat = np.array(latencies) * 1000
    return {"requests": len(latencies), "errors": len(errors), "seconds": elapsed, "rps": len(latencies) / elapsed,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


def run_load(sock: str, requests: Sequence[bytes], *, clients: int, seconds: float, warmup_s: float = 0.5) -> dict:
    """Drive `clients` concurrent keep-alive connections for `seconds`; throughput and latency percentiles."""
    try:
        import uvloop

        return uvloop.run(_run(sock, requests, clients, seconds, warmup_s))
    except ImportError:
        return asyncio.run(_run(sock, requests, clients, seconds, warmup_s))
