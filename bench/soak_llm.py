"""Months of uptime for text generation, compressed: does a daemon serving SmolLM2 leak memory, descriptors,
threads or KV-cache slots under a mix of good, bad and abandoned requests?

Run: make bench-soak-llm   (or: .venv/bin/python bench/soak_llm.py --minutes 10)

A daemon with the default [metrics] serves SmolLM2 (built once into .cache/smollm2, as `make test-llm`
does) with 4 KV-cache slots, while more clients than slots (6 by default) loop over a mix: a
streamed chat read to the end, a sampled completion, a greedy completion with a stop sequence, a
stream the client closes after its second chunk, a client that sends a request and hangs up at
once, and bad input (a prompt longer than the context, a wrong type, an unknown field, a
negative max_tokens, a model that does not generate). Every --every seconds the daemon's resident
memory, open file descriptors, threads and record-file bytes are sampled.

At the end the daemon must report no sequence running or waiting (every slot came back), four
concurrent completions must all succeed, no request may have had a 5xx, and it must stop
cleanly on SIGTERM with its socket removed. This is a measurement, not a test: it prints the
series and the growth after the warm-up (the first minute), and says what it saw.
"""

from __future__ import annotations

import argparse
import collections
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))
from metrics import launch_daemon, stop  # noqa: E402
from soak import WARMUP_S, sample  # noqa: E402

MODEL = "smol"
SLOTS = 4
CONTEXT = 1024
PROMPTS = ["Name three uses for a Raspberry Pi.", "What is a GPIO pin?", "Write a haiku about a kitchen light.",
           "Explain what a timer does.", "Why do small models suit small boards?", "Say hello in French."]


def start_daemon(workdir: Path, model_dir: Path) -> tuple[subprocess.Popen, Path, Path]:
    folder = workdir / "metrics"
    proc, sock = launch_daemon(workdir, "soak", f'[[models]]\nname = "{MODEL}"\npath = "{model_dir}"\nthreads = 2\n'
                               f"[models.generation]\nmax_sequences = {SLOTS}\ncontext_tokens = {CONTEXT}\n"
                               f'[metrics]\ndir = "{folder}"\n', timeout_s=120)
    return proc, sock, folder


def client_for(sock: Path) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://localhost", timeout=120)


def bad_requests() -> list[tuple[str, dict]]:
    return [
        ("/v1/completions", {"model": MODEL, "prompt": "word " * 3000, "max_tokens": 4}),  # longer than the context
        ("/v1/chat/completions", {"model": MODEL, "messages": "hello"}),
        ("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 4, "frobnicate": True}),
        ("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": -3}),
        ("/v1/embeddings", {"model": MODEL, "input": ["hi"]}),
    ]


def one_round(client: httpx.Client, sock: Path, i: int, codes: collections.Counter) -> None:
    """Request i of a client's loop: one of the good, abandoned or bad kinds, in turn."""
    prompt = PROMPTS[i % len(PROMPTS)]
    kind = i % 7
    if kind == 0:  # a streamed chat, read to its end
        body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 24, "stream": True}
        with client.stream("POST", "/v1/chat/completions", json=body) as r:
            for _ in r.iter_lines():
                pass
            codes[r.status_code] += 1
    elif kind == 1:  # sampled
        body = {"model": MODEL, "prompt": prompt, "max_tokens": 16, "temperature": 0.8, "top_p": 0.9, "seed": i}
        codes[client.post("/v1/completions", json=body).status_code] += 1
    elif kind == 2:  # greedy, with a stop sequence
        body = {"model": MODEL, "prompt": prompt, "max_tokens": 20, "temperature": 0, "stop": ["\n\n", "."]}
        codes[client.post("/v1/completions", json=body).status_code] += 1
    elif kind == 3:  # a stream the client leaves after two chunks
        body = {"model": MODEL, "prompt": prompt, "max_tokens": 200, "stream": True, "ignore_eos": True}
        with client.stream("POST", "/v1/completions", json=body) as r:
            codes[r.status_code] += 1
            for n, _ in enumerate(r.iter_lines()):
                if n >= 3:
                    break
    elif kind == 4:  # sends a whole request and hangs up before the answer
        body = b'{"model": "%s", "prompt": "%s", "max_tokens": 64}' % (MODEL.encode(), prompt.encode())
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(sock))
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        codes["hung up"] += 1
    else:
        path, body = bad_requests()[i % len(bad_requests())]
        codes[client.post(path, json=body).status_code] += 1


