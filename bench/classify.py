"""Bare engine in-process vs the daemon over its socket, for the bundled intents model (ONNX and TFLite).

Run: make bench   (or: .venv/bin/python bench/classify.py --seconds 5)

Bare = tokenise + engine.run in this process, no HTTP, no batcher: batch 1, then the
best of several batch sizes. Daemon = `edgeslm serve` in a subprocess, driven by a
closed-loop keep-alive client (bench/loadgen.py) at 1, 8 and 32 concurrent clients,
one text per request. The load generator runs on the same 2 cores as the daemon,
as a local client on a Pi would. Printed ratios are against the bare numbers of
this same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from loadgen import build_requests, run_load  # noqa: E402

from edgeslm.config import ModelConfig  # noqa: E402
from edgeslm.tasks.served import ServedModel  # noqa: E402

INTENTS = ROOT / "models" / "intents"
FORMATS = {"onnx": INTENTS / "model.onnx", "tflite": INTENTS / "model.tflite"}


def phrases() -> list[str]:
    data = tomllib.loads((INTENTS / "phrases.toml").read_text())
    return [p for intent in data["intents"].values() for p in intent.get("heldout", [])]


def bare(path: Path, texts: list[str], threads: int, seconds: float) -> dict:
    model = ServedModel.load(ModelConfig(name="bare", path=path, threads=threads))
    encoder, engine = model.encoder, model.engine
    assert encoder is not None
    results = {}
    for batch in (1, 4, 8, 16, 32, 64):
        latencies, done, i = [], 0, 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            chunk = [texts[(i + j) % len(texts)] for j in range(batch)]
            i += batch
            t0 = time.perf_counter()
            engine.run(encoder.encode(chunk).feeds)
            latencies.append(time.perf_counter() - t0)
            done += batch
        elapsed = time.perf_counter() - started
        lat = np.array(latencies) * 1000
        results[batch] = {"rps": done / elapsed, "p50_ms": float(np.percentile(lat, 50)),
                          "p99_ms": float(np.percentile(lat, 99))}
    model.close()
    return results


def start_daemon(workdir: Path, threads: int, max_delay_ms: float) -> tuple[subprocess.Popen, Path]:
    sock = workdir / "bench.sock"
    config = workdir / "bench.toml"
    config.write_text("".join(
        f'[[models]]\nname = "{fmt}"\npath = "{path}"\nthreads = {threads}\n'
        f'[models.batching]\nmax_batch = 64\nmax_delay_ms = {max_delay_ms}\nmax_queue = 1024\n'
        for fmt, path in FORMATS.items()
    ))
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGESLM_")}
    proc = subprocess.Popen([sys.executable, "-m", "edgeslm", "serve", "--config", str(config), "--socket", str(sock),
                             "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    for _ in range(600):
        if sock.exists():
            try:
                import httpx

                with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock))) as c:
                    if c.get("http://x/ready").status_code == 200:
                        return proc, sock
            except Exception:
                pass
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"daemon did not start: {proc.stderr.read().decode() if proc.stderr else ''}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring time per cell (default 4)")
    parser.add_argument("--threads", type=int, default=0, help="engine intra-op threads, bare and daemon alike")
    parser.add_argument("--max-delay-ms", type=float, default=0.0, help="daemon batching delay")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    texts = phrases()
    report: dict = {"threads": args.threads, "cpus": os.cpu_count(), "formats": {}}
    bare_results = {fmt: bare(path, texts, args.threads, args.seconds / 2) for fmt, path in FORMATS.items()}
    with tempfile.TemporaryDirectory(prefix="edgeslm-bench-") as tmp:
        proc, sock = start_daemon(Path(tmp), args.threads, args.max_delay_ms)
        try:
            health = [b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n"]
            floor = {n: run_load(str(sock), health, clients=n, seconds=args.seconds / 2) for n in (1, 32)}
            daemon_results = {}
            for fmt in FORMATS:
                bodies = [json.dumps({"model": fmt, "input": [t]}).encode() for t in texts]
                requests = build_requests("/v1/classify", bodies)
                daemon_results[fmt] = {n: run_load(str(sock), requests, clients=n, seconds=args.seconds)
                                       for n in (1, 8, 32)}
        finally:
            proc.terminate()
            proc.wait(30)

    print(f"\nintents classifier, {os.cpu_count()} CPUs, threads={args.threads or 'default'}, "
          f"max_delay_ms={args.max_delay_ms}, {args.seconds:g} s per cell\n")
    header = f"{'format':<7} {'mode':<22} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}  ratio"
    print(header)
    print("-" * len(header))
    for n, d in floor.items():
        print(f"{'http':<7} {f'GET /health {n} clients':<22} {d['rps']:>9.0f} {d['p50_ms']:>8.3f} {d['p99_ms']:>8.3f}  "
              "(the HTTP floor: no model, no JSON body)")
    report["health"] = floor
    for fmt in FORMATS:
        b = bare_results[fmt]
        best_batch = max(b, key=lambda k: b[k]["rps"])
        best = b[best_batch]["rps"]
        one = b[1]
        print(f"{fmt:<7} {'bare batch 1':<22} {one['rps']:>9.0f} {one['p50_ms']:>8.3f} {one['p99_ms']:>8.3f}")
        print(f"{fmt:<7} {f'bare best (batch {best_batch})':<22} {best:>9.0f} {b[best_batch]['p50_ms']:>8.3f} "
              f"{b[best_batch]['p99_ms']:>8.3f}")
        for n, d in daemon_results[fmt].items():
            if n == 1:
                ratio = f"+{d['p50_ms'] - one['p50_ms']:.3f} ms p50 vs bare batch 1"
            else:
                ratio = f"{d['rps'] / best:.2f}x bare best"
            errors = f" ({d['errors']} errors)" if d["errors"] else ""
            print(f"{fmt:<7} {f'daemon {n} clients':<22} {d['rps']:>9.0f} {d['p50_ms']:>8.3f} {d['p99_ms']:>8.3f}  "
                  f"{ratio}{errors}")
        report["formats"][fmt] = {"bare": b, "daemon": daemon_results[fmt], "best_batch": best_batch}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
