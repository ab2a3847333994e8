"""The real daemon on a real socket: curl, httpx and the CLI against the committed models."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

from .conftest import INTENTS, Daemon, curl_available, health_waits_during

pytestmark = pytest.mark.integration
PHRASE = "turn on the kitchen light"


@pytest.mark.skipif(not curl_available(), reason="curl is not installed")
def test_curl_classify_as_in_the_readme(daemon):
    out = subprocess.run(
        ["curl", "-sS", "--unix-socket", str(daemon.socket), "http://localhost/v1/classify",
         "-d", json.dumps({"model": "intents", "input": [PHRASE]})],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    body = json.loads(out)
    assert body["data"][0]["label"] == "lights_on", body
    assert 0.5 < body["data"][0]["score"] <= 1.0


def test_every_format_gives_the_same_labels(daemon):
    texts = [PHRASE, "what time is it", "turn the volume down a bit", "set a timer for ten minutes",
             "please stop", "switch off the bedroom lamp"]
    with daemon.client() as client:
        labels = {}
        for model in ("intents", "intents-tflite", "intents-buckets"):
            r = client.post("/v1/classify", json={"model": model, "input": texts})
            assert r.status_code == 200, r.text
            labels[model] = [d["label"] for d in r.json()["data"]]
    assert labels["intents"] == labels["intents-tflite"] == labels["intents-buckets"]
    assert labels["intents"][:2] == ["lights_on", "what_time"]


def test_ready_names_the_broken_models_and_the_rest_serve(daemon):
    with daemon.client() as client:
        ready = client.get("/ready")
        assert ready.status_code == 503
        models = ready.json()["models"]
        assert models["intents"]["state"] == "ready"
        assert models["missing"]["state"] == "failed" and "holds no model.onnx" in models["missing"]["error"]
        assert models["corrupt"]["state"] == "failed" and "cannot load" in models["corrupt"]["error"]
        r = client.post("/v1/classify", json={"model": "corrupt", "input": ["x"]})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_ready"


def test_models_lists_runtime_quantization_and_size(daemon):
    with daemon.client() as client:
        data = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert data["intents"]["runtime"] == "onnx" and "int8" in data["intents"]["quantization"]
    assert data["intents-tflite"]["runtime"] == "tflite" and data["intents-tflite"]["mode"] == "dynamic"
    assert data["intents-buckets"]["mode"] == "buckets" and "b32_s32" in data["intents-buckets"]["buckets"]
    assert data["intents"]["selfcheck"]["passed"] is True
    assert 0 < data["intents"]["file_size_bytes"] < 5_000_000


def test_socket_is_created_with_mode_0660(daemon):
    assert stat.S_IMODE(daemon.socket.stat().st_mode) == 0o660


def test_cli_classify_and_models(daemon):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGESLM_")}
    run = lambda *a: subprocess.run([sys.executable, "-m", "edgeslm", *a, "--socket", str(daemon.socket)],  # noqa: E731
                                    capture_output=True, text=True, timeout=60, env=env)
    classified = run("classify", PHRASE)
    assert classified.returncode == 0, classified.stderr
    assert classified.stdout.split()[0] == "lights_on"
    listed = run("models")
    assert listed.returncode == 0 and "intents-buckets" in listed.stdout and "FAILED" not in listed.stdout
    as_json = json.loads(run("classify", "--json", PHRASE, "what time is it").stdout)
    assert [d["label"] for d in as_json["data"]] == ["lights_on", "what_time"]
    embedded = json.loads(run("embed", "--json", "--model", "intents", PHRASE).stdout)
    assert len(embedded["data"][0]["embedding"]) > 8


def test_cli_errors_give_the_command_line_fix(daemon, capsys, monkeypatch):
    from edgeslm.cli import main

    sock = ["--socket", str(daemon.socket)]
    assert main(["classify", "--no-truncate", "word " * 400, *sock]) == 1
    err = capsys.readouterr().err
    assert "text 1 is" in err and "drop --no-truncate" in err and '"truncate"' not in err, err
    assert main(["generate", "hi", *sock]) == 1  # this daemon serves classifiers only
    err = capsys.readouterr().err
    assert "no generation model is being served" in err and "`edgeslm pull smollm2-135m`" in err, err
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n"))
    assert main(["chat", *sock]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "no generation model is being served" in err  # no "assistant> " before the error


def test_cli_listen_stops_after_count_events_of_the_kinds_asked(daemon, capsys):
    from edgeslm.cli import main

    # The daemon published a "model" event per model at start and keeps them for --since 0.
    assert main(["listen", "--since", "0", "--kinds", "model, error", "--count", "2", "--json",
                 "--socket", str(daemon.socket)]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["kind"] for e in events] == ["model", "model"]


def test_cli_reports_a_missing_daemon_clearly(tmp_path):
    r = subprocess.run([sys.executable, "-m", "edgeslm", "models", "--socket", str(tmp_path / "none.sock")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 69
    assert "edgeslm serve" in r.stderr and "Traceback" not in r.stderr


def test_bad_inputs_never_500_and_the_daemon_keeps_serving(daemon):
    bodies = [b"{not json", b'{"input": 3}', b'{"input": []}', b'{"input": ["a"], "top_k": 0}',
              json.dumps({"input": ["x"] * 65}).encode(), b'{"model": "ghost", "input": ["a"]}',
              json.dumps({"input": ["word " * 400], "truncate": False}).encode(), b"\xff\xfe", b"[]", b"null"]
    with daemon.client() as client:
        for body in bodies:
            r = client.post("/v1/classify", content=body)
            assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
            assert r.json()["error"]["message"]
        huge = client.post("/v1/classify", content=b"x" * (2 << 20))
        assert huge.status_code == 413
        wrong_tensor = client.post("/v2/models/intents/infer", json={"inputs": [
            {"name": "input_ids", "shape": [1, 2, 3], "datatype": "INT64", "data": [1] * 6},
            {"name": "attention_mask", "shape": [1, 2], "datatype": "INT64", "data": [1, 1]}]})
        assert wrong_tensor.status_code == 400 and "input_ids" in wrong_tensor.json()["error"]["message"]
        out_of_vocab = client.post("/v2/models/intents/infer", json={"inputs": [
            {"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [10**9, 5]},
            {"name": "attention_mask", "shape": [1, 2], "datatype": "INT64", "data": [1, 1]}]})
        assert 400 <= out_of_vocab.status_code < 500, out_of_vocab.text
        assert client.post("/v1/classify", json={"input": PHRASE}).status_code == 200



def _ids(shape, data):
    return {"inputs": [{"name": "input_ids", "shape": shape, "datatype": "INT64", "data": data},
                       {"name": "attention_mask", "shape": shape, "datatype": "INT64", "data": data}]}


@pytest.mark.parametrize("body, param, says", [
    (_ids([1, 0], []), "inputs[input_ids]", "has a dimension below 1"),  # killed a TFLite daemon (divide error)
    (_ids([1099511627776, 0], []), "inputs[input_ids]", "has a dimension below 1"),  # hung the loop, 2 GB
    (_ids([2**64, 1], [1, 1, 1]), "inputs[input_ids]", "needs 18446744073709551616 values; data has 3"),
    (_ids([2**32, 2**32], [1]), "inputs[input_ids]", "needs 18446744073709551616 values; data has 1"),
    (_ids([300, 1], [1] * 300), "inputs", "300 rows; at most 64 per request"),  # the fixture sets max_inputs
    (_ids([1, 400], [1] * 400), "inputs[input_ids]", "400 positions; this model takes at most"),
    (_ids([1, 3], [5000, 40, 7]), "inputs[input_ids]", "token ids must be in 0.."),
    (_ids([1, 3], [-1, 40, 7]), "inputs[input_ids]", "token ids must be in 0.."),
    ({"inputs": [{"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [5, 6]},
                 {"name": "attention_mask", "shape": [1, 2], "datatype": "INT64", "data": [5, -5]}]},
     "inputs[attention_mask]", "mask values must be in 0..1"),
])
@pytest.mark.parametrize("model", ["intents", "intents-tflite", "intents-buckets"])
def test_raw_tensors_a_model_cannot_take_are_400_and_the_daemon_lives(daemon, model, body, param, says):
    with daemon.client() as client:
        r = client.post(f"/v2/models/{model}/infer", json=body)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == param and says in error["message"], error
        assert client.get("/health").status_code == 200


def test_long_text_is_truncated_and_flagged(daemon):
    with daemon.client() as client:
        r = client.post("/v1/classify", json={"model": "intents-buckets", "input": ["turn on the light " * 30]})
    assert r.status_code == 200 and r.json()["data"][0]["truncated"] is True


@pytest.mark.parametrize("model", ["intents", "intents-tflite", "intents-buckets"])
def test_a_request_of_unlike_lengths_runs_in_pieces_and_answers_in_its_own_order(daemon, model):
    # One 32-token text among 3-token ones: where padding them all to 32 costs more than a call of its own (by
    # the call cost measured at load), the request runs in two pieces; either way the answer keeps its order.
    texts = ["stop", "turn on the light " * 10, "lights off", "what time is it", "stop", "volume up"]
    with daemon.client() as client:
        together = client.post("/v1/classify", json={"model": model, "input": texts, "top_k": 3}).json()["data"]
        alone = [client.post("/v1/classify", json={"model": model, "input": [t], "top_k": 3}).json()["data"][0]
                 for t in texts]
        embedded = client.post("/v1/embeddings", json={"model": model, "input": texts}).json()["data"]
        one = client.post("/v1/embeddings", json={"model": model, "input": texts[1:2]}).json()["data"][0]
    assert [d["label"] for d in together] == [d["label"] for d in alone]
    for a, b in zip(together, alone):
        assert [x["label"] for x in a["top"]] == [x["label"] for x in b["top"]]
        assert abs(a["score"] - b["score"]) < 1e-4
    assert [d["index"] for d in embedded] == list(range(len(texts)))
    assert max(abs(x - y) for x, y in zip(embedded[1]["embedding"], one["embedding"])) < 1e-4


def test_concurrent_clients_all_get_their_own_answer(daemon):
    import concurrent.futures

    texts = [PHRASE, "what time is it", "turn the volume up"] * 20

    def one(text):
        with daemon.client() as client:
            return client.post("/v1/classify", json={"model": "intents-buckets", "input": text}).json()["data"][0]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, texts))
    singles = {t: one(t)["label"] for t in set(texts)}
    assert [a["label"] for a in answers] == [singles[t] for t in texts]


@pytest.mark.parametrize("path", ["/v1/classify", "/v1/embeddings"])
@pytest.mark.parametrize("count", [8, 1])
def test_a_megabyte_of_texts_is_tokenised_while_health_keeps_answering(daemon, path, count):
    # One long text matters as much as several: tokenizers' one-text call holds the GIL even on a thread.
    texts = ["turn on the kitchen light please " * (31_200 // count)] * count  # ~1 MB: under server.max_body_bytes
    body = json.dumps({"model": "intents", "input": texts}).encode()
    response, seconds, health_waits = health_waits_during(daemon, path, body)
    assert response.status_code == 200, response.text
    assert [d["truncated"] for d in response.json()["data"]] == [True] * count
    # On the event loop, tokenising held a /health for nearly all of the request; off it, for a few percent.
    assert health_waits and max(health_waits) < 0.75 * seconds, (max(health_waits), seconds, len(health_waits))


# -- lifecycle: each test starts its own daemon ---------------------------------------------------


def test_stale_socket_is_replaced_and_a_live_one_refused(tmp_path):
    config = f'[[models]]\nname = "intents"\npath = "{INTENTS}"\n'
    stale_dir = tmp_path / "run"
    stale_dir.mkdir()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(stale_dir / "edgeslm.sock"))
    stale.close()  # the file stays, nobody listens: what a crash leaves
    first = Daemon(tmp_path, config).start()
    try:
        second = subprocess.run([*first.args], capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert second.returncode == 69
        assert "already listening" in second.stderr and "--socket" in second.stderr
        with first.client() as client:
            assert client.get("/health").status_code == 200  # the refusal did not disturb the live daemon
    finally:
        assert first.stop() == 0
    assert not first.socket.exists()
    assert "listening on" in first.output() and "intents: ready" in first.output()


def test_sigterm_finishes_the_request_in_flight_then_removes_the_socket(tmp_path):
    config = f'[[models]]\nname = "intents"\npath = "{INTENTS}"\n'
    d = Daemon(tmp_path, config).start()
    body = json.dumps({"input": [PHRASE]}).encode()
    conn = socket.socket(socket.AF_UNIX)
    conn.connect(str(d.socket))
    conn.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body[:10])
    time.sleep(0.3)  # the request is now in flight, its body half sent
    d.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    conn.sendall(body[10:])
    conn.settimeout(10)
    answer = b""
    while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        answer += chunk
    conn.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert b"lights_on" in answer
    # It already has its SIGTERM: wait for it to exit. Another signal sent while it exits (as stop() would)
    # could land after its handlers are gone, under load, and kill it.
    assert d.proc.wait(30) == 0
    assert d.stop() == 0
    assert not d.socket.exists()
    assert "edgeslm stopped" in d.output()


# The daemon in a child process whose models, as they close, receive a second SIGTERM: the window where the
# signal's default action used to kill it before the last records were written and the socket removed.
SECOND_SIGNAL_WHILE_CLOSING = """
import logging, os, signal, sys, threading, time
from pathlib import Path
import httpx
from edgeslm.config import load_config
from edgeslm.server.daemon import serve
from edgeslm.tasks.served import ModelRegistry

