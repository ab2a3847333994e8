"""A tiny random Llama written as a real GGUF (Q4_1 projections, Q8_0 tied embedding), for fast converter tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("o", "n"), ("Ġ", "s"),
          ("r", "e"), ("a", "t"), ("Ġ", "w"), ("o", "r"), ("e", "n"), ("Ġ", "o"), ("l", "l"), ("Ġ", "b")]
SHAPE = {"layers": 2, "hidden": 64, "heads": 2, "kv_heads": 1, "head_dim": 32, "ffn": 128, "context": 512}


def byte_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def vocabulary() -> tuple[list[str], list[int], list[str]]:
    tokens = SPECIALS + byte_alphabet() + [a + b for a, b in MERGES]
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))
    return tokens, types, [f"{a} {b}" for a, b in MERGES]


def write_tiny_gguf(path: Path, seed: int = 0) -> Path:
    """Write the tiny model to `path`; the same seed writes the same file."""
    import gguf
    from gguf import GGMLQuantizationType as T
    from gguf import quants

    rng = np.random.default_rng(seed)
    s = SHAPE
    tokens, types, merges = vocabulary()
    vocab = len(tokens)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-test-llama")
    w.add_block_count(s["layers"])
    w.add_context_length(s["context"])
    w.add_embedding_length(s["hidden"])
    w.add_feed_forward_length(s["ffn"])
    w.add_head_count(s["heads"])
    w.add_head_count_kv(s["kv_heads"])
    w.add_rope_dimension_count(s["head_dim"])
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML)

    def quantized(name: str, rows: int, cols: int, kind: T, scale: float) -> None:
        data = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
        w.add_tensor(name, quants.quantize(data, kind), raw_dtype=kind)

    quantized("token_embd.weight", vocab, s["hidden"], T.Q8_0, 1.0)
    q_dim, kv_dim = s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"]
    for i in range(s["layers"]):
        w.add_tensor(f"blk.{i}.attn_norm.weight", (1 + 0.1 * rng.standard_normal(s["hidden"])).astype(np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", (1 + 0.1 * rng.standard_normal(s["hidden"])).astype(np.float32))
        quantized(f"blk.{i}.attn_q.weight", q_dim, s["hidden"], T.Q4_1, 0.15)
        quantized(f"blk.{i}.attn_k.weight", kv_dim, s["hidden"], T.Q4_1, 0.15)
        quantized(f"blk.{i}.attn_v.weight", kv_dim, s["hidden"], T.Q4_1, 0.15)
        quantized(f"blk.{i}.attn_output.weight", s["hidden"], q_dim, T.Q4_1, 0.1)
        quantized(f"blk.{i}.ffn_gate.weight", s["ffn"], s["hidden"], T.Q4_1, 0.15)
        quantized(f"blk.{i}.ffn_up.weight", s["ffn"], s["hidden"], T.Q4_1, 0.15)
        quantized(f"blk.{i}.ffn_down.weight", s["hidden"], s["ffn"], T.Q4_1, 0.1)
    w.add_tensor("output_norm.weight", np.ones(s["hidden"], np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def build_tiny_model(folder: Path, seed: int = 0) -> Path:
    """A served model folder (model.onnx, model_int8.onnx, tokenizer.json, model.toml) from the tiny GGUF."""
    from edgeslm.convert.llama_build import Recipe, build_llama

    source = folder.parent / f"{folder.name}-source"
    source.mkdir(parents=True, exist_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    write_tiny_gguf(source / "tiny.gguf", seed)
    recipe = Recipe(name="tiny", description="random tiny Llama for tests", license="Apache-2.0", package="tests")
    build_llama(recipe, source, folder)
    return folder