def drive(sock: Path, until: float, worker: int, codes: collections.Counter, errors: list[str]) -> None:
    i = worker
    with client_for(sock) as client:
        while time.monotonic() < until:
            try:
                one_round(client, sock, i, codes)
            except httpx.HTTPError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                codes["transport error"] += 1
            i += 1


def final_checks(sock: Path) -> dict:
    """Every slot came back: nothing running or waiting, and SLOTS completions at once all answer."""
    with client_for(sock) as client:
        deadline = time.monotonic() + 30
        while True:
            info = client.get(f"/v1/models/{MODEL}").json()
            if (info["running"] == 0 and info["waiting"] == 0) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    results: list[int] = []

    def one(k: int) -> None:
        with client_for(sock) as c:
            results.append(c.post("/v1/completions", json={"model": MODEL, "prompt": PROMPTS[k], "max_tokens": 8,
                                                           "temperature": 0}).status_code)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(SLOTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with client_for(sock) as client:
        ready = client.get("/ready").status_code
    return {"running": info["running"], "waiting": info["waiting"], "finished": info["finished"],
            "concurrent": results, "ready": ready}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to drive the daemon (default 10)")
    parser.add_argument("--every", type=float, default=30.0, help="seconds between samples (default 30)")
    parser.add_argument("--clients", type=int, default=6, help=f"looping clients (default 6; the daemon has "
                        f"{SLOTS} slots)")
    parser.add_argument("--model-dir", type=Path, default=ROOT / ".cache" / "smollm2",
                        help="a built SmolLM2 folder (default: build it into .cache/smollm2)")
    args = parser.parse_args()
    if args.model_dir == ROOT / ".cache" / "smollm2":
        from tests.slow.smollm2_cache import built_model

        args.model_dir = built_model()
    seconds = args.minutes * 60
    codes: collections.Counter = collections.Counter()
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="edgeslm-bench-soak-llm-") as tmp:
        proc, sock, folder = start_daemon(Path(tmp), args.model_dir)
        started = time.monotonic()
        until = started + seconds
        samples: list[tuple[float, dict]] = [(0.0, sample(proc.pid, folder))]
        workers = [threading.Thread(target=drive, args=(sock, until, w, codes, errors)) for w in range(args.clients)]
        for w in workers:
            w.start()
        while (wait := min(args.every, until - time.monotonic())) > 0:
            time.sleep(wait)
            samples.append((time.monotonic() - started, sample(proc.pid, folder)))
        for w in workers:
            w.join()
        final = final_checks(sock)
        stop(proc)
        exit_code, socket_left = proc.returncode, sock.exists()

    total = sum(codes.values())
    server_errors = sum(n for code, n in codes.items() if isinstance(code, int) and code >= 500)
    print(f"soak (generation): {args.minutes:g} min, {args.clients} clients on {SLOTS} slots, {total} requests "
          f"({total / seconds:.1f}/s); answers by status: "
          + ", ".join(f"{code}: {n}" for code, n in sorted(codes.items(), key=lambda kv: str(kv[0]))))
    for message in sorted(set(errors))[:5]:
        print(f"  client error: {message}")
    print(f"\n{'s':>6} {'RSS MB':>7} {'fds':>5} {'threads':>8} {'record MB':>10}")
    for at, s in samples:
        print(f"{at:6.0f} {s['rss_mb']:7.1f} {s['fds']:5d} {s['threads']:8d} {s['record_bytes'] / 2**20:10.1f}")
    first_at, first = next(((at, s) for at, s in samples if at >= WARMUP_S), samples[-1])
    last_at, last = samples[-1]
    print(f"\nafter the first minute: RSS {first['rss_mb']:.1f} -> {last['rss_mb']:.1f} MB "
          f"({last['rss_mb'] - first['rss_mb']:+.1f} MB over {(last_at - first_at) / 60:.1f} min); "
          f"fds {first['fds']} -> {last['fds']}; threads {first['threads']} -> {last['threads']}")
    print(f"at the end: running {final['running']}, waiting {final['waiting']}, finished {final['finished']}; "
          f"{SLOTS} concurrent completions answered {final['concurrent']}; /ready {final['ready']}; SIGTERM exit "
          f"status {exit_code}; socket file {'LEFT BEHIND' if socket_left else 'removed'}")
    healthy = (final["running"] == 0 and final["waiting"] == 0 and final["concurrent"] == [200] * SLOTS
               and final["ready"] == 200 and not server_errors and not errors and exit_code == 0 and not socket_left)
    print("verdict: " + ("no slot, descriptor or thread left behind; no 5xx" if healthy else "PROBLEMS above"))
    return 0 if healthy else 1


if __name__ == "__main__":
    raise SystemExit(main())
