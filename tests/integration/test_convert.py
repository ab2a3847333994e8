"""GGUF -> ONNX on a tiny random Llama: exact weights, the fused graph on real onnxruntime, cache paths agree."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgeslm.convert.gguf_llama import BLOCK, dequantize, read_gguf
from edgeslm.convert.llama_build import mean_kl
from edgeslm.convert.llama_onnx import GATHER_TABLE, TIED_TABLE
from edgeslm.convert.nbits import exact_weight, fold_correction, int8_weight, unpack
from edgeslm.convert.reference import ReferenceLlama
from edgeslm.runtime import EngineOptions, open_engine
from edgeslm.tasks.card import load_card
from edgeslm.tasks.decoder import Decoder

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gguf(tiny_llm):
    return read_gguf(next(tiny_llm.parent.glob("*-source/tiny.gguf")))


@pytest.fixture(scope="module")
def decoder(tiny_llm):
    engine = open_engine(tiny_llm / "model.onnx", "onnx", EngineOptions(threads=1))
    yield Decoder(engine, slots=3, context=64)
    engine.close()


def test_q4_1_and_q8_0_are_carried_over_bit_exactly(gguf):
    for name in ("blk.0.attn_q.weight", "blk.1.ffn_down.weight", "token_embd.weight"):
        t = gguf.tensor(name)
        np.testing.assert_array_equal(exact_weight(t).dequantize(), dequantize(t))
    q4 = gguf.tensor("blk.0.ffn_up.weight")
    int8_error = np.abs(int8_weight(q4).dequantize() - dequantize(q4)).max()
    assert 0 < int8_error < np.abs(dequantize(q4)).max() / 100  # the int8 variant is close, not exact


def test_a_folded_q4_1_correction_keeps_the_codes_and_comes_within_1_225_of_the_constants(gguf):
    exact = exact_weight(gguf.tensor("blk.0.ffn_down.weight"))
    folded = fold_correction(exact)
    assert folded.correction is None and folded.sum_levels == 2 and folded.k_in > folded.k
    main = exact.k // BLOCK
    # The weight's own 4-bit codes, scales and zero points are the GGUF's, untouched.
    np.testing.assert_array_equal(unpack(folded.packed, 4)[:, :main], unpack(exact.packed, 4))
    np.testing.assert_array_equal(folded.scales[:, :main], exact.scales)
    np.testing.assert_array_equal(unpack(folded.zero_points, 4)[:, :main],
                                  unpack(exact.zero_points, 4)[:, :main])
    # Only the per-block constants are approximated: within 1/225 of the largest in their 32-block group.
    error = np.abs(folded.dequantize() - exact.dequantize()).reshape(exact.n, main, BLOCK).max(axis=-1)
    groups = -(-main // BLOCK) * BLOCK
    padded = np.zeros((exact.n, groups))
    padded[:, :main] = np.abs(exact.correction)
    bound = np.repeat(padded.reshape(exact.n, -1, BLOCK).max(axis=-1), BLOCK, axis=1)[:, :main] / 225
    assert np.all(error <= bound * 1.001 + 1e-9)
    assert error.max() > 0  # approximated, not exact: the test would notice an exact encoding taking over


def test_graph_uses_the_fused_operators(tiny_llm):
    ops = {n.op_type for n in onnx.load(str(tiny_llm / "model.onnx"), load_external_data=False).graph.node}
    assert {"GroupQueryAttention", "MatMulNBits", "SkipSimplifiedLayerNormalization", "GatherBlockQuantized"} <= ops


@pytest.mark.parametrize("name", ["model.onnx", "model_int8.onnx"])
def test_the_gather_and_the_tied_projection_read_one_copy_of_the_table(tiny_llm, name):
    model = onnx.load(str(tiny_llm / name), load_external_data=False)
    where = {t.name: {e.key: e.value for e in t.external_data} for t in model.graph.initializer}
    gather_input = next(n.input[0] for n in model.graph.node if n.op_type == "GatherBlockQuantized")
    head_input = next(n.input[1] for n in model.graph.node if n.output[0] == "logits")
    assert (gather_input, head_input) == (GATHER_TABLE, TIED_TABLE)
    assert where[GATHER_TABLE] == where[TIED_TABLE]
    ends = [int(w["offset"]) + int(w["length"]) for w in where.values() if w]
    assert (tiny_llm / f"{name}.data").stat().st_size == max(ends)  # no second copy at the end


def test_onnx_logits_follow_the_fp32_reference(gguf, decoder):
    ids = np.array([1, 100, 101, 102, 40, 50, 60, 70, 2, 1, 80, 90], np.int64)
    reference = ReferenceLlama(gguf).logits(ids)
    logits = decoder.prefill(0, ids, 0, all_logits=True)
    assert mean_kl(reference, logits) < 0.01
    assert np.mean(reference.argmax(-1) == logits.argmax(-1)) >= 0.9


def test_chunked_prefill_batched_decode_and_teacher_forcing_agree(decoder):
    ids = np.arange(60, 80, dtype=np.int64)
    whole = decoder.prefill(0, ids, 0, all_logits=True)
    first = decoder.prefill(1, ids[:12], 0, all_logits=True)
    rest = decoder.prefill(1, ids[12:], 12, all_logits=True)
    np.testing.assert_allclose(np.concatenate([first, rest]), whole, atol=1e-5)
    # Slots 0 and 1 hold the same 20 tokens; slot 2 is idle. One batched decode step gives both the same row.
    rows = decoder.decode(np.array([90, 90, 0]), np.array([20, 20, 0], np.int32))
    np.testing.assert_allclose(rows[0], rows[1], atol=1e-5)
    # Prefill then one decode per token: row 0 follows the prompt, row 1 follows token 90.
    forced = decoder.teacher_force(np.concatenate([ids, [90, 0]]), 20)
    assert forced.shape == (2, decoder.layout.vocab)
    np.testing.assert_allclose(forced[0], whole[-1], atol=1e-5)
    np.testing.assert_allclose(forced[1], rows[0], atol=1e-5)


def test_card_describes_the_files(tiny_llm):
    card = load_card(tiny_llm)
    assert card.model.tasks == ("generate",)
    assert set(card.files) == {"model.onnx", "model_int8.onnx"}
    generate = card.model_extra["generate"]
    assert generate["stop_token_ids"] == [0, 2] and "<|im_start|>" in generate["chat_template"]
    assert card.files["model.onnx"].check_kl_vs_fp32 < 0.01


def test_a_changed_weights_file_is_refused_at_load(tiny_llm, tmp_path):
    import shutil

    from edgeslm.config import ModelConfig
    from edgeslm.errors import ModelLoadError
    from edgeslm.tasks.llm import GenerativeModel

    copy = tmp_path / "tampered"
    shutil.copytree(tiny_llm, copy)
    data = copy / "model.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(ModelLoadError, match="model.onnx.data does not match"):
        GenerativeModel.load(ModelConfig(name="t", path=copy))


def test_a_model_that_disagrees_with_its_reference_fails_the_selfcheck(tiny_llm, tmp_path):
    import shutil
    import tomllib

    from edgeslm.config import ModelConfig
    from edgeslm.errors import SelfCheckError
    from edgeslm.tasks.llm import GenerativeModel

    copy = tmp_path / "wrong"
    shutil.copytree(tiny_llm, copy)
    card = (copy / "model.toml").read_text()
    top = tomllib.loads(card)["generate"]["selfcheck"]["top_ids"]
    shifted = "top_ids = " + str([[(t + 7) % 200 + 3 for t in row] for row in top])
    start = card.index("top_ids = ")
    (copy / "model.toml").write_text(card[:start] + shifted + card[card.index("\n", start):])
    with pytest.raises(SelfCheckError, match="top-1 agreement"):
        GenerativeModel.load(ModelConfig(name="t", path=copy, verify_sha256=False))
    good = GenerativeModel.load(ModelConfig(name="t", path=tiny_llm))
    assert good.selfcheck["passed"] and good.info()["state"] == "ready"
    good.close()
