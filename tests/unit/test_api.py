"""The HTTP API over fake engines (real tokenizer, real batcher): answers, and every bad input -> 4xx."""

from __future__ import annotations

import asyncio
import base64
import re
import threading

import httpx
import numpy as np
import pytest
from starlette.routing import Mount, Route

from edgeslm.config import Config, ModelConfig, ServerConfig
from edgeslm.runtime.fake import FakeEngine
from edgeslm.server.app import build_app
from edgeslm.server.schemas import ModelMetadata
from edgeslm.tasks.served import ModelRegistry, ServedModel


@pytest.fixture
def served(fake_model_dir):
    engine = FakeEngine()
    config = ModelConfig(name="fake", path=fake_model_dir, batching={"max_batch": 4, "max_queue": 2})
    registry = ModelRegistry()
    registry.models["fake"] = ServedModel.load(config, engine=engine)
    registry.configs["fake"] = config
    yield registry, engine
    engine.gate = None
    registry.close(timeout_s=5)


def call(registry, method, path, *, server=None, **kwargs):
    app = build_app(registry, Config(server=server or ServerConfig(), models=[]))

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def test_classify_answers_labels_with_scores(served):
    registry, _ = served
    r = call(registry, "POST", "/v1/classify", json={"model": "fake", "input": ["turn on the light", "what time"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [d["index"] for d in body["data"]] == [0, 1]
    first = body["data"][0]
    assert first["label"] in {"alpha", "beta", "gamma", "delta"}
    assert first["score"] == first["top"][0]["score"] and len(first["top"]) == 3
    assert sum(t["score"] for t in first["top"]) <= 1.0 + 1e-6
    assert body["usage"]["prompt_tokens"] == 6


def test_batched_answer_equals_single_answers(served):
    registry, _ = served
    texts = ["turn on the light", "volume up please", "what time is it"]
    together = call(registry, "POST", "/v1/classify", json={"input": texts, "top_k": 4}).json()["data"]
    alone = [call(registry, "POST", "/v1/classify", json={"input": t, "top_k": 4}).json()["data"][0] for t in texts]
    for a, b in zip(together, alone):
        assert a["top"] == b["top"]


def test_embeddings_float_and_base64_agree_and_are_unit_length(served):
    registry, _ = served
    floats = call(registry, "POST", "/v1/embeddings", json={"model": "fake", "input": ["turn on", "up"]}).json()
    b64 = call(registry, "POST", "/v1/embeddings",
               json={"model": "fake", "input": ["turn on", "up"], "encoding_format": "base64"}).json()
    for f, b in zip(floats["data"], b64["data"]):
        vector = np.frombuffer(base64.b64decode(b["embedding"]), dtype="<f4")
        np.testing.assert_allclose(vector, f["embedding"], rtol=1e-6)
        assert np.linalg.norm(vector) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize(
    "body, status, code, param",
    [
        (b'{"input": ["x"', 400, "invalid_json", None),
        (b'{"input": 5}', 400, "invalid_field", "input"),
        (b'{"input": ["a"], "top_k": "3"}', 400, "invalid_field", "top_k"),
        (b'{"input": []}', 400, "invalid_input", "input"),
        (b'{"input": ["   "]}', 400, "invalid_input", "input[0]"),
        (b'{"input": ["a"], "colour": 1}', 400, "invalid_field", "colour"),
        (b'{"model": "nope", "input": ["a"]}', 404, "model_not_found", "model"),
        (b'', 400, "invalid_json", None),
    ],
)
def test_bad_classify_bodies(served, body, status, code, param):
    registry, _ = served
    r = call(registry, "POST", "/v1/classify", content=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["param"] == param and error["message"]


def test_too_many_inputs_names_the_cap(served):
    registry, _ = served
    r = call(registry, "POST", "/v1/classify", json={"input": ["a"] * 6}, server=ServerConfig(max_inputs=5))
    assert r.status_code == 400 and "server.max_inputs" in r.json()["error"]["message"]


def test_body_over_limit_is_413(served):
    registry, _ = served
    r = call(registry, "POST", "/v1/classify", json={"input": ["a " * 1000]}, server=ServerConfig(max_body_bytes=1024))
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


def test_long_text_is_truncated_and_flagged_or_refused(served):
    registry, _ = served
    long_text = "turn on the light " * 5  # 20 tokens, the card allows 8
    ok = call(registry, "POST", "/v1/classify", json={"input": [long_text, "up"]}).json()
    assert [d["truncated"] for d in ok["data"]] == [True, False]
    refused = call(registry, "POST", "/v1/classify", json={"input": [long_text], "truncate": False})
    assert refused.status_code == 400
    assert "20 tokens" in refused.json()["error"]["message"] and refused.json()["error"]["param"] == "input[0]"


def test_raw_tensors_round_trip_and_shape_errors_name_the_input(served):
    registry, _ = served
    good = {"inputs": [
        {"name": "input_ids", "shape": [1, 3], "datatype": "INT64", "data": [2, 3, 6]},
        {"name": "attention_mask", "shape": [1, 3], "datatype": "INT64", "data": [[1, 1, 1]]},
    ]}
    r = call(registry, "POST", "/v2/models/fake/infer", json=good)
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    assert outputs["logits"]["shape"] == [1, 4] and outputs["logits"]["datatype"] == "FP32"
    assert outputs["hidden"]["shape"] == [1, 3, 3]
    bad_shape = {"inputs": [dict(good["inputs"][0], shape=[3]), good["inputs"][1]]}
    r = call(registry, "POST", "/v2/models/fake/infer", json=bad_shape)
    assert r.status_code == 400 and "input_ids" in r.json()["error"]["message"]
    assert "int64[?,?]" in r.json()["error"]["message"]
    bad_type = {"inputs": [dict(good["inputs"][0], datatype="FP32"), good["inputs"][1]]}
    r = call(registry, "POST", "/v2/models/fake/infer", json=bad_type)
    assert r.status_code == 400 and "INT64" in r.json()["error"]["message"]
    wrong_count = {"inputs": [dict(good["inputs"][0], data=[1, 2]), good["inputs"][1]]}
    assert call(registry, "POST", "/v2/models/fake/infer", json=wrong_count).status_code == 400


def test_raw_tensors_binary_extension(served):
    registry, _ = served
    ids = np.array([[2, 3, 6]], dtype="<i8")
    header = (b'{"inputs": [{"name": "input_ids", "shape": [1, 3], "datatype": "INT64", '
              b'"parameters": {"binary_data_size": 24}}, {"name": "attention_mask", "shape": [1, 3], '
              b'"datatype": "INT64", "data": [1, 1, 1]}], "outputs": [{"name": "logits", '
              b'"parameters": {"binary_data": true}}]}')
    r = call(registry, "POST", "/v2/models/fake/infer", content=header + ids.tobytes(),
             headers={"Inference-Header-Content-Length": str(len(header))})
    assert r.status_code == 200, r.text
    head_len = int(r.headers["inference-header-content-length"])
    import json
    doc = json.loads(r.content[:head_len])
    logits = np.frombuffer(r.content[head_len:], dtype="<f4").reshape(doc["outputs"][0]["shape"])
    json_r = call(registry, "POST", "/v2/models/fake/infer", json={"inputs": [
        {"name": "input_ids", "shape": [1, 3], "datatype": "INT64", "data": [2, 3, 6]},
        {"name": "attention_mask", "shape": [1, 3], "datatype": "INT64", "data": [1, 1, 1]}]}).json()
    expected = [o for o in json_r["outputs"] if o["name"] == "logits"][0]["data"]
    np.testing.assert_allclose(logits.ravel(), expected)


def test_full_queue_answers_503_with_retry_after(served):
    registry, engine = served
    engine.gate = threading.Event()
    app = build_app(registry, Config(models=[]))

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            send = lambda: client.post("/v1/classify", json={"input": ["up"]})  # noqa: E731
            first = asyncio.ensure_future(send())  # running (blocked in the engine)
            await asyncio.sleep(0.2)
            queued = [asyncio.ensure_future(send()) for _ in range(2)]  # fill max_queue = 2
            await asyncio.sleep(0.2)
            refused = await send()
            engine.gate.set()
            rest = await asyncio.gather(first, *queued)
            return refused, rest

    refused, rest = asyncio.run(go())
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "overloaded"
    assert [r.status_code for r in rest] == [200, 200, 200]


def test_failed_model_shows_in_ready_and_answers_503(served):
    registry, _ = served
    registry.failed["broken"] = "model file missing"
    registry.configs["broken"] = ModelConfig(name="broken", path="/nope")
    ready = call(registry, "GET", "/ready")
    assert ready.status_code == 503
    assert ready.json()["models"]["broken"] == {"state": "failed", "error": "model file missing"}
    assert ready.json()["models"]["fake"]["state"] == "ready"
    r = call(registry, "POST", "/v1/classify", json={"model": "broken", "input": ["a"]})
    assert r.status_code == 503 and "model file missing" in r.json()["error"]["message"]
    listed = {m["id"]: m for m in call(registry, "GET", "/v1/models").json()["data"]}
    assert listed["broken"]["state"] == "failed" and listed["fake"]["state"] == "ready"


def test_unknown_path_and_method_are_json_errors(served):
    registry, _ = served
    assert call(registry, "GET", "/v9/nothing").json()["error"]["code"] == "not_found"
    r = call(registry, "GET", "/v1/classify")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_openapi_lists_the_endpoints_and_schemas(served):
    registry, _ = served
    doc = call(registry, "GET", "/openapi.json").json()
    assert {"/v1/classify", "/v1/embeddings", "/v2/models/{name}/infer", "/ready"} <= set(doc["paths"])
    assert "ClassifyRequest" in doc["components"]["schemas"]
    ref = doc["paths"]["/v1/classify"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.endswith("/ClassifyRequest")


def served_operations(routes, prefix=""):
    """(method, path) of every route, mounted ones included; HEAD, which Starlette adds to every GET, left out."""
    operations = set()
    for route in routes:
        if isinstance(route, Mount):
            operations |= served_operations(route.routes, prefix + route.path_format)
        elif isinstance(route, Route):
            assert route.methods, f"{route.path} takes any method: name them, and document each"
            operations |= {(m.lower(), prefix + route.path_format) for m in route.methods if m != "HEAD"}
        else:
            raise AssertionError(f"{route!r}: this test does not know this kind of route; teach it")
    return operations


def test_openapi_documents_exactly_the_routes_the_app_serves(served):
    registry, _ = served
    app = build_app(registry, Config(models=[]))
    doc = call(registry, "GET", "/openapi.json").json()
    documented = {(method, path) for path, operations in doc["paths"].items() for method in operations}
    served_ops = served_operations(app.routes)
    assert served_ops - documented == set(), "served but not in /openapi.json"
    assert documented - served_ops == set(), "in /openapi.json but not served"
    for method, path in documented:
        declared = {p["name"] for p in doc["paths"][path][method].get("parameters", []) if p["in"] == "path"}
        assert declared == set(re.findall(r"{(\w+)}", path)), (method, path)


def test_model_metadata_answers_what_openapi_says(served):
    registry, _ = served
    r = call(registry, "GET", "/v2/models/fake")
    assert r.status_code == 200, r.text
    metadata = ModelMetadata.model_validate(r.json())
    assert [t.name for t in metadata.inputs] == ["input_ids", "attention_mask"] and metadata.platform == "fake"
    assert metadata.outputs[0].shape == [-1, 4]
    assert call(registry, "GET", "/v2/models/nope").json()["error"]["code"] == "model_not_found"
    doc = call(registry, "GET", "/openapi.json").json()
    answer = doc["paths"]["/v2/models/{name}"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer["$ref"].endswith("/ModelMetadata")
    assert "text/plain" in doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]


def test_fast_routes_keep_the_full_stack_for_other_methods(served):
    registry, _ = served
    app = build_app(registry, Config(models=[]))
    assert set(app.fast) == {("GET", "/health"), ("POST", "/v1/classify"), ("POST", "/v1/embeddings")}
    assert call(registry, "HEAD", "/health").status_code == 200
    r = call(registry, "POST", "/health")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    r = call(registry, "POST", "/v1/classify", content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def test_a_client_gone_while_sending_its_body_is_a_cancel_not_a_bug(served, caplog):
    registry, _ = served
    app = build_app(registry, Config(models=[]))
    sent: list[dict] = []
    messages = iter([{"type": "http.request", "body": b'{"input": ', "more_body": True}, {"type": "http.disconnect"}])

    async def receive():
        return next(messages)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/classify", "headers": [], "query_string": b"",
             "http_version": "1.1", "scheme": "http", "root_path": ""}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 499
    assert b'"cancelled"' in sent[1]["body"]
    assert "bug" not in caplog.text


def test_a_request_alone_on_the_server_runs_inline_and_requests_together_go_to_the_worker(served):
    from edgeslm.server.bridge import TASKS_SCOPE_KEY, ModelCaller

    registry, _ = served
    model = registry.models["fake"]
    # What is tested is the alone/together decision, not the timing: however slow a loaded machine makes the
    # first batch, it stays under the inline limit.
    model.batcher.inline_max_s = 10.0
    caller = ModelCaller()
    feeds = model.classify.prepare(["turn on the light"]).feeds

    class Request:
        def __init__(self, tasks):
            self.scope = {"headers": [], TASKS_SCOPE_KEY: tasks}
            self.receive = None

    async def go():
        await caller.run(model, feeds, Request({1}), timeout_s=5)  # the worker runs the first batch
        while model.batcher._running:  # the answer can arrive before the worker marks itself idle
            await asyncio.sleep(0.001)
        inline_before = model.batcher.inline_runs
        await caller.run(model, feeds, Request({1}), timeout_s=5)
        inline_after_alone = model.batcher.inline_runs
        together = {1, 2}  # two request tasks on the server: the first yields once and sees the second
        await asyncio.gather(caller.run(model, feeds, Request(together), timeout_s=5),
                             caller.run(model, feeds, Request(together), timeout_s=5))
        return inline_before, inline_after_alone, model.batcher.inline_runs

    inline_before, inline_after_alone, inline_after_together = asyncio.run(go())
    assert inline_after_alone == inline_before + 1
    assert inline_after_together == inline_after_alone  # neither ran inline: they went to the batch worker


CHAT = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("path, extra, param", [
    ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ("/v1/chat/completions", {"tool_choice": "auto"}, "tool_choice"),
    ("/v1/chat/completions", {"response_format": {"type": "json_object"}}, "response_format"),
    ("/v1/chat/completions", {"logit_bias": {"50256": -100}}, "logit_bias"),
    ("/v1/chat/completions", {"functions": [{"name": "f"}]}, "functions"),
    ("/v1/completions", {"best_of": 3}, "best_of"),
])
def test_openai_features_edgeslm_lacks_are_400_naming_the_field(served, path, extra, param):
    registry, _ = served
    body = {**(CHAT if "chat" in path else {"prompt": "hi"}), **extra}
    r = call(registry, "POST", path, json=body)
    error = r.json()["error"]
    assert r.status_code == 400 and error["param"] == param and error["code"] == "unsupported_field", r.text
    assert error["message"].startswith(f"{param} is not supported: edgeslm has no ")


@pytest.mark.parametrize("path, extra, param", [
    ("/v1/chat/completions", {"frobnicate": 1}, "frobnicate"),
    ("/v1/completions", {"frobnicate": 1}, "frobnicate"),
    ("/v1/chat/completions", {"stream_options": {"include_usage": True, "colour": 1}}, "stream_options.colour"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi", "mood": "odd"}]}, "messages[0].mood"),
    ("/v1/chat/completions", {"messages": [{"role": "assistant", "content": "x", "tool_calls": [{"id": "1"}]}]},
     "messages[0].tool_calls"),
])
def test_unknown_completion_fields_are_400_naming_the_field(served, path, extra, param):
    registry, _ = served
    body = {**(CHAT if "chat" in path else {"prompt": "hi"}), **extra}
    r = call(registry, "POST", path, json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


@pytest.mark.parametrize("path, body, param, allowed", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi", "foo": 1}]}, "messages[0].foo",
     "(allowed fields in messages[0]: role, content, name)"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "foo": 1}]}]},
     "messages[0].content", "(allowed fields in messages[0].content[0]: type, text)"),
    ("/v1/chat/completions", {**CHAT, "stream_options": {"colour": 1}}, "stream_options.colour",
     "(allowed fields in stream_options: include_usage, include_obfuscation)"),
    ("/v2/models/fake/infer", {"inputs": [{"name": "input_ids", "shape": [1, 1], "datatype": "INT64", "data": [2],
                                           "dtype": "int64"}]},
     "inputs[0].dtype", "(allowed fields in inputs[0]: name, shape, datatype, parameters, data)"),
    ("/v1/classify", {"input": "up", "colour": 1}, "colour", "(allowed fields: model, input, top_k, truncate)"),
])
def test_an_unknown_field_lists_the_fields_of_the_object_it_is_in(served, path, body, param, allowed):
    registry, _ = served
    r = call(registry, "POST", path, json=body)
    error = r.json()["error"]
    assert r.status_code == 400 and error["param"] == param, r.text
    assert allowed in error["message"] and error["message"].count("allowed fields") == 1, error["message"]


