"""An ONNX decoder graph for a Llama GGUF on onnxruntime's fused CPU operators, with an in-place KV cache.

Tokens flow as rows of 2-D tensors [batch * seq, features]. Per layer: SkipSimplifiedLayerNormalization -> one
MatMulNBits for Q|K|V -> GroupQueryAttention (rotary inside; past and present KV share one buffer) -> MatMulNBits ->
SkipSimplifiedLayerNormalization -> one MatMulNBits for gate|up -> SiLU(gate) * up -> MatMulNBits. The last layer,
past its attention, runs on the rows named by logits_index alone. A Q4_1 weight's per-block constant rides in the
same MatMulNBits: the node reads x followed by x's 32-block sums (x @ P), which meet extra 4-bit weight rows holding
the constants (nbits.fold_correction). The token embedding and the tied output projection share one 8-bit table
(GatherBlockQuantized / MatMulNBits): one copy on disk, read through two initializers (share_gather_table).

Inputs: input_ids int64 [batch, seq]; seqlens_k int32 [batch] (tokens in the cache after this step, minus 1);
total_sequence_length int32 scalar; logits_index int64 [n] (positions along seq whose logits to return);
past_key_values.{i}.key / .value float32 [batch, kv_heads, cache, head_dim].
Outputs: logits float32 [batch, n, vocab]; present.{i}.key / .value (bind them to the past buffers).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeslm.convert.gguf_llama import BLOCK, GgufLlama, LlamaShape, norm_weight
from edgeslm.convert.nbits import (
    NBitsWeight,
    exact_weight,
    fold_correction,
    int8_weight,
    permute_rows,
    stack,
    sums_width,
)

MS = "com.microsoft"
OPSET = 21
ACCURACY_INT8 = 4  # MatMulNBits accuracy_level 4: activations quantized to int8 per block (the fast CPU path)
TIED_TABLE = "embed.qweight"  # the 8-bit token table: the tied output projection's weight
GATHER_TABLE = "embed.gather_qweight"  # the same table as the embedding gather's input (same bytes on disk)


@dataclass
class GraphParts:
    """Nodes and initializers as they are added."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    _names: set[str] = field(default_factory=set)

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], *, domain: str = "", **attrs) -> list[str]:
        name = f"{op}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain, **attrs))
        return outputs


def rotary_order(heads: int, head_dim: int) -> np.ndarray:
    """Row order taking GGUF's interleaved Q/K rows (pair i at 2i, 2i+1) to split halves (i, i + head_dim/2)."""
    half = head_dim // 2
    i, j = np.meshgrid(np.arange(half), np.arange(2), indexing="xy")  # j: which half, i: pair
    within = (2 * i + j).reshape(-1)  # position r = j*half + i takes GGUF row 2i + j
    return (np.arange(heads)[:, None] * head_dim + within[None, :]).reshape(-1)


