"""A float32 numpy forward pass of a Llama GGUF from its dequantized weights: what converted models answer to."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgeslm.convert.gguf_llama import GgufLlama, dequantize, norm_weight

PARTS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


@dataclass
class ReferenceCache:
    """Keys (after rotary) and values per layer: lists of [T, kv_heads, head_dim] float32."""

    keys: list[np.ndarray]
    values: list[np.ndarray]

    @property
    def length(self) -> int:
        return 0 if not self.keys else self.keys[0].shape[0]


def _rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(eps)) * weight


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (np.float32(1.0) + np.exp(-x))


class ReferenceLlama:
    """fp32 reference of the GGUF as ggml computes it: interleaved (GGUF-order) rotary on the stored Q/K rows.

    With `keep_weights` the dequantized weights stay in memory (about 4 bytes per parameter);
    without, each layer is dequantized when used, which keeps memory near one layer's size.
    """

    def __init__(self, model: GgufLlama, *, keep_weights: bool = True):
        self.model = model
        self.shape = model.shape
        self.keep = keep_weights
        self._weights: dict[tuple[int, str], np.ndarray] = {}
        s = self.shape
        self._inv_freq = (s.rope_base ** (-np.arange(0, s.head_dim, 2, dtype=np.float64) / s.head_dim))
        self._norms = [(norm_weight(model.layer(i, "attn_norm")), norm_weight(model.layer(i, "ffn_norm")))
                       for i in range(s.layers)]
        self._final_norm = norm_weight(model.tensor("output_norm.weight"))
        self._output = dequantize(model.output) if keep_weights else None

    def weight(self, layer: int, part: str) -> np.ndarray:
        key = (layer, part)
        if key in self._weights:
            return self._weights[key]
        w = dequantize(self.model.layer(layer, part))
        if self.keep:
            self._weights[key] = w
        return w

    def _rotary(self, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        # x: [T, heads, head_dim]; pairs (2i, 2i+1) rotate by pos * inv_freq[i].
        angles = positions[:, None].astype(np.float64) * self._inv_freq[None, :]
        cos = np.cos(angles).astype(np.float32)[:, None, :]
        sin = np.sin(angles).astype(np.float32)[:, None, :]
        even, odd = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = even * cos - odd * sin
        out[..., 1::2] = even * sin + odd * cos
        return out

    def forward(self, ids: Sequence[int], cache: ReferenceCache | None = None) -> tuple[np.ndarray, ReferenceCache]:
        """Logits float32 [len(ids), vocab] for tokens appended after `cache`, and the grown cache."""
        s = self.shape
        cache = cache or ReferenceCache([], [])
        past = cache.length
        ids = np.asarray(ids, dtype=np.int64)
        n = len(ids)
        positions = np.arange(past, past + n)
        x = dequantize(self.model.tensor("token_embd.weight"), ids)
        group = s.heads // s.kv_heads
        causal = np.triu(np.full((n, past + n), -np.inf, dtype=np.float32), k=past + 1)
        keys, values = [], []
        for i in range(s.layers):
            attn_norm, ffn_norm = self._norms[i]
            h = _rms_norm(x, attn_norm, s.rms_eps)
            q = (h @ self.weight(i, "attn_q").T).reshape(n, s.heads, s.head_dim)
            k = (h @ self.weight(i, "attn_k").T).reshape(n, s.kv_heads, s.head_dim)
            v = (h @ self.weight(i, "attn_v").T).reshape(n, s.kv_heads, s.head_dim)
            q, k = self._rotary(q, positions), self._rotary(k, positions)
            if past:
                k = np.concatenate([cache.keys[i], k])
                v = np.concatenate([cache.values[i], v])
            keys.append(k)
            values.append(v)
            kh = np.repeat(k, group, axis=1).transpose(1, 2, 0)  # [heads, hd, T]
            vh = np.repeat(v, group, axis=1).transpose(1, 0, 2)  # [heads, T, hd]
            scores = q.transpose(1, 0, 2) @ kh / np.float32(np.sqrt(s.head_dim)) + causal
            scores -= scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            attn = (probs @ vh).transpose(1, 0, 2).reshape(n, s.hidden)
            x = x + attn @ self.weight(i, "attn_output").T
            h = _rms_norm(x, ffn_norm, s.rms_eps)
            mlp = _silu(h @ self.weight(i, "ffn_gate").T) * (h @ self.weight(i, "ffn_up").T)
            x = x + mlp @ self.weight(i, "ffn_down").T
        x = _rms_norm(x, self._final_norm, s.rms_eps)
        output = self._output if self._output is not None else dequantize(self.model.output)
        return (x @ output.T).astype(np.float32), ReferenceCache(keys, values)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Teacher-forced logits [len(ids), vocab]: row t predicts token t + 1."""
        return self.forward(ids)[0]

    def greedy(self, prompt: Sequence[int], max_new: int, stop_ids: Sequence[int] = ()) -> list[int]:
        """Greedy continuation of `prompt` (new tokens only), stopping after a token in `stop_ids`."""
        logits, cache = self.forward(prompt)
        out: list[int] = []
        for _ in range(max_new):
            token = int(np.argmax(logits[-1]))
            out.append(token)
            if token in stop_ids:
                break
            logits, cache = self.forward([token], cache)
        return out
