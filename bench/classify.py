"""Bare engine in-process vs the daemon over its socket, ONNX and TFLite, for two models.

Run: make bench   (or: .venv/bin/python bench/classify.py --seconds 5 --model intents)

Models (--model, repeatable; both by default):
- intents: the bundled intent classifier (/v1/classify), ~10-30 us of model a text at batch 64,
  less than the HTTP server spends on a request: the daemon's own cost dominates.
- minilm-l6: all-MiniLM-L6-v2 int8 from the model store (/v1/embeddings; `edgeslm pull minilm-l6
  --store .cache/store` first, or it is skipped with that hint), a model whose compute is most of a
  request: the batcher's efficiency shows.

Bare = tokenise + engine.run in this process, no HTTP, no batcher: batch 1, then the
best of several batch sizes. Daemon = `edgeslm serve` in a subprocess, driven by a
closed-loop keep-alive client (bench/loadgen.py) at 1, 8 and 32 concurrent clients,
one text per request; then 8 clients sending 16 texts a request (that row counts texts
per second). The load generator runs on the same 2 cores as the daemon,
as a local client on a Pi would. Printed ratios are against the bare numbers of
this same run.

With --rounds N (default 3) the bare and daemon measurements alternate N times against one
daemon; each cell prints the median over rounds, and each ratio is the median of the
per-round ratios (bare and daemon measured minutes apart on a shared machine disagree by more
than the effects being measured).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from loadgen import build_requests, run_load  # noqa: E402

from edgeslm.config import ModelConfig  # noqa: E402
from edgeslm.tasks.served import ServedModel  # noqa: E402

INTENTS = ROOT / "models" / "intents"
STORE = ROOT / ".cache" / "store"  # where `make test-models` pulls minilm-l6
IDLE_GAP_S = 0.0002  # the "bare batch 1, idle gaps" row: sleep between calls
MULTI = 16  # texts per request in the "8 x 16 texts" row (its req/s column counts texts)


@dataclass(frozen=True)
class ModelSet:
    """One model in both formats, the endpoint that serves it and the texts it is driven with."""

    name: str
    title: str
    endpoint: str
    formats: dict[str, Path]
    texts: list[str]


def intents() -> ModelSet:
    data = tomllib.loads((INTENTS / "phrases.toml").read_text())
    texts = [p for intent in data["intents"].values() for p in intent.get("heldout", [])]
    return ModelSet("intents", "intents classifier", "/v1/classify",
                    {"onnx": INTENTS / "model.onnx", "tflite": INTENTS / "model.tflite"}, texts)


def minilm(store: Path) -> ModelSet | None:
    from edgeslm.convert.sentences import SENTENCES

    folder = store / "minilm-l6"
    formats = {"onnx": folder / "model.onnx", "tflite": folder / "model.tflite"}
    missing = [str(path) for path in formats.values() if not path.is_file()]
    if missing:
        print(f"minilm-l6: not in {store} ({', '.join(missing)} missing), so not measured: run "
              f"`.venv/bin/edgeslm pull minilm-l6 --store {store}` (or `make test-models`) first",
              file=sys.stderr)
        return None
    return ModelSet("minilm-l6", "all-MiniLM-L6-v2 int8 embeddings", "/v1/embeddings", formats, list(SENTENCES))


def _cell(latencies_s: list[float], done: int, elapsed_s: float) -> dict:
    """Throughput and latency percentiles of one measurement."""
    lat = np.array(latencies_s) * 1000
    return {"rps": done / elapsed_s, "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


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
        results[batch] = _cell(latencies, done, time.perf_counter() - started)
    # Batch 1 again, idle IDLE_GAP_S between calls as a daemon is between one client's requests: on this VM
    # a thread that sleeps finds its caches cold, and the same work takes longer (context for the 1-client row).
    latencies, started = [], time.perf_counter()
    while time.perf_counter() - started < seconds:
        time.sleep(IDLE_GAP_S)
        t0 = time.perf_counter()
        engine.run(encoder.encode([texts[len(latencies) % len(texts)]]).feeds)
        latencies.append(time.perf_counter() - t0)
    results["1-idle"] = _cell(latencies, len(latencies), time.perf_counter() - started)
    model.close()
    return results


def start_daemon(workdir: Path, formats: dict[str, Path], threads: int,
                 max_delay_ms: float) -> tuple[subprocess.Popen, Path]:
    sock = workdir / "bench.sock"
    config = workdir / "bench.toml"
    config.write_text("".join(
        f'[[models]]\nname = "{fmt}"\npath = "{path}"\nthreads = {threads}\n'
        f'[models.batching]\nmax_batch = 64\nmax_delay_ms = {max_delay_ms}\nmax_queue = 1024\n'
        for fmt, path in formats.items()
    ) + f'[metrics]\ndir = "{workdir / "metrics"}"\n')  # on, as by default, but not into ./run/metrics
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


def best_batch(bare_cells: dict) -> int:
    """The batch size with the best throughput among a round's bare cells (not the "1-idle" context row)."""
    return max((k for k in bare_cells if isinstance(k, int)), key=lambda k: bare_cells[k]["rps"])


