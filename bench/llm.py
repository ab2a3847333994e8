"""SmolLM2-135M generation: llama.cpp vs edgeslm in-process vs edgeslm over the socket, interleaved, medians.

Run: make bench-llm   (or: .venv-bench/bin/python bench/llm.py --rounds 5)

Every runner uses the same ~30-token chat prompt, 128 greedy tokens (end-of-turn ignored) and 2 threads, in a
fresh process per round (runner order rotates each round), and reports prefill tok/s (prompt tokens / time to
the first token's logits; after a warm-up, the median of 5), decode tok/s (127 further tokens / their time)
and the process's peak RSS:
- llama.cpp: llama-cpp-python on the wheel's own GGUF (n_ctx 512, n_batch 512), driven token by token;
- edgeslm in-process: the Decoder on model.onnx (prefill, then one decode step per token, argmax in numpy),
  with the daemon's default engine options (spin = "run": onnxruntime workers spin inside a run, as llama.cpp's
  threads do, and sleep after it); then (after its peak RSS is read) decode steps of 1 and 4 rows in alternating
  slices, whose ratio bounds what 4 concurrent streams can reach on this runtime;
- edgeslm socket: `edgeslm serve` in a subprocess, /v1/completions streamed over the Unix socket (peak RSS is
  the daemon's); then 4 concurrent streams for the aggregate decode rate, over the whole run (from the first
  token, so the later streams' prefills count against it) and while all four decode.
- onnxruntime-genai (when .venv-genai exists, see bench/llm_genai_checkpoint.py): its own builder's int8 model,
  built from the GGUF's dequantized weights (the builder cannot read quantized GGUF and the original checkpoint
  cannot be downloaded here); end-of-turn suppressed with min_length; its prefill is timed once.
Resident memory after each loading stage (runtime imported, tokenizer, model loaded and warmed up) shows where
the peak comes from. KL figures: each runner's logits teacher-forced on edgeslm's
greedy sequence, against the fp32 numpy reference. The machine may be shared: treat the numbers as provisional.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PROMPT = ("<|im_start|>user\nWrite a long, detailed story about a small robot who learns to paint "
          "landscapes in the mountains near its home.<|im_end|>\n<|im_start|>assistant\n")  # 31 tokens
NEW_TOKENS = 128
PREFILL_REPEATS = 5  # prefill is timed this many times after a warm-up; the median is reported
THREADS = 2
CONTEXT = 512


def _status_mb(field: str, pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb(pid: int | str = "self") -> float:
    return _status_mb("VmHWM", pid)


def rss_mb() -> float:
    """The process's resident memory now (VmRSS), in MB."""
    return _status_mb("VmRSS")


def run_llama(gguf: Path) -> dict:
    from llama_cpp import Llama

    stages = {"runtime": rss_mb()}
    llm = Llama(model_path=str(gguf), n_ctx=CONTEXT, n_batch=CONTEXT, n_threads=THREADS, n_threads_batch=THREADS,
                verbose=False)
    ids = llm.tokenize(PROMPT.encode(), add_bos=False, special=True)
    llm.eval(ids)  # warm-up (the first eval faults the mapped weights in and sizes its buffers)
    stages["model"] = rss_mb()
    prefill = []
    for _ in range(PREFILL_REPEATS):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        prefill.append(time.perf_counter() - t0)
    t1 = time.perf_counter()
    out = [token]
    for _ in range(NEW_TOKENS - 1):
        llm.eval([token])
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
    t2 = time.perf_counter()
    return {"prompt_tokens": len(ids), "prefill_s": statistics.median(prefill), "decode_s": t2 - t1, "tokens": out,
            "peak_rss_mb": peak_rss_mb(), "rss_stages": stages}


def run_inprocess(model_dir: Path) -> dict:
    from tokenizers import Tokenizer

    from edgeslm.runtime import EngineOptions, open_engine
    from edgeslm.tasks.decoder import Decoder

    stages = {"runtime": rss_mb()}
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    stages["tokenizer"] = rss_mb()
    engine = open_engine(model_dir / "model.onnx", "onnx", EngineOptions(threads=THREADS))
    decoder = Decoder(engine, slots=1, context=CONTEXT)
    ids = np.array(tokenizer.encode(PROMPT).ids, dtype=np.int64)
    decoder.prefill(0, ids, 0)  # warm-up (first-run allocations), as for llama.cpp
    stages["model"] = rss_mb()
    prefill = []
    for _ in range(PREFILL_REPEATS):  # each rewrites the slot from position 0
        t0 = time.perf_counter()
        token = int(np.argmax(decoder.prefill(0, ids, 0)))
        prefill.append(time.perf_counter() - t0)
    t1 = time.perf_counter()
    out, pos = [token], len(ids)
    position = np.zeros(1, np.int32)
    step = np.zeros(1, np.int64)
    for _ in range(NEW_TOKENS - 1):
        step[0], position[0] = token, pos
        token = int(np.argmax(decoder.decode(step, position)[0]))
        out.append(token)
        pos += 1
    t2 = time.perf_counter()
    peak = peak_rss_mb()  # before the step timing below adds a 4-slot cache
    return {"prompt_tokens": len(ids), "prefill_s": statistics.median(prefill), "decode_s": t2 - t1, "tokens": out,
            "peak_rss_mb": peak, "rss_stages": stages, **four_row_steps(engine, ids, token)}


