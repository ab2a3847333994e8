"""Both real engines on the committed intents model: same contract, same answers."""

from __future__ import annotations

import sys
import tomllib

import numpy as np
import pytest

from edgeslm.config import ModelConfig
from edgeslm.errors import BadInputError, ModelLoadError, RuntimeMissingError
from edgeslm.runtime import EngineOptions, open_engine
from edgeslm.tasks.served import ServedModel

from .conftest import INTENTS

FILES = {"onnx": INTENTS / "model.onnx", "tflite": INTENTS / "model.tflite",
         "tflite-buckets": INTENTS / "model_buckets.tflite"}
TEXTS = ["turn on the kitchen light", "what time is it", "could you turn the volume down a little please",
         "stop", "set a timer for five minutes"]


@pytest.fixture(scope="module")
def models():
    loaded = {name: ServedModel.load(ModelConfig(name=name, path=path)) for name, path in FILES.items()}
    yield loaded
    for model in loaded.values():
        model.close()


@pytest.mark.parametrize("name", list(FILES))
def test_specs_are_read_at_load(models, name):
    engine = models[name].engine
    assert [s.name for s in engine.inputs] == ["input_ids", "attention_mask"] or \
        sorted(s.name for s in engine.inputs) == ["attention_mask", "input_ids"]
    outputs = {s.name: s for s in engine.outputs}
    assert set(outputs) == {"logits", "hidden"}
    assert outputs["logits"].shape[-1] == len(models[name].classify.labels)
    assert outputs["hidden"].shape[:2] == (None, None)


def test_engines_agree_on_the_same_model(models):
    encoded = models["onnx"].encoder.encode(TEXTS)
    results = {}
    for name, model in models.items():
        feeds = {k: v.astype(model.engine.input(k).dtype) for k, v in encoded.feeds.items()}
        results[name] = model.engine.run(feeds)
    ref = results["onnx"]
    for name, out in results.items():
        assert out["logits"].shape == ref["logits"].shape, name
        assert (out["logits"].argmax(1) == ref["logits"].argmax(1)).all(), name
        cos = (out["logits"] * ref["logits"]).sum(1) / np.linalg.norm(out["logits"], axis=1) / \
            np.linalg.norm(ref["logits"], axis=1)
        assert cos.min() > 0.98, (name, cos)
        assert out["hidden"].shape == ref["hidden"].shape, name


def test_bucket_engine_reports_buckets_and_pads_inside(models):
    engine = models["tflite-buckets"].engine
    assert engine.batch_buckets == (1, 2, 4, 8, 16, 32) and engine.seq_buckets == (16, 32)
    assert models["tflite-buckets"].batcher.max_batch == 32
    ids = np.array([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12], [13, 0, 0, 0, 0]], dtype=engine.input("input_ids").dtype)
    mask = (ids != 0).astype(engine.input("attention_mask").dtype)
    out = engine.run({"input_ids": ids, "attention_mask": mask})
    assert out["logits"].shape[0] == 3 and out["hidden"].shape[:2] == (3, 5)
    with pytest.raises(BadInputError, match="largest bucket"):
        engine.check_feeds({"input_ids": np.zeros((1, 40), ids.dtype), "attention_mask": np.zeros((1, 40), mask.dtype)})


