"""Write the GGUF's dequantized weights as a Hugging Face Llama checkpoint, for onnxruntime-genai's model builder.

The builder cannot read quantized GGUF tensors and this machine cannot download the original checkpoint, so
bench/llm.py's onnxruntime-genai runner builds its int8 model from this (the same weights, dequantized).
Run: python bench/llm_genai_checkpoint.py --config-only MODEL_DIR OUT_DIR   (config.json, tokenizer files from the
     built model folder), then .venv-genai/bin/python bench/llm_genai_checkpoint.py GGUF OUT_DIR (the weights).
     `make bench-llm-genai` does both and runs the builder.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgeslm.convert.gguf_llama import dequantize, norm_weight, read_gguf  # noqa: E402
from edgeslm.convert.llama_onnx import rotary_order  # noqa: E402

NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
         "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
         "ffn_down": "mlp.down_proj"}


def write_config(model_dir: Path, out: Path) -> None:
    import json
    import shutil
    import tomllib

    card = tomllib.loads((model_dir / "model.toml").read_text())
    g = card["generate"]
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": g["hidden_size"],
              "intermediate_size": g["intermediate_size"], "num_hidden_layers": g["layers"],
              "num_attention_heads": g["heads"],
              "num_key_value_heads": g["kv_heads"], "head_dim": g["head_dim"], "rope_theta": g["rope_base"],
              "rms_norm_eps": 1e-5, "vocab_size": g["vocab_size"], "max_position_embeddings": g["context_length"],
              "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
              "hidden_act": "silu", "torch_dtype": "float32", "attention_bias": False, "mlp_bias": False}
    (out / "config.json").write_text(json.dumps(config, indent=1))
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    shutil.copy(model_dir / "tokenizer.json", out / "tokenizer.json")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": g["bos_token"], "eos_token": g["eos_token"],
        "pad_token": g["eos_token"], "model_max_length": g["context_length"], "chat_template": g["chat_template"]}))


def main() -> int:
    if sys.argv[1] == "--config-only":
        write_config(Path(sys.argv[2]), Path(sys.argv[3]))
        return 0
    from safetensors.numpy import save_file

    model = read_gguf(Path(sys.argv[1]))
    s = model.shape
    tensors = {"model.embed_tokens.weight": dequantize(model.tensor("token_embd.weight")),
               "model.norm.weight": norm_weight(model.tensor("output_norm.weight"))}
    for i in range(s.layers):
        for part, name in NAMES.items():
            w = dequantize(model.layer(i, part))
            if part in ("attn_q", "attn_k"):  # GGUF keeps Q/K rows in rotary-pair order; HF uses split halves
                w = w[rotary_order(s.heads if part == "attn_q" else s.kv_heads, s.head_dim)]
            tensors[f"model.layers.{i}.{name}.weight"] = w
        tensors[f"model.layers.{i}.input_layernorm.weight"] = norm_weight(model.layer(i, "attn_norm"))
        tensors[f"model.layers.{i}.post_attention_layernorm.weight"] = norm_weight(model.layer(i, "ffn_norm"))
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(Path(sys.argv[2]) / "model.safetensors"),
              metadata={"format": "pt"})
    print(f"wrote {len(tensors)} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