def test_fields_at_says_nothing_where_the_schema_cannot_tell():
    from pydantic import BaseModel

    from edgeslm.server.schemas import fields_at

    class A(BaseModel):
        a: int

    class B(BaseModel):
        b: int

    class Body(BaseModel):
        either: A | B
        named: dict[str, A]
        pair: tuple[A, B]

    assert fields_at(Body, ()) == ["either", "named", "pair"]
    assert fields_at(Body, ("either", "B")) == ["b"]  # pydantic names the union member
    assert fields_at(Body, ("named", "k")) == ["a"] and fields_at(Body, ("pair", 1)) == ["b"]
    assert fields_at(Body, ("either",)) is None  # A or B: not known which
    assert fields_at(Body, ("nope",)) is None and fields_at(Body, ("named", "k", "a")) is None


@pytest.mark.parametrize("extra", [
    {"user": "u-1", "metadata": {"team": "a"}, "n": 1, "stream": False, "logprobs": False},
    {"tools": None, "tool_choice": None, "functions": [], "logit_bias": {}, "response_format": {"type": "text"},
     "parallel_tool_calls": False, "store": False},
    {"messages": [{"role": "user", "content": "hi", "name": "ann"},  # an SDK reply's model_dump() sent back
                  {"role": "assistant", "content": "hello", "refusal": None, "tool_calls": None,
                   "function_call": None, "audio": None, "annotations": None}]},
])
def test_fields_that_ask_for_nothing_are_accepted(served, extra):
    registry, _ = served
    r = call(registry, "POST", "/v1/chat/completions", json={**CHAT, **extra})
    # Past validation: the fake registry has no generation model, which is the next thing checked.
    assert r.status_code == 404 and "no generation model is being served" in r.json()["error"]["message"], r.text