def best_rps(bare_cells: dict) -> float:
    return bare_cells[best_batch(bare_cells)]["rps"]


def _median_cells(rounds: list[dict]) -> dict:
    """{key: {"rps", "p50_ms", "p99_ms"}} per round -> the same with each figure the median over rounds."""
    return {key: {stat: statistics.median(r[key][stat] for r in rounds) for stat in rounds[0][key]}
            for key in rounds[0]}


def measure(models: ModelSet, args: argparse.Namespace) -> dict:
    """Alternate bare and daemon measurements of one model set for args.rounds rounds; print its table."""
    texts, formats = models.texts, models.formats
    bare_rounds: dict[str, list[dict]] = {fmt: [] for fmt in formats}
    daemon_rounds: dict[str, list[dict]] = {fmt: [] for fmt in formats}
    floor_rounds: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="edgeslm-bench-") as tmp:
        proc, sock = start_daemon(Path(tmp), formats, args.threads, args.max_delay_ms)
        try:
            health = [b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n"]
            requests = {fmt: build_requests(models.endpoint, [json.dumps({"model": fmt, "input": [t]}).encode()
                                                               for t in texts]) for fmt in formats}
            # The same texts, MULTI to a request: what a client that batches its own texts gets.
            multi = {fmt: build_requests(models.endpoint, [
                json.dumps({"model": fmt, "input": [texts[(i + j) % len(texts)] for j in range(MULTI)]}).encode()
                for i in range(len(texts))]) for fmt in formats}
            for r in range(args.rounds):
                for fmt, path in formats.items():
                    bare_rounds[fmt].append(bare(path, texts, args.threads, args.seconds / 2))
                floor_rounds.append({n: run_load(str(sock), health, clients=n, seconds=args.seconds / 2)
                                     for n in (1, 32)})
                for fmt in formats:
                    cells = {n: run_load(str(sock), requests[fmt], clients=n, seconds=args.seconds) for n in (1, 8, 32)}
                    texts_load = run_load(str(sock), multi[fmt], clients=8, seconds=args.seconds)
                    cells["8x"] = {**texts_load, "rps": texts_load["rps"] * MULTI}  # texts/s
                    daemon_rounds[fmt].append(cells)
                print(f"{models.name} round {r + 1}/{args.rounds}: onnx daemon 32 clients "
                      f"{daemon_rounds['onnx'][-1][32]['rps']:.0f} req/s, bare best "
                      f"{best_rps(bare_rounds['onnx'][-1]):.0f}", file=sys.stderr, flush=True)
        finally:
            proc.terminate()
            proc.wait(30)

    floor = _median_cells(floor_rounds)
    rounds_note = f", median of {args.rounds} interleaved rounds" if args.rounds > 1 else ""
    print(f"\n{models.title}, {os.cpu_count()} CPUs, threads={args.threads or 'default'}, "
          f"max_delay_ms={args.max_delay_ms}, {args.seconds:g} s per cell{rounds_note}\n")
    header = f"{'format':<7} {'mode':<22} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}  ratio"
    print(header)
    print("-" * len(header))
    for n, d in floor.items():
        print(f"{'http':<7} {f'GET /health {n} clients':<22} {d['rps']:>9.0f} {d['p50_ms']:>8.3f} {d['p99_ms']:>8.3f}  "
              "(the HTTP floor: no model, no JSON body)")
    report: dict = {"health": floor, "formats": {}}
    for fmt in formats:
        b = _median_cells(bare_rounds[fmt])
        daemon = _median_cells(daemon_rounds[fmt])
        best = best_batch(b)
        one = b[1]
        print(f"{fmt:<7} {'bare batch 1':<22} {one['rps']:>9.0f} {one['p50_ms']:>8.3f} {one['p99_ms']:>8.3f}")
        idle = b["1-idle"]
        print(f"{fmt:<7} {'bare batch 1, idle':<22} {idle['rps']:>9.0f} {idle['p50_ms']:>8.3f} "
              f"{idle['p99_ms']:>8.3f}  (context: {IDLE_GAP_S * 1e3:g} ms asleep before each call, as a daemon is "
              "between requests)")
        print(f"{fmt:<7} {f'bare best (batch {best})':<22} {b[best]['rps']:>9.0f} "
              f"{b[best]['p50_ms']:>8.3f} {b[best]['p99_ms']:>8.3f}")
        ratios = {}
        for n, d in daemon.items():
            pairs = zip(bare_rounds[fmt], daemon_rounds[fmt])
            if n == 1:
                pairs = list(pairs)
                ratios[n] = statistics.median(dr[1]["p50_ms"] - br[1]["p50_ms"] for br, dr in pairs)
                ratios["1-idle"] = statistics.median(dr[1]["p50_ms"] - br["1-idle"]["p50_ms"] for br, dr in pairs)
                ratio = f"+{ratios[n]:.3f} ms p50 vs bare batch 1 (+{ratios['1-idle']:.3f} vs idle gaps)"
            else:
                ratios[n] = statistics.median(dr[n]["rps"] / best_rps(br) for br, dr in pairs)
                ratio = f"{ratios[n]:.2f}x bare best"
            errors = sum(dr[n]["errors"] for dr in daemon_rounds[fmt])
            mode = f"daemon 8 x {MULTI} texts" if n == "8x" else f"daemon {n} clients"
            print(f"{fmt:<7} {mode:<22} {d['rps']:>9.0f} {d['p50_ms']:>8.3f} {d['p99_ms']:>8.3f}  "
                  f"{ratio}{f' ({errors:.0f} errors)' if errors else ''}")
        report["formats"][fmt] = {"bare": b, "daemon": daemon, "best_batch": best, "ratios": ratios,
                                  "rounds": {"bare": bare_rounds[fmt], "daemon": daemon_rounds[fmt]}}
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring time per cell (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="bare/daemon alternations; medians are printed")
    parser.add_argument("--threads", type=int, default=0, help="engine intra-op threads, bare and daemon alike")
    parser.add_argument("--max-delay-ms", type=float, default=0.0, help="daemon batching delay")
    parser.add_argument("--model", action="append", choices=("intents", "minilm-l6"),
                        help="model to measure (repeatable; default both, minilm-l6 when pulled)")
    parser.add_argument("--store", type=Path, default=STORE, help=f"model store holding minilm-l6 (default {STORE})")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    chosen = [intents() if name == "intents" else minilm(args.store) for name in args.model or ("intents", "minilm-l6")]
    sets = [models for models in chosen if models is not None]
    if not sets:
        return 1
    report: dict = {"threads": args.threads, "cpus": os.cpu_count(), "rounds": args.rounds,
                    "models": {models.name: measure(models, args) for models in sets}}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if len(sets) == len(chosen) or not args.model else 1


if __name__ == "__main__":
    raise SystemExit(main())