def four_row_steps(engine, ids: np.ndarray, token: int, slices: int = 12, steps: int = 8) -> dict:
    """Decode steps of 1 and of 4 rows on the same engine, in alternating slices; medians in seconds.

    Four streams decoding together can reach at most 4 * step1 / step4 times one stream's rate: the
    engine's own ceiling for the 4-stream figure, before any serving cost."""
    from edgeslm.tasks.decoder import Decoder

    decoder = Decoder(engine, slots=4, context=CONTEXT)
    for slot in range(4):
        decoder.prefill(slot, ids, 0)
    times: dict[int, list[float]] = {1: [], 4: []}
    for i in range(slices):
        for width in ((1, 4) if i % 2 == 0 else (4, 1)):
            tokens, positions = np.full(width, token, np.int64), np.full(width, len(ids), np.int32)
            t0 = time.perf_counter()
            for k in range(steps):
                decoder.decode(tokens, positions + k)
            times[width].append((time.perf_counter() - t0) / steps)
    return {"step1_s": statistics.median(times[1]), "step4_s": statistics.median(times[4])}


def run_genai(model_dir: Path) -> dict:
    import onnxruntime_genai as og

    config_path = model_dir / "genai_config.json"
    config = json.loads(config_path.read_text())
    options = config["model"]["decoder"].setdefault("session_options", {})
    if options.get("intra_op_num_threads") != THREADS:
        options["intra_op_num_threads"] = THREADS
        config_path.write_text(json.dumps(config, indent=1))
    model = og.Model(str(model_dir))
    ids = og.Tokenizer(model).encode(PROMPT)
    total = len(ids) + NEW_TOKENS
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=total, min_length=total)
    generator = og.Generator(model, params)
    t0 = time.perf_counter()
    generator.append_tokens(ids)
    generator.generate_next_token()
    t1 = time.perf_counter()
    out = [int(generator.get_next_tokens()[0])]
    while not generator.is_done() and len(out) < NEW_TOKENS:
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
    t2 = time.perf_counter()
    return {"prompt_tokens": len(ids), "prefill_s": t1 - t0, "decode_s": (t2 - t1) * (NEW_TOKENS - 1) / (len(out) - 1),
            "tokens": out, "peak_rss_mb": peak_rss_mb()}


def _stream(client, body: dict, arrivals: list[float] | None = None) -> tuple[float, float, float, int]:
    """(start, first token, end, tokens) of one streamed completion; each text event's arrival time goes to
    `arrivals` when given."""
    start = time.perf_counter()
    first, count = None, 0
    with client.stream("POST", "/v1/completions", json=body) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                if event.get("usage"):
                    count = event["usage"]["completion_tokens"]
                else:
                    now = time.perf_counter()
                    first = now if first is None else first
                    if arrivals is not None:
                        arrivals.append(now)
    return start, first or time.perf_counter(), time.perf_counter(), count