def rotary_tables(shape: LlamaShape) -> tuple[np.ndarray, np.ndarray]:
    inv_freq = shape.rope_base ** (-np.arange(0, shape.head_dim, 2, dtype=np.float64) / shape.head_dim)
    angles = np.arange(shape.context, dtype=np.float64)[:, None] * inv_freq[None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


class LlamaGraphBuilder:
    """Builds the decoder graph; `weight_for` chooses each projection's encoding (exact or 8-bit)."""

    def __init__(self, model: GgufLlama, weight_for: Callable, *, accuracy_level: int = ACCURACY_INT8):
        self.model = model
        self.s = model.shape
        self.weight_for = weight_for
        self.accuracy = accuracy_level
        self.g = GraphParts()
        self._consts: dict[str, str] = {}

    def _block_sums(self, k: int) -> str:
        """P float32 [k, sums_width(k)] with P[i, b] = 1 when column i is in block b: x @ P sums x over each
        block (the columns past k/32 are zero padding)."""
        name = f"block_sums_{k}"
        if name not in self._consts:
            p = np.zeros((k, sums_width(k)), np.float32)
            p[np.arange(k), np.arange(k) // BLOCK] = 1.0
            self._consts[name] = self.g.const(name, p)
        return self._consts[name]

    def matmul(self, x: str, w: NBitsWeight, prefix: str) -> str:
        """x [..., K] @ W.T in one MatMulNBits. A Q4_1 correction is folded into the node (see
        nbits.fold_correction): its input is then x followed by copies of x's block sums."""
        g = self.g
        w = fold_correction(w)
        if w.sum_levels:
            sums = g.node("MatMul", [x, self._block_sums(w.k)], [f"{prefix}.blocksum"])[0]
            x = g.node("Concat", [x, *[sums] * w.sum_levels], [f"{prefix}.with_sums"], axis=-1)[0]
        inputs = [x, g.const(f"{prefix}.qweight", w.packed), g.const(f"{prefix}.scales", w.scales)]
        if w.zero_points is not None:
            inputs.append(g.const(f"{prefix}.zero_points", w.zero_points))
        return g.node("MatMulNBits", inputs, [f"{prefix}.out"], domain=MS, K=w.k_in, N=w.n, bits=w.bits,
                      block_size=BLOCK, accuracy_level=self.accuracy)[0]

    def build(self, *, name: str = "edgeslm-llama") -> onnx.ModelProto:
        s, g, m = self.s, self.g, self.model
        batch, seq, cache = "batch", "seq", "cache"
        inputs = [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, [batch, seq]),
            helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [batch]),
            helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
            helper.make_tensor_value_info("logits_index", TensorProto.INT64, ["n"]),
        ]
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, "n", s.vocab])]
        kv_shape = [batch, s.kv_heads, cache, s.head_dim]
        for i in range(s.layers):
            for kind in ("key", "value"):
                inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", TensorProto.FLOAT, kv_shape))
                outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", TensorProto.FLOAT, kv_shape))

        embed = self.weight_for(m.tensor("token_embd.weight"), "embed")
        if embed.bits != 8 or embed.zero_points is not None or embed.correction is not None:
            raise ValueError("the token embedding must be a symmetric 8-bit table")
        table = g.const(TIED_TABLE, embed.packed)  # [vocab, nb, 32]
        g.const("embed.gather_scales", embed.scales[..., None])
        # The gather reads the table through an initializer of its own (GATHER_TABLE), not shared with the tied
        # output projection: onnxruntime then drops the projection's copy once it has repacked it.
        gather_table = GATHER_TABLE if m.tied else table
        g.node("GatherBlockQuantized", [gather_table, "input_ids", "embed.gather_scales"], ["embed.blocks"],
               domain=MS, bits=8, block_size=BLOCK, gather_axis=0, quantize_axis=2)
        # Tokens are rows of 2-D tensors [batch * seq, features]; GroupQueryAttention alone wants [batch, seq, ..].
        tokens_shape = g.const("tokens_shape", np.array([-1, s.hidden], np.int64))
        hidden = g.node("Reshape", ["embed.blocks", tokens_shape], ["embed.out"])[0]
        ids_shape = g.node("Shape", ["input_ids"], ["ids_shape"])[0]
        bsd = g.node("Concat", [ids_shape, g.const("minus_one", np.array([-1], np.int64))], ["bsd_shape"],
                     axis=0)[0]
        cos, sin = rotary_tables(s)
        g.const("cos_cache", cos)
        g.const("sin_cache", sin)
        order = rotary_order(s.heads, s.head_dim)
        kv_order = rotary_order(s.kv_heads, s.head_dim)
        residual: str = hidden
        pending: str | None = None
        for i in range(s.layers):
            p = f"layers.{i}"
            attn_norm = g.const(f"{p}.attn_norm", norm_weight(m.layer(i, "attn_norm")))
            if pending is None:
                normed = g.node("SimplifiedLayerNormalization", [residual, attn_norm], [f"{p}.attn_in"],
                                epsilon=s.rms_eps, axis=-1, stash_type=1)[0]
            else:
                normed, residual = g.node("SkipSimplifiedLayerNormalization", [pending, residual, attn_norm],
                                          [f"{p}.attn_in", "", "", f"{p}.resid_attn"], domain=MS,
                                          epsilon=s.rms_eps)[::3]
            q = permute_rows(self.weight_for(m.layer(i, "attn_q"), "attn_q"), order)
            k = permute_rows(self.weight_for(m.layer(i, "attn_k"), "attn_k"), kv_order)
            v = self.weight_for(m.layer(i, "attn_v"), "attn_v")
            qkv = self.matmul(normed, stack([q, k, v]), f"{p}.qkv")
            qkv3 = g.node("Reshape", [qkv, bsd], [f"{p}.qkv3"])[0]
            attn3 = g.node(
                "GroupQueryAttention",
                [qkv3, "", "", f"past_key_values.{i}.key", f"past_key_values.{i}.value", "seqlens_k",
                 "total_sequence_length", "cos_cache", "sin_cache"],
                [f"{p}.attn3", f"present.{i}.key", f"present.{i}.value"], domain=MS,
                num_heads=s.heads, kv_num_heads=s.kv_heads, do_rotary=1, rotary_interleaved=0,
            )[0]
            if i == s.layers - 1:
                # Past the last attention only the rows whose logits are asked for matter: the last layer's
                # output projection and feed-forward run on those rows alone (a prefill's others are skipped).
                attn = g.node("Gather", [attn3, "logits_index"], [f"{p}.attn"], axis=1)[0]
                resid3 = g.node("Reshape", [residual, bsd], [f"{p}.resid3"])[0]
                residual = g.node("Gather", [resid3, "logits_index"], [f"{p}.resid_picked"], axis=1)[0]
            else:
                attn = g.node("Reshape", [attn3, tokens_shape], [f"{p}.attn"])[0]
            out = self.matmul(attn, self.weight_for(m.layer(i, "attn_output"), "attn_output"), f"{p}.o")
            ffn_norm = g.const(f"{p}.ffn_norm", norm_weight(m.layer(i, "ffn_norm")))
            normed, residual = g.node("SkipSimplifiedLayerNormalization", [out, residual, ffn_norm],
                                      [f"{p}.ffn_in", "", "", f"{p}.resid_ffn"], domain=MS,
                                      epsilon=s.rms_eps)[::3]
            gate_up = stack([self.weight_for(m.layer(i, "ffn_gate"), "ffn_gate"),
                             self.weight_for(m.layer(i, "ffn_up"), "ffn_up")])
            gu = self.matmul(normed, gate_up, f"{p}.gate_up")
            gate, up = g.node("Split", [gu], [f"{p}.gate", f"{p}.up"], axis=-1, num_outputs=2)
            silu = g.node("QuickGelu", [gate], [f"{p}.silu"], domain=MS, alpha=1.0)[0]  # x * sigmoid(x)
            act = g.node("Mul", [silu, up], [f"{p}.act"])[0]
            pending = self.matmul(act, self.weight_for(m.layer(i, "ffn_down"), "ffn_down"), f"{p}.down")
        final_norm = g.const("final_norm", norm_weight(m.tensor("output_norm.weight")))
        assert pending is not None
        normed = g.node("SkipSimplifiedLayerNormalization", [pending, residual, final_norm], ["final.normed"],
                        domain=MS, epsilon=s.rms_eps)[0]
        head = embed if m.tied else self.weight_for(m.output, "output")
        if m.tied:
            g.node("MatMulNBits", [normed, table, g.const("embed.scales", embed.scales)], ["logits"], domain=MS,
                   K=head.k, N=head.n, bits=8, block_size=BLOCK, accuracy_level=self.accuracy)
            g.const(GATHER_TABLE, embed.packed)  # last, so that its bytes end the side file (see share_gather_table)
        else:
            g.node("Identity", [self.matmul(normed, head, "lm_head")], ["logits"])
        graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=g.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)],
                                  producer_name="edgeslm", producer_version="1")
        model.ir_version = 10
        return model