logging.basicConfig(level=logging.WARNING)
work = Path(sys.argv[1])
config = load_config(work / "edgeslm.toml")

def registry(config):
    loaded = ModelRegistry.load(config.models)
    close = loaded.close
    def close_after_a_second_sigterm(**kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # the handler runs in this (the main) thread between the sleep and close
        close(**kwargs)
    loaded.close = close_after_a_second_sigterm
    return loaded

def client():
    sock = work / "d.sock"
    while not sock.exists():
        time.sleep(0.05)
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://x") as c:
        while c.get("/ready").status_code != 200:
            time.sleep(0.05)
        for _ in range(3):
            assert c.post("/v1/classify", json={"input": ["turn on the kitchen light"]}).status_code == 200
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=client, daemon=True).start()
sys.exit(serve(config, registry_factory=registry))
"""


def test_a_second_sigterm_while_closing_still_writes_the_records_and_removes_the_socket(tmp_path):
    (tmp_path / "edgeslm.toml").write_text(
        f'[server]\nsocket_path = "{tmp_path / "d.sock"}"\n'
        f'[metrics]\ndir = "{tmp_path / "records"}"\nflush_interval_s = 600\n'  # only the final flush writes
        f'[[models]]\nname = "intents"\npath = "{INTENTS}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGESLM_")}
    done = subprocess.run([sys.executable, "-c", SECOND_SIGNAL_WHILE_CLOSING, str(tmp_path)], capture_output=True,
                          text=True, timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SIGTERM while closing" in done.stderr
    assert "edgeslm stopped" in done.stdout
    assert not (tmp_path / "d.sock").exists()
    records = [json.loads(line) for path in sorted((tmp_path / "records").glob("*.jsonl"))
               for line in path.read_text().splitlines()]
    answered = [r for r in records if r.get("task") == "classify" and r.get("status") == "ok"]
    assert len(answered) == 3, records


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_models_load_stops_cleanly(tmp_path, sig):
    # Three models take a second or more to load; the socket is bound before they do, so the signal sent as
    # soon as it appears lands while they load (or, on a fast machine, just after): a clean stop either way.
    config = "".join(f'[[models]]\nname = "{name}"\npath = "{INTENTS / file}"\n' for name, file in
                     (("a", "model.onnx"), ("b", "model.tflite"), ("c", "model_buckets.tflite")))
    d = Daemon(tmp_path, config)
    d.start_process()
    deadline = time.monotonic() + 60
    while not d.socket.exists():
        assert d.proc.poll() is None and time.monotonic() < deadline, d.output()
        time.sleep(0.005)
    d.proc.send_signal(sig)
    assert d.proc.wait(60) == 0, d.output()
    assert not d.socket.exists()
    assert "edgeslm stopped" in d.output() and "Traceback" not in d.output()


def test_bad_config_exits_78_naming_the_key(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[server]\nmax_inputs = -1\n[[models]]\nname = "x"\npath = "y"\nruntime = "tpu"\n')
    r = subprocess.run([sys.executable, "-m", "edgeslm", "serve", "--config", str(config)],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 78
    assert "server.max_inputs" in r.stderr and "models[0].runtime" in r.stderr and "'tpu'" in r.stderr
    assert "Traceback" not in r.stderr


def test_selfcheck_failure_marks_the_model_failed_with_the_error(tmp_path):
    import shutil
    import tomllib

    src = INTENTS
    copy = tmp_path / "tampered"
    shutil.copytree(src, copy)
    card = (copy / "model.toml").read_text()
    data = tomllib.loads(card)
    rows = data["selfcheck"]["expected"]
    flipped = "expected = " + json.dumps([[-x for x in row] for row in rows])
    start = card.index("expected = ")
    depth, end = 0, card.index("[", start)
    while True:  # find the bracket that closes the expected array
        depth += {"[": 1, "]": -1}.get(card[end], 0)
        if depth == 0:
            break
        end += 1
    (copy / "model.toml").write_text(card[:start] + flipped + card[end + 1 :])
    config = f'[[models]]\nname = "good"\npath = "{src}"\n[[models]]\nname = "tampered"\npath = "{copy}"\n'
    d = Daemon(tmp_path, config).start()
    try:
        with d.client() as client:
            models = client.get("/ready").json()["models"]
            assert models["good"]["state"] == "ready"
            assert models["tampered"]["state"] == "failed"
            assert "selfcheck failed" in models["tampered"]["error"] and "cosine" in models["tampered"]["error"]
    finally:
        d.stop()