def run_socket(model_dir: Path) -> dict:
    import httpx

    with tempfile.TemporaryDirectory(prefix="edgeslm-bench-") as tmp:
        sock = Path(tmp) / "e.sock"
        config = Path(tmp) / "bench.toml"
        config.write_text(f'[server]\nrequest_timeout_s = 300\n[[models]]\nname = "smol"\npath = "{model_dir}"\n'
                          f"threads = {THREADS}\n[models.generation]\nmax_sequences = 4\ncontext_tokens = {CONTEXT}\n"
                          f'[metrics]\ndir = "{Path(tmp) / "metrics"}"\n')  # on, as by default, not in ./run
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGESLM_")}
        daemon = subprocess.Popen([sys.executable, "-m", "edgeslm", "serve", "--config", str(config),
                                   "--socket", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env=env)
        try:
            client = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://localhost",
                                  timeout=300)
            for _ in range(600):
                try:
                    if client.get("/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            body = {"model": "smol", "prompt": PROMPT, "max_tokens": NEW_TOKENS, "temperature": 0,
                    "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
            _stream(client, {**body, "max_tokens": 4})  # warm-up
            # Prefill: time to the first token, the median of PREFILL_REPEATS short streams.
            prefill = [first - start for start, first, _, _ in
                       (_stream(client, {**body, "max_tokens": 2}) for _ in range(PREFILL_REPEATS))]
            start, first, end, count = _stream(client, body)
            prompt_tokens = client.post("/v1/completions", json={**body, "stream": False, "max_tokens": 1}
                                        ).json()["usage"]["prompt_tokens"]
            results: list[tuple[float, float, float, int]] = []
            arrivals: list[list[float]] = [[] for _ in range(4)]

            def one(i: int) -> None:
                with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://localhost",
                                  timeout=300) as c:
                    results.append(_stream(c, {**body, "prompt": PROMPT.replace("robot", f"robot {i}")},
                                           arrivals[i]))

            threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            firsts, ends = [r[1] for r in results], [r[2] for r in results]
            # From the first stream's first token to the last stream's end: the later streams' prefills included.
            aggregate = sum(r[3] - 1 for r in results) / (max(ends) - min(firsts))
            # While all four decode (the last first token to the first end): the steady rate of a 4-row batch.
            both = max(firsts), min(ends)
            steady = (sum(both[0] < t <= both[1] for times in arrivals for t in times) / (both[1] - both[0])
                      if both[1] > both[0] else float("nan"))  # nan: the four never decoded at once
            return {"prompt_tokens": prompt_tokens, "prefill_s": statistics.median(prefill), "decode_s": end - first,
                    "tokens_generated": count, "peak_rss_mb": peak_rss_mb(daemon.pid),
                    "aggregate4_decode_tps": aggregate, "steady4_decode_tps": steady}
        finally:
            daemon.terminate()
            daemon.wait(30)


def kl_figures(gguf: Path, model_dir: Path, sequence: list[int], prompt_len: int) -> dict:
    """Mean KL vs fp32 over the generated positions of `sequence`, for llama.cpp and edgeslm."""
    from edgeslm.convert.gguf_llama import read_gguf
    from edgeslm.convert.llama_build import mean_kl
    from edgeslm.convert.reference import ReferenceLlama
    from edgeslm.runtime import EngineOptions, open_engine
    from edgeslm.tasks.decoder import Decoder

    reference = ReferenceLlama(read_gguf(gguf), keep_weights=False).logits(sequence)[prompt_len - 1 : -1]
    engine = open_engine(model_dir / "model.onnx", "onnx", EngineOptions(threads=THREADS))
    ours = Decoder(engine, slots=1, context=CONTEXT).teacher_force(np.array(sequence), prompt_len)
    figures = {"edgeslm": mean_kl(reference, ours)}
    try:
        from llama_cpp import Llama

        llm = Llama(model_path=str(gguf), n_ctx=CONTEXT, n_batch=CONTEXT, n_threads=THREADS, logits_all=True,
                    verbose=False)
        llm.eval(sequence)
        figures["llama.cpp"] = mean_kl(reference, np.array(llm.scores[prompt_len - 1 : len(sequence) - 1]))
    except ImportError:
        pass
    return figures


RUNNERS = {"llama.cpp": run_llama, "onnxruntime-genai": run_genai, "edgeslm in-process": run_inprocess,
           "edgeslm socket": run_socket}