def share_gather_table(model_path: Path) -> None:
    """In a saved model, point the gather's table (GATHER_TABLE) at the tied table's bytes in the side file and
    cut its own copy, the side file's last bytes, off: one copy on disk. onnxruntime maps each initializer on
    its own, so the gather's mapping faults in only the rows it reads, and the projection's goes once repacked
    (measured: an in-process generator holds 23 MB less after 128 tokens, 13 MB less over 602 distinct tokens;
    see the README's memory notes)."""
    model = onnx.load(str(model_path), load_external_data=False)
    by_name = {t.name: t for t in model.graph.initializer}
    if GATHER_TABLE not in by_name:
        return
    gather, tied = by_name[GATHER_TABLE], by_name[TIED_TABLE]
    own, shared = ({e.key: e.value for e in t.external_data} for t in (gather, tied))
    side = model_path.parent / own["location"]
    start, length = int(own["offset"]), int(own["length"])
    if shared["location"] != own["location"] or int(shared["length"]) != length or \
            start + length != side.stat().st_size:
        raise ValueError(f"{model_path.name}: the gather's table is not the side file's last tensor")
    os.truncate(side, start)  # the builder wrote the same array under both names: nothing to compare
    del gather.external_data[:]
    gather.external_data.extend(tied.external_data)
    onnx.save_model(model, str(model_path))


def exact_encoding(t, role: str) -> NBitsWeight:
    """Weights exactly as the GGUF stores them."""
    return exact_weight(t)


def int8_encoding(t, role: str) -> NBitsWeight:
    """Every projection as 8-bit blocks (Q8_0 exact, 4-bit types rounded to the nearest 8-bit level)."""
    return int8_weight(t)


def build_graph(model: GgufLlama, variant: str = "exact") -> onnx.ModelProto:
    """The decoder graph with exact ("exact") or all-8-bit ("int8") weights."""
    chooser = {"exact": exact_encoding, "int8": int8_encoding}[variant]
    return LlamaGraphBuilder(model, chooser).build(name=f"edgeslm-{variant}")
