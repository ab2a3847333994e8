"""Read a Llama-family GGUF file: hyper-parameters, tokenizer metadata and quantized blocks as numpy arrays."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeslm.errors import ModelLoadError

# GGML type ids (ggml.h); only the types this converter carries over.
F32, F16, Q4_0, Q4_1, Q8_0 = 0, 1, 2, 3, 8
TYPE_NAMES = {F32: "F32", F16: "F16", Q4_0: "Q4_0", Q4_1: "Q4_1", Q8_0: "Q8_0"}
BLOCK = 32
# Token types in tokenizer.ggml.token_type: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
TOKEN_CONTROL, TOKEN_USER_DEFINED = 3, 4


@dataclass(frozen=True)
class LlamaShape:
    """Hyper-parameters of a Llama-family decoder as the GGUF states them."""

    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    context: int
    rope_base: float
    rms_eps: float

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


@dataclass(frozen=True)
class GgufVocab:
    """The tokenizer the GGUF carries (GPT-2 style byte-level BPE)."""

    model: str
    pre: str
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    unk_id: int | None
    add_bos: bool
    chat_template: str | None


@dataclass
class QuantTensor:
    """One weight [rows = output features, cols = input features] in its GGUF encoding."""

    name: str
    kind: int
    rows: int
    cols: int
    raw: np.ndarray  # uint8 [rows, bytes per row] for quantized kinds, float array otherwise

    @property
    def kind_name(self) -> str:
        return TYPE_NAMES.get(self.kind, f"type {self.kind}")


@dataclass
class GgufLlama:
    """Everything the converter reads from one GGUF file."""

    path: Path
    shape: LlamaShape
    vocab: GgufVocab
    meta: dict[str, Any]
    tensors: dict[str, QuantTensor] = field(repr=False)

    def tensor(self, name: str) -> QuantTensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise ModelLoadError(f"{self.path.name} has no tensor {name!r}; is it a Llama-family GGUF?") from None

    def layer(self, i: int, part: str) -> QuantTensor:
        return self.tensor(f"blk.{i}.{part}.weight")

    @property
    def output(self) -> QuantTensor:
        """The output projection; tied models reuse the token embedding."""
        return self.tensors.get("output.weight") or self.tensor("token_embd.weight")

    @property
    def tied(self) -> bool:
        return "output.weight" not in self.tensors


def _field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def read_gguf(path: Path) -> GgufLlama:
    """Open a GGUF file (memory-mapped) and check it is a Llama-family model this converter handles."""
    from gguf import GGUFReader

    path = Path(path)
    try:
        reader = GGUFReader(str(path))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path} as GGUF: {exc}") from None
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ModelLoadError(f"{path.name} is a {arch!r} model; only Llama-family GGUF files convert")

    def hp(key: str, default: Any = None) -> Any:
        value = _field(reader, f"llama.{key}", default)
        if value is None:
            raise ModelLoadError(f"{path.name} lacks llama.{key}; the file is incomplete")
        return value

    hidden, heads = int(hp("embedding_length")), int(hp("attention.head_count"))
    tokens = list(_field(reader, "tokenizer.ggml.tokens", []))
    shape = LlamaShape(
        layers=int(hp("block_count")), hidden=hidden, ffn=int(hp("feed_forward_length")), heads=heads,
        kv_heads=int(hp("attention.head_count_kv", heads)), head_dim=int(hp("rope.dimension_count", hidden // heads)),
        vocab=int(_field(reader, "llama.vocab_size", len(tokens))), context=int(hp("context_length")),
        rope_base=float(hp("rope.freq_base", 10000.0)), rms_eps=float(hp("attention.layer_norm_rms_epsilon")),
    )
    if shape.head_dim * heads != hidden:
        raise ModelLoadError(f"{path.name}: head_dim {shape.head_dim} x {heads} heads != hidden size {hidden}")

    def token_id(key: str) -> int | None:
        value = _field(reader, f"tokenizer.ggml.{key}")
        return None if value is None else int(value)

    vocab = GgufVocab(
        model=str(_field(reader, "tokenizer.ggml.model", "")), pre=str(_field(reader, "tokenizer.ggml.pre", "")),
        tokens=tokens, token_types=[int(t) for t in _field(reader, "tokenizer.ggml.token_type", [1] * len(tokens))],
        merges=list(_field(reader, "tokenizer.ggml.merges", [])),
        bos_id=token_id("bos_token_id"), eos_id=token_id("eos_token_id"), pad_id=token_id("padding_token_id"),
        unk_id=token_id("unknown_token_id"), add_bos=bool(_field(reader, "tokenizer.ggml.add_bos_token", False)),
        chat_template=_field(reader, "tokenizer.chat_template"),
    )
    meta = {key: _field(reader, key) for key in ("general.name", "general.license", "general.organization",
                                                 "general.size_label", "general.file_type")}
    tensors = {}
    for t in reader.tensors:
        kind = int(t.tensor_type)
        cols = int(t.shape[0])
        rows = int(np.prod(t.shape[1:])) if len(t.shape) > 1 else 1
        tensors[t.name] = QuantTensor(t.name, kind, rows, cols, np.asarray(t.data))
    return GgufLlama(path, shape, vocab, meta, tensors)


def _blocks(t: QuantTensor, block_bytes: int) -> np.ndarray:
    if t.cols % BLOCK:
        raise ModelLoadError(f"{t.name}: {t.cols} columns is not a multiple of the {BLOCK}-wide GGUF block")
    return t.raw.reshape(t.rows, t.cols // BLOCK, block_bytes)


def q4_1_parts(t: QuantTensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_1 blocks as (q uint8 [N, nb, 32] in 0..15, d float32 [N, nb], m float32 [N, nb]); w = d * q + m."""
    blocks = _blocks(t, 20)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    packed = blocks[..., 4:]
    # Byte j holds element j in its low nibble and element j + 16 in its high nibble.
    q = np.concatenate([packed & 0x0F, packed >> 4], axis=-1)
    return q, d, m