GENAI_PYTHON = ROOT / ".venv-genai" / "bin" / "python"
GENAI_MODEL = ROOT / ".cache" / "genai" / "int8"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model-dir", type=Path, default=ROOT / ".cache" / "smollm2")
    parser.add_argument("--runner", choices=list(RUNNERS), help=argparse.SUPPRESS)
    parser.add_argument("--target", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.runner:  # a runner process imports only what its runtime needs
        print(json.dumps(RUNNERS[args.runner](args.target)))
        return 0
    from edgeslm.convert.llama_build import find_gguf
    from tests.slow.smollm2_cache import built_model, wheel_source

    gguf = find_gguf(wheel_source())
    model_dir = built_model() if args.model_dir == ROOT / ".cache" / "smollm2" else args.model_dir
    names = [n for n in RUNNERS if (n != "llama.cpp" or _has_llama()) and (n != "onnxruntime-genai" or _has_genai())]
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            python = str(GENAI_PYTHON) if name == "onnxruntime-genai" else sys.executable
            target = {"llama.cpp": gguf, "onnxruntime-genai": GENAI_MODEL}.get(name, model_dir)
            out = subprocess.run([python, __file__, "--runner", name, "--target", str(target)],
                                 capture_output=True, text=True, check=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            result["load_avg"] = os.getloadavg()[0]
            runs[name].append(result)
            print(f"round {r + 1}: {name:<20} prefill {result['prompt_tokens'] / result['prefill_s']:7.1f} tok/s, "
                  f"decode {(NEW_TOKENS - 1) / result['decode_s']:6.1f} tok/s, peak RSS {result['peak_rss_mb']:6.1f} MB"
                  f" (1-min load average {result['load_avg']:.1f})", file=sys.stderr, flush=True)
    rows = {}
    for name, results in runs.items():
        rows[name] = {
            "prefill": statistics.median(x["prompt_tokens"] / x["prefill_s"] for x in results),
            "decode": statistics.median((NEW_TOKENS - 1) / x["decode_s"] for x in results),
            "rss": statistics.median(x["peak_rss_mb"] for x in results),
        }
        if "aggregate4_decode_tps" in results[0]:
            rows[name]["agg4"] = statistics.median(x["aggregate4_decode_tps"] for x in results)
            rows[name]["steady4"] = statistics.median(x["steady4_decode_tps"] for x in results)
    base = rows.get("llama.cpp")
    print(f"\nSmolLM2-135M Q4_1, prompt {runs[names[-1]][0]['prompt_tokens']} tokens, {NEW_TOKENS} greedy tokens, "
          f"{THREADS} threads, median of {args.rounds} interleaved rounds (provisional: shared machine)\n")
    print(f"{'runner':<20} {'prefill tok/s':>14} {'decode tok/s':>13} {'peak RSS MB':>12} "
          f"{'prefill x':>10} {'decode x':>9} {'RSS x':>7}")
    for name, row in rows.items():
        ratios = [f"{row[k] / base[k]:.2f}" if base else "-" for k in ("prefill", "decode", "rss")]
        print(f"{name:<20} {row['prefill']:>14.1f} {row['decode']:>13.1f} {row['rss']:>12.1f} "
              f"{ratios[0]:>10} {ratios[1]:>9} {ratios[2]:>7}")
    socket = rows.get("edgeslm socket")
    if socket and "agg4" in socket:
        print(f"\nedgeslm socket, 4 concurrent streams: aggregate decode {socket['agg4']:.1f} tok/s = "
              f"{socket['agg4'] / socket['decode']:.2f}x one stream (first token to last end, the later prefills "
              f"included); while all 4 decode {socket['steady4']:.1f} tok/s = "
              f"{socket['steady4'] / socket['decode']:.2f}x")
    inproc = runs["edgeslm in-process"]
    step1, step4 = (statistics.median(x[k] for x in inproc) for k in ("step1_s", "step4_s"))
    print(f"edgeslm in-process, the engine alone: a 4-row decode step takes {step4 * 1000:.2f} ms, {step4 / step1:.2f}x"
          f" a 1-row step ({step1 * 1000:.2f} ms), so 4 streams can decode at most {4 * step1 / step4:.2f}x one "
          "stream on this runtime")
    for name in ("llama.cpp", "edgeslm in-process"):
        if runs.get(name) and "rss_stages" in runs[name][0]:
            stages = runs[name][0]["rss_stages"]
            steps, before = [], 0.0
            for stage in stages:
                value = statistics.median(x["rss_stages"][stage] for x in runs[name])
                steps.append(f"{stage} {'+' if before else ''}{value - before:.1f}")
                before = value
            print(f"{name} resident MB as it loads: {', '.join(steps)}; peak {rows[name]['rss']:.1f}")
    sequence = runs["edgeslm in-process"][0]["tokens"]
    prompt_len = runs["edgeslm in-process"][0]["prompt_tokens"]
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode(PROMPT).ids
    kl = kl_figures(gguf, model_dir, ids + sequence, prompt_len)
    print("mean next-token KL vs fp32 on edgeslm's greedy sequence: "
          + ", ".join(f"{k} {v:.4f}" for k, v in kl.items()))
    return 0


def _has_genai() -> bool:
    if GENAI_PYTHON.is_file() and (GENAI_MODEL / "genai_config.json").is_file():
        return True
    print("onnxruntime-genai is not set up (.venv-genai and .cache/genai/int8): not run. It needs torch, "
          "transformers and onnxruntime-genai in .venv-genai, then bench/llm_genai_checkpoint.py and its builder",
          file=sys.stderr)
    return False


def _has_llama() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama-cpp-python is not installed: no llama.cpp baseline (make bench-llm installs it)",
              file=sys.stderr)
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
