"""What recording costs: throughput with metrics on vs off at 32 clients, and bytes written per hour.

Run: make bench-metrics   (or: .venv/bin/python bench/metrics.py --rounds 5 --seconds 5 --bytes-seconds 60)

overhead: a daemon with [metrics] on (the defaults: records, a 1 Hz power sampler, a 5 s flush)
and one with metrics off serve the bundled intents model (ONNX), or with --model minilm-l6
all-MiniLM-L6-v2 int8 from .cache/store (a model whose own compute is most of a request). bench/loadgen.py drives each
with 32 closed-loop keep-alive clients, one text per request. Every round starts a fresh pair
(which one starts first alternates) and measures the two in 1 s slices that take turns (ABBA):
here a daemon's req/s swings by 10-20% from one second to the next, and the slices put the
machine's slow and fast moments on both. A fresh pair per round, because a daemon process keeps
a speed of its own against an identical one, so one pair for the whole run would bias every
round the same way; every daemon gets the same hash seed and memory layout, which narrows that.
The cost of recording is the geometric mean of the per-round ratios (on / off), printed with its
standard error. `--control` runs the same schedule with both daemons off: its ratios show the
method's own noise.

bytes: a metrics-on daemon with default settings, left idle for --bytes-seconds, then driven
by one client at 10 requests/s for --bytes-seconds; the bytes its record files grew by
(and the process's write_bytes in /proc, which includes its log) are scaled to an hour.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from classify import STORE, ModelSet, intents, minilm  # noqa: E402
from loadgen import build_requests, run_load  # noqa: E402


def model_set(model: str) -> ModelSet:
    """The model (bench/classify.py's sets), or exit saying how to pull it."""
    found = intents() if model == "intents" else minilm(STORE)
    if found is None:
        raise SystemExit(1)
    return found


def texts(model: str = "intents") -> list[str]:
    return model_set(model).texts


def start_daemon(workdir: Path, name: str, metrics: bool,
                 model: str = "intents") -> tuple[subprocess.Popen, Path, Path]:
    folder = workdir / f"{name}-metrics"
    path = model_set(model).formats["onnx"]
    proc, sock = launch_daemon(workdir, name, f'[[models]]\nname = "{model}"\npath = "{path}"\n'
                               '[models.batching]\nmax_batch = 64\nmax_queue = 1024\n'
                               f'[metrics]\nenabled = {str(metrics).lower()}\ndir = "{folder}"\n')
    return proc, sock, folder


def launch_daemon(workdir: Path, name: str, config_text: str, timeout_s: float = 60) -> tuple[subprocess.Popen, Path]:
    """`edgeslm serve` on `config_text`, its socket in `workdir`, once /ready answers 200."""
    sock, config = workdir / f"{name}.sock", workdir / f"{name}.toml"
    config.write_text(config_text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGESLM_") and k != "LOGS_DIRECTORY"}
    # Every daemon gets the same string hashes and the same memory layout: a process's own speed comes partly
    # from where its objects land (identical daemons, 6 pairs each: spread 7.4% with ASLR, 3.7% without).
    env["PYTHONHASHSEED"] = "0"
    same_layout = ["setarch", "-R"] if shutil.which("setarch") else []
    proc = subprocess.Popen([*same_layout, sys.executable, "-m", "edgeslm", "serve", "--config", str(config),
                             "--socket", str(sock), "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock))) as client:
                if client.get("http://x/ready").status_code == 200:
                    return proc, sock
        except (httpx.TransportError, OSError):
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"daemon {name} did not start: {proc.stderr.read().decode() if proc.stderr else ''}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(30)


def overhead(workdir: Path, rounds: int, seconds: float, clients: int, *, control: bool = False,
             slice_s: float = 1.0, model: str = "intents") -> dict:
    """`rounds` fresh on/off pairs (off/off with `control`); per-round ratios of their throughputs.

    Within a round each daemon is measured for `seconds` in all, in slices of `slice_s` that take
    turns (on, off, off, on, ...), so the machine's slower and faster moments fall on both alike."""
    bodies = [json.dumps({"model": model, "input": [t]}).encode() for t in texts(model)]
    requests = build_requests(model_set(model).endpoint, bodies)
    results: dict[str, list[dict]] = {"on": [], "off": []}
    ratios = []
    slices = max(1, round(seconds / slice_s))
    for i in range(rounds):
        daemons = {}
        first = ("on", "off") if i % 2 == 0 else ("off", "on")  # starts first, and is measured first
        try:
            for name in first:
                proc, sock, _ = start_daemon(workdir, f"{name}-{i}", name == "on" and not control, model)
                daemons[name] = (proc, sock)
            totals = {name: {"requests": 0, "seconds": 0.0, "cpu_s": 0.0, "main_s": 0.0} for name in daemons}
            for name in daemons:
                run_load(str(daemons[name][1]), requests, clients=clients, seconds=1.0, warmup_s=0)  # warm-up
            for k in range(slices):
                for name in (first if k % 2 == 0 else first[::-1]):  # ABBA within the round
                    proc, sock = daemons[name]
                    cpu0, main0 = cpu_seconds(proc.pid), cpu_seconds(proc.pid, proc.pid)
                    run = run_load(str(sock), requests, clients=clients, seconds=slice_s, warmup_s=0)
                    totals[name]["requests"] += run["requests"]
                    totals[name]["seconds"] += run["seconds"]
                    totals[name]["cpu_s"] += cpu_seconds(proc.pid) - cpu0
                    totals[name]["main_s"] += cpu_seconds(proc.pid, proc.pid) - main0
        finally:
            for proc, _ in daemons.values():
                stop(proc)
        for name, t in totals.items():
            # CPU the daemon used per request, beside req/s: the same cost seen another way.
            # The event loop's thread (the process's first) is where a request's Python runs: how busy it was.
            results[name].append({"requests": t["requests"], "rps": t["requests"] / t["seconds"],
                                  "cpu_us_per_request": t["cpu_s"] * 1e6 / max(1, t["requests"]),
                                  "main_busy": t["main_s"] / t["seconds"]})
        ratios.append(results["on"][-1]["rps"] / results["off"][-1]["rps"])
        label = "off'" if control else "on"
        print(f"  round {i + 1:>2}: {label} {results['on'][-1]['rps']:6.0f} req/s, off {results['off'][-1]['rps']:6.0f}"
              f" req/s, ratio {ratios[-1]:.3f}; daemon CPU {results['on'][-1]['cpu_us_per_request']:5.1f} vs "
              f"{results['off'][-1]['cpu_us_per_request']:5.1f} us/request; event loop busy "
              f"{results['on'][-1]['main_busy']:.0%} vs {results['off'][-1]['main_busy']:.0%}", flush=True)
    cpu = {name: statistics.median(r["cpu_us_per_request"] for r in rs) for name, rs in results.items()}
    busy = {name: statistics.median(r["main_busy"] for r in rs) for name, rs in results.items()}
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    logs = [math.log(r) for r in ratios]
    geomean = math.exp(statistics.mean(logs))
    standard_error = geomean * statistics.stdev(logs) / math.sqrt(len(logs)) if len(logs) > 1 else float("nan")
    return {"clients": clients, "rounds": rounds, "seconds": seconds, "control": control,
            "geomean_ratio": geomean, "standard_error": standard_error,
            "median_ratio": statistics.median(ratios), "quartiles": [quartiles[0], quartiles[2]],
            "range": [min(ratios), max(ratios)], "median_cpu_us_per_request": cpu,
            "cpu_ratio": cpu["off"] / cpu["on"], "median_main_busy": busy, "runs": results}


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """utime + stime of a process (or of its thread `tid`), from /proc."""
    stat = Path(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat")
    fields = stat.read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def recording_cost(workdir: Path, n: int = 20000, repeats: int = 5) -> dict:
    """CPU microseconds per request that recording adds, in-process: the request path (open, ran, finish) and
    the rest (count, build, serialise, write). Medians of `repeats`."""
    from edgeslm.core.batcher import Completion
    from edgeslm.metrics.energy import PowerTrace
    from edgeslm.metrics.files import JsonlWriter
    from edgeslm.metrics.prom import PromMetrics
    from edgeslm.metrics.recorder import Recorder

    trace = PowerTrace()
    for i in range(600):
        trace.add(i * 0.01, 3.0)
    chunks = [{}]
    done = [[Completion({}, None, 8, 8, start - 0.0002, start, start + 0.0008)]  # batches of 8
            for start in (1.0 + i // 8 * 0.001 for i in range(n))]
    path_us, flush_us = [], []
    for i in range(repeats):
        recorder = Recorder(JsonlWriter(workdir / f"cost-{i}"), trace, observer=PromMetrics(), source_name="rapl")

        async def requests(recorder: Recorder = recorder) -> float:  # on an event loop, as in the daemon
            started = time.process_time()
            for completions in done:
                call = recorder.open("intents", "classify", 1, 7, None)
                call.ran(completions, chunks)
                call.finish("ok", 0.999)
            return time.process_time() - started

        path_us.append(asyncio.run(requests()) * 1e6 / n)
        started = time.process_time()
        while recorder.prepare(final=True, limit=recorder.slice_records):  # in slices, as the event loop does
            pass
        recorder.write(final=True)
        flush_us.append((time.process_time() - started) * 1e6 / n)
        recorder.close()
    return {"request_path_us": statistics.median(path_us), "flush_us": statistics.median(flush_us)}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("metrics-*")) if folder.exists() else 0


def proc_write_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def bytes_per_hour(workdir: Path, seconds: float, rate: float) -> dict:
    proc, sock, folder = start_daemon(workdir, "bytes", True)
    phrases = texts()
    result = {}
    try:
        time.sleep(6)  # the first flush and first file are start-up, not steady state
        for phase in ("idle", f"{rate:g} req/s"):
            size0, io0 = folder_bytes(folder), proc_write_bytes(proc.pid)
            started = time.monotonic()
            sent = 0
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://x") as client:
                while (now := time.monotonic()) - started < seconds:
                    if phase != "idle" and sent < (now - started) * rate:
                        client.post("/v1/classify", json={"model": "intents", "input": [phrases[sent % len(phrases)]]})
                        sent += 1
                    time.sleep(0.005)
            time.sleep(6)  # one more flush so the phase's records are on disk, then measure
            elapsed = time.monotonic() - started
            grown, written = folder_bytes(folder) - size0, proc_write_bytes(proc.pid) - io0
            result[phase] = {"seconds": round(elapsed, 1), "requests": sent, "file_bytes": grown,
                             "file_bytes_per_hour": round(grown * 3600 / elapsed),
                             "proc_write_bytes_per_hour": round(written * 3600 / elapsed),
                             "bytes_per_request": round(grown / sent, 1) if sent else None}
    finally:
        stop(proc)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8, help="fresh on/off daemon pairs (default 8)")
    parser.add_argument("--control", action="store_true",
                        help="also run the schedule with both daemons off, to show the method's noise")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="measuring time per daemon and round, in 1 s slices (default 5)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--bytes-seconds", type=float, default=60.0, help="length of the idle and 10 req/s phases")
    parser.add_argument("--only", choices=["overhead", "bytes"], help="run one of the two measurements")
    parser.add_argument("--model", choices=("intents", "minilm-l6"), default="intents",
                        help="model the overhead is measured on (minilm-l6: pulled into .cache/store first, e.g. by "
                             "make test-models); the bytes measurement always uses intents")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    model_set(args.model)  # exits, saying how to pull it, when it is not there
    report: dict = {"cpus": os.cpu_count(), "model": args.model}
    with tempfile.TemporaryDirectory(prefix="edgeslm-bench-metrics-") as tmp:
        if args.only != "bytes":
            passes = [("overhead", False)] + ([("control", True)] if args.control else [])
            for key, control in passes:
                what = "both metrics off (control)" if control else "metrics on vs off"
                print(f"{what}, {args.model}, {args.clients} clients, {args.rounds} fresh pairs x {args.seconds:g} s "
                      "each")
                o = overhead(Path(tmp), args.rounds, args.seconds, args.clients, control=control, model=args.model)
                report[key] = o
                print(f"  per-round ratios: geometric mean {o['geomean_ratio']:.3f} +- {o['standard_error']:.3f} (one "
                      f"standard error){'' if control else ' (target >= 0.97)'}; median {o['median_ratio']:.3f}, "
                      f"quartiles {o['quartiles'][0]:.3f}-{o['quartiles'][1]:.3f}, range {o['range'][0]:.3f}-"
                      f"{o['range'][1]:.3f}")
                print(f"  median daemon CPU per request: {o['median_cpu_us_per_request']['on']:.1f} vs "
                      f"{o['median_cpu_us_per_request']['off']:.1f} us; throughput the CPU allows "
                      f"{o['cpu_ratio']:.3f}; event loop thread busy {o['median_main_busy']['on']:.0%} vs "
                      f"{o['median_main_busy']['off']:.0%} of the time")
            report["recording_cost"] = c = recording_cost(Path(tmp))
            print(f"recording in-process: {c['request_path_us']:.2f} us CPU on the request path + "
                  f"{c['flush_us']:.2f} us counting, energy and JSON per request (on the event loop, in slices)")
        if args.only != "overhead":
            print(f"\nbytes written: idle, then 10 req/s, {args.bytes_seconds:g} s each (default [metrics])")
            report["bytes"] = b = bytes_per_hour(Path(tmp), args.bytes_seconds, 10.0)
            for phase, d in b.items():
                per = f", {d['bytes_per_request']} B/request" if d["bytes_per_request"] else ""
                print(f"  {phase:<10} {d['file_bytes_per_hour'] / 1e6:8.3f} MB/hour in record files "
                      f"({d['file_bytes']} B in {d['seconds']} s{per}); process write_bytes "
                      f"{d['proc_write_bytes_per_hour'] / 1e6:.3f} MB/hour")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