def test_bucket_engine_splits_a_batch_over_its_buckets_as_its_call_cost_says(models):
    engine = models["tflite-buckets"].engine
    saved = engine.call_tokens
    encoded = models["tflite-buckets"].encoder.encode([TEXTS[i % len(TEXTS)] for i in range(11)])
    feeds = {k: v.astype(engine.input(k).dtype) for k, v in encoded.feeds.items()}
    alone = np.concatenate([engine.run({k: v[i : i + 1] for k, v in feeds.items()})["logits"] for i in range(11)])
    try:
        engine.set_call_tokens(0.0)  # calls are free: no padded row
        assert engine.plan(11, feeds["input_ids"].shape[1]) == (16, (8, 2, 1))
        assert engine.batch_cost(11, 5) == 11 * 16
        split = engine.run(feeds)["logits"]
        engine.set_call_tokens(1000.0)  # calls are dear: one padded call
        assert engine.plan(11, feeds["input_ids"].shape[1]) == (16, (16,))
        assert engine.batch_cost(11, 5) == 1000 + 16 * 16
        assert engine.batch_cost(3, 20) == 1000 + 4 * 32  # the next seq bucket
        whole = engine.run(feeds)["logits"]
    finally:
        engine.set_call_tokens(saved)
    np.testing.assert_allclose(split, alone, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(whole, alone, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", list(FILES))
def test_call_cost_is_measured_at_load_and_weighs_padding_in_the_batcher(models, name):
    model = models[name]
    assert model.engine.call_tokens is not None and model.engine.call_tokens >= 0
    assert model.info()["call_cost_tokens"] == round(model.engine.call_tokens, 1)
    assert model.batcher.cost == model.engine.batch_cost
    # Configured, it is not measured.
    fixed = ServedModel.load(ModelConfig(name="fixed", path=FILES[name], batching={"call_cost_tokens": 7}))
    try:
        assert fixed.engine.call_tokens == 7 and fixed.batcher.cost(2, 3) >= 7 + 6
    finally:
        fixed.close()


@pytest.mark.parametrize("name", list(FILES))
def test_a_request_of_unlike_lengths_is_cut_into_pieces_that_pad_less(name):
    model = ServedModel.load(ModelConfig(name="pieces", path=FILES[name], batching={"call_cost_tokens": 10}))
    try:
        texts = ["stop", "turn on the light " * 10, "lights off", "stop"]
        encoded = model.encoder.encode(texts)
        pieces, order = model.chunks(encoded.feeds, encoded.lengths)
        assert order.tolist() == [0, 3, 2, 1]  # shortest first; the long text alone
        assert [p["input_ids"].shape for p in pieces] == [(3, int(encoded.lengths[2])), (1, int(encoded.lengths[1]))]
        together = model.infer(encoded.feeds, lengths=encoded.lengths)["logits"]
        alone = [model.infer(model.encoder.encode([t]).feeds)["logits"][0] for t in texts]
        np.testing.assert_allclose(together, np.stack(alone), rtol=1e-4, atol=1e-4)
        assert model.chunks(encoded.feeds)[1] is None  # without lengths: one piece, as sent
    finally:
        model.close()


def test_dynamic_tflite_keeps_one_allocation_per_shape(models):
    engine = models["tflite"].engine
    dtype = engine.input("input_ids").dtype
    shapes = [(1, 4), (3, 7), (1, 4), (3, 7)]
    for rows, seq in shapes:
        ids = np.ones((rows, seq), dtype)
        engine.run({"input_ids": ids, "attention_mask": np.ones((rows, seq), engine.input("attention_mask").dtype)})
    cached = engine.cached_shapes
    assert ((1, 4), (1, 4)) in cached and ((3, 7), (3, 7)) in cached


def test_tflite_calls_from_many_threads_reach_the_interpreter_on_one(models, monkeypatch):
    import threading

    engine = models["tflite"].engine
    seen: set[int] = set()
    run_dynamic = engine._run_dynamic

    def spy(feeds):
        seen.add(threading.get_ident())
        return run_dynamic(feeds)

    monkeypatch.setattr(engine, "_run_dynamic", spy)
    encoded = models["tflite"].classify.prepare(TEXTS)
    expected = engine.run(encoded.feeds)["logits"]
    results: list[np.ndarray] = []
    callers = [threading.Thread(target=lambda: results.extend(engine.run(encoded.feeds)["logits"] for _ in range(20)))
               for _ in range(4)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert len(results) == 80 and all(np.array_equal(r, expected) for r in results)
    assert len(seen) == 1 and threading.get_ident() not in seen
    # An error raised on the owner thread reaches its caller, and the owner goes on serving.
    monkeypatch.setattr(engine, "_run_dynamic", lambda feeds: {}[feeds])
    with pytest.raises(TypeError):
        engine.run(encoded.feeds)
    monkeypatch.setattr(engine, "_run_dynamic", run_dynamic)
    assert np.array_equal(engine.run(encoded.feeds)["logits"], expected)


def test_a_closed_owner_thread_refuses_calls():
    from edgeslm.runtime.tflite import OwnerThread

    owner = OwnerThread("test-owner")
    assert owner.call(lambda a, b: a + b, 2, 3) == 5
    assert owner.call(owner.call, len, "abc") == 3  # a call from the owner thread itself runs at once
    owner.close()
    with pytest.raises(RuntimeError, match="closed"):
        owner.call(len, "abc")


@pytest.mark.parametrize("name", list(FILES))
def test_padding_does_not_change_a_row(models, name):
    model = models[name]
    alone = model.encoder.encode([TEXTS[3]])
    together = model.encoder.encode([TEXTS[3], TEXTS[2]])
    a = model.engine.run(alone.feeds)["logits"][0]
    b = model.engine.run(together.feeds)["logits"][0]
    np.testing.assert_allclose(a, b, atol=1e-3)


def test_a_text_answered_alone_or_in_a_batch_gets_the_same_scores(models):
    # One text takes the Python-float path, several the numpy one: on the same logits they must agree.
    model = models["onnx"]
    phrases = tomllib.loads((INTENTS / "phrases.toml").read_text())["intents"]
    texts = [p for intent in phrases.values() for p in intent["heldout"]]
    encoded = model.classify.prepare(texts)
    logits = model.engine.run(encoded.feeds)["logits"]
    classes = logits.shape[-1]
    together = model.classify.answer(encoded, {"logits": logits}, classes)  # every score of every text
    for i, text in enumerate(texts):
        alone = model.classify.answer(model.classify.prepare([text]), {"logits": logits[i:i + 1]}, classes)[0]
        assert {**alone, "index": i} == together[i], text


def test_formats_agree_on_every_heldout_phrase(models):
    data = tomllib.loads((INTENTS / "phrases.toml").read_text())
    texts, truth = [], []
    for label, intent in data["intents"].items():
        for phrase in intent["heldout"]:
            texts.append(phrase)
            truth.append(label)
    labels = {}
    for name, model in models.items():
        predicted = []
        for i in range(0, len(texts), 32):
            encoded = model.encoder.encode(texts[i : i + 32])
            best = model.engine.run(encoded.feeds)["logits"].argmax(1)
            predicted += [model.classify.labels[i] for i in best]
        labels[name] = predicted
    assert labels["onnx"] == labels["tflite"] == labels["tflite-buckets"]
    accuracy = np.mean([p == t for p, t in zip(labels["onnx"], truth)])
    card = tomllib.loads((INTENTS / "model.toml").read_text())
    assert accuracy == pytest.approx(card["files"]["model.onnx"]["heldout_accuracy"], abs=1e-3)
    assert accuracy >= 0.85


def test_blind_set_accuracy_matches_the_card(models):
    blind = tomllib.loads((INTENTS / "blind.toml").read_text())["intents"]
    texts = [t for phrases in blind.values() for t in phrases]
    truth = [label for label, phrases in blind.items() for _ in phrases]
    card = tomllib.loads((INTENTS / "model.toml").read_text())["eval"]
    for name, model in models.items():
        encoded = model.encoder.encode(texts)
        predicted = [model.classify.labels[i] for i in model.infer(encoded.feeds)["logits"].argmax(1)]
        accuracy = float(np.mean([p == t for p, t in zip(predicted, truth)]))
        assert accuracy == pytest.approx(card["blind_accuracy"], abs=1e-3), name


def test_selfcheck_passes_on_both_runtimes(models):
    for name, model in models.items():
        assert model.selfcheck is not None and model.selfcheck["passed"], name
        assert model.selfcheck["min_cosine"] >= 0.99


def test_unknown_extension_and_missing_file_are_load_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="extension"):
        open_engine(tmp_path / "model.bin")
    with pytest.raises(ModelLoadError, match="does not exist"):
        open_engine(tmp_path / "model.onnx")
    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"TFL3 but not really a flatbuffer" * 4)
    with pytest.raises(ModelLoadError, match="cannot load"):
        open_engine(bad)


def test_no_tflite_runtime_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    with pytest.raises(RuntimeMissingError, match=r"edgeslm\[tflite\]"):
        open_engine(FILES["tflite"], options=EngineOptions())


@pytest.mark.parametrize(("spin", "allow", "stop"), [("run", "1", "1"), ("always", "1", None), ("off", "0", None)])
def test_spin_modes_reach_the_onnxruntime_session(spin, allow, stop):
    engine = open_engine(FILES["onnx"], "onnx", EngineOptions(threads=2, spin=spin))
    try:
        options = engine._session.get_session_options()

        def entry(key):
            try:
                return options.get_session_config_entry(key)
            except Exception:  # onnxruntime raises when the key was never set
                return None

        assert entry("session.intra_op.allow_spinning") == allow
        assert entry("session.force_spinning_stop") == stop
    finally:
        engine.close()