def q4_0_parts(t: QuantTensor) -> tuple[np.ndarray, np.ndarray]:
    """Q4_0 blocks as (q uint8 [N, nb, 32] in 0..15, d float32 [N, nb]); w = d * (q - 8)."""
    blocks = _blocks(t, 18)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    packed = blocks[..., 2:]
    return np.concatenate([packed & 0x0F, packed >> 4], axis=-1), d


def q8_0_parts(t: QuantTensor) -> tuple[np.ndarray, np.ndarray]:
    """Q8_0 blocks as (q int8 [N, nb, 32], d float32 [N, nb]); w = d * q."""
    blocks = _blocks(t, 34)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    return blocks[..., 2:].view(np.int8), d


def dequantize(t: QuantTensor, rows: np.ndarray | None = None) -> np.ndarray:
    """The weight as float32 [N, K] (or only `rows` of it), computed the way ggml dequantizes it."""
    raw = t.raw if rows is None else t.raw[rows]
    sub = QuantTensor(t.name, t.kind, raw.shape[0] if raw.ndim > 1 else t.rows, t.cols, raw)
    if t.kind == F32:
        return np.asarray(raw, dtype=np.float32).reshape(sub.rows, t.cols)
    if t.kind == F16:
        return np.asarray(raw).astype(np.float32).reshape(sub.rows, t.cols)
    if t.kind == Q4_1:
        q, d, m = q4_1_parts(sub)
        w = d[..., None] * q.astype(np.float32) + m[..., None]
    elif t.kind == Q4_0:
        q, d = q4_0_parts(sub)
        w = d[..., None] * (q.astype(np.float32) - 8.0)
    elif t.kind == Q8_0:
        q, d = q8_0_parts(sub)
        w = d[..., None] * q.astype(np.float32)
    else:
        raise ModelLoadError(f"{t.name} is {t.kind_name}; this converter handles F32, F16, Q4_0, Q4_1 and Q8_0")
    return w.reshape(sub.rows, t.cols)


def norm_weight(t: QuantTensor) -> np.ndarray:
    """A 1-D norm weight as float32."""
    return np.asarray(t.raw).astype(np.float32).reshape(-1)
