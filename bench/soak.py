"""Months of uptime, compressed: does a busy daemon's memory, file descriptors or disk use keep growing?

Run: make bench-soak   (or: .venv/bin/python bench/soak.py --minutes 10)

A daemon with the default [metrics] serves the bundled intents model while bench/loadgen.py
drives it with 32 keep-alive clients, reconnecting every 20 s, sending a mix of requests:
one text, sixteen texts, /metrics scrapes, and every kind of bad input (malformed JSON, an
unknown model, an empty list, too many texts, a wrong type, a too-long text with
truncate=false). Beside them a thread keeps opening connections that go away mid-body or
before reading their answer. Every --every seconds the daemon's resident memory, open file
descriptors, threads and record-file bytes are sampled. At the end the daemon must still be
ready, and must stop cleanly on SIGTERM with its socket removed.

This is a measurement, not a test: it prints the series and the growth after the warm-up
(the first minute), and says what it saw.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from loadgen import build_requests, run_load  # noqa: E402
from metrics import start_daemon, stop, texts  # noqa: E402

WARMUP_S = 60.0
BUDGET_BYTES = 64 * 1024**2  # [metrics] disk_budget_bytes, default


def mixed_requests() -> tuple[list[bytes], int]:
    """The requests the clients cycle through, and how many of them are bad input."""
    phrases = texts()
    good = [json.dumps({"model": "intents", "input": [t]}).encode() for t in phrases]
    many = [json.dumps({"model": "intents", "input": phrases[i:i + 16]}).encode() for i in range(0, 64, 16)]
    bad = [b"{not json", json.dumps({"model": "nope", "input": ["x"]}).encode(),
           json.dumps({"model": "intents", "input": []}).encode(),
           json.dumps({"model": "intents", "input": ["x"] * 500}).encode(),
           json.dumps({"model": "intents", "input": 5}).encode(),
           json.dumps({"model": "intents", "input": ["word " * 400], "truncate": False}).encode()]
    scrape = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n"
    return build_requests("/v1/classify", good * 3 + many + bad) + [scrape], len(bad)


def rude_clients(sock: str, until: float) -> int:
    """Connections that leave mid-body, or right after sending a whole request; how many were made."""
    body = json.dumps({"model": "intents", "input": ["turn on the light"]}).encode()
    whole = build_requests("/v1/classify", [body])[0]
    made = 0
    while time.monotonic() < until:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(sock)
            s.sendall(whole[: len(whole) - 10] if made % 2 else whole)
        made += 1
        time.sleep(0.05)
    return made


def sample(pid: int, folder: Path) -> dict:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    status = {key: value for key, _, value in (line.partition(":") for line in lines)}
    return {"rss_mb": int(status["VmRSS"].split()[0]) / 1024, "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": int(status["Threads"]),
            "record_bytes": sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to drive the daemon (default 10)")
    parser.add_argument("--every", type=float, default=30.0, help="seconds between samples (default 30)")
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    seconds = args.minutes * 60
    requests, bad = mixed_requests()
    with tempfile.TemporaryDirectory(prefix="edgeslm-bench-soak-") as tmp:
        proc, sock, folder = start_daemon(Path(tmp), "soak", True)
        started = time.monotonic()
        until = started + seconds
        samples: list[tuple[float, dict]] = [(0.0, sample(proc.pid, folder))]

        def sampler() -> None:
            while (wait := min(args.every, until - time.monotonic())) > 0:
                time.sleep(wait)
                samples.append((time.monotonic() - started, sample(proc.pid, folder)))

        rude: list[int] = []
        threads = [threading.Thread(target=sampler),
                   threading.Thread(target=lambda: rude.append(rude_clients(str(sock), until)))]
        for t in threads:
            t.start()
        done = failed = 0
        while (left := until - time.monotonic()) > 0.5:
            run = run_load(str(sock), requests, clients=args.clients, seconds=min(20.0, left), warmup_s=0)
            done += run["requests"]
            failed += run["errors"]
        for t in threads:
            t.join()
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock))) as client:
            ready = client.get("http://localhost/ready").status_code
        stop(proc)
        exit_code, socket_left = proc.returncode, sock.exists()

    print(f"soak: {args.minutes:g} min, {args.clients} clients, {done} requests ({done / seconds:.0f}/s), "
          f"{failed / max(1, done):.2%} answered with an error ({bad / len(requests):.2%} of the mix is bad input); "
          f"{rude[0] if rude else 0} connections dropped mid-request\n")
    print(f"{'s':>6} {'RSS MB':>7} {'fds':>5} {'threads':>8} {'record MB':>10}")
    for at, s in samples:
        print(f"{at:6.0f} {s['rss_mb']:7.1f} {s['fds']:5d} {s['threads']:8d} {s['record_bytes'] / 2**20:10.1f}")
    first_at, first = next(((at, s) for at, s in samples if at >= WARMUP_S), samples[-1])
    last_at, last = samples[-1]
    span_min = (last_at - first_at) / 60
    print(f"\nafter the first minute: RSS {first['rss_mb']:.1f} -> {last['rss_mb']:.1f} MB "
          f"({last['rss_mb'] - first['rss_mb']:+.1f} MB over {span_min:.1f} min); fds {first['fds']} -> {last['fds']}; "
          f"threads {first['threads']} -> {last['threads']}")
    most = max(s["record_bytes"] for _, s in samples)
    print(f"record files peaked at {most / 2**20:.1f} MiB against the {BUDGET_BYTES / 2**20:.0f} MiB disk budget "
          f"({'within' if most <= BUDGET_BYTES else 'OVER'} it)")
    print(f"at the end: /ready {ready}; SIGTERM exit status {exit_code}; socket file "
          f"{'LEFT BEHIND' if socket_left else 'removed'}")
    return 0 if ready == 200 and exit_code == 0 and not socket_left and most <= BUDGET_BYTES else 1


if __name__ == "__main__":
    raise SystemExit(main())