def test_without_a_generation_model_the_error_says_how_to_serve_one(served):
    registry, _ = served
    for path, body in [("/v1/completions", {"prompt": "hi"}), ("/v1/chat/completions", CHAT)]:
        r = call(registry, "POST", path, json=body)
        error = r.json()["error"]
        assert r.status_code == 404 and error["param"] == "model" and "name one" not in error["message"]
        assert "edgeslm pull smollm2-135m" in error["message"] and "edgeslm serve --model smollm2-135m" in \
            error["message"]
    r = call(registry, "POST", "/v1/completions", json={"model": "fake", "prompt": "hi"})
    error = r.json()["error"]
    assert r.status_code == 400 and error["code"] == "wrong_task" and "edgeslm pull smollm2-135m" in error["message"]


def test_the_openai_sdk_sends_nothing_the_schemas_refuse(served):
    openai = pytest.importorskip("openai")
    registry, _ = served
    app = build_app(registry, Config(models=[]))
    messages = [{"role": "user", "content": "hi"}]

    async def go():
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        sdk = openai.AsyncOpenAI(base_url="http://t/v1", api_key="unused", http_client=http, max_retries=0)
        requests = [
            lambda: sdk.chat.completions.create(model="fake", messages=messages),
            lambda: sdk.chat.completions.create(model="fake", messages=messages, stream=True,
                                                stream_options={"include_usage": True}),
            lambda: sdk.completions.create(model="fake", prompt="hi"),
            lambda: sdk.completions.create(model="fake", prompt="hi", stream=True),
            lambda: sdk.chat.completions.create(model="fake", messages=messages, tools=[
                {"type": "function", "function": {"name": "f", "parameters": {}}}]),
        ]
        errors = []
        for request in requests:
            with pytest.raises(openai.BadRequestError) as refused:
                await request()
            errors.append((refused.value.body["code"], refused.value.body["param"]))
        await http.aclose()
        return errors

    # "fake" classifies: a body that passes validation is refused for the model's task, the last for its tools.
    assert asyncio.run(go()) == [("wrong_task", "model")] * 4 + [("unsupported_field", "tools")]


def test_unknown_embeddings_fields_are_400_naming_the_field_and_user_is_accepted(served):
    registry, _ = served
    r = call(registry, "POST", "/v1/embeddings", json={"model": "fake", "input": "turn on", "colour": "red"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "colour", r.text
    r = call(registry, "POST", "/v1/embeddings", json={"model": "fake", "input": "turn on", "user": "kitchen-pi"})
    assert r.status_code == 200, r.text



@pytest.mark.parametrize("raw, param, says", [
    (b'{"prompt": "hi", "seed": -1}', "seed", "greater than or equal to 0"),
    (b'{"prompt": "hi", "temperature": NaN}', "temperature", "finite number"),
    (b'{"prompt": "hi", "top_p": Infinity}', "top_p", "finite number"),
])
def test_negative_seeds_and_non_finite_numbers_are_400_naming_the_field(served, raw, param, says):
    registry, _ = served
    r = call(registry, "POST", "/v1/completions", content=raw)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and says in r.json()["error"]["message"], r.text
