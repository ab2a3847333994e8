"""Runs a decoder graph (see edgeslm/convert/llama_onnx.py) over a preallocated, slot-indexed KV cache."""

from __future__ import annotations

import mmap
import re
from dataclasses import dataclass

import numpy as np

from edgeslm.errors import ModelLoadError
from edgeslm.runtime.base import Binding, Engine

_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
REQUIRED_INPUTS = ("input_ids", "seqlens_k", "total_sequence_length", "logits_index")


def lazy_zeros(shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
    """Zeros whose memory is taken a small page at a time, as they are first written.

    np.zeros would do the same for a big array, except that numpy asks the kernel for transparent huge
    pages on allocations of 4 MiB and more: a KV cache then takes 2 MiB per layer and slot the moment a
    sequence writes its first position. Measured here, SmolLM2 with 4 slots of 2048 tokens: 554 MB after
    four 32-token completions instead of 314 MB."""
    size = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
    region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):  # Linux
        region.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(region, dtype=dtype, count=int(np.prod(shape))).reshape(shape)  # keeps `region` alive


@dataclass(frozen=True)
class DecoderLayout:
    """What the graph's inputs and outputs say about its cache: layers, KV heads, head size and vocabulary."""

    layers: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def of(cls, engine: Engine) -> DecoderLayout:
        names = {spec.name: spec for spec in engine.inputs}
        missing = [n for n in REQUIRED_INPUTS if n not in names]
        past = [(int(m[1]), m[2]) for n in names if (m := _PAST.match(n))]
        outputs = {spec.name: spec for spec in engine.outputs}
        if missing or not past or "logits" not in outputs:
            raise ModelLoadError(
                f"{engine.path.name} is not an edgeslm decoder graph (needs inputs {', '.join(REQUIRED_INPUTS)}, "
                "past_key_values.N.key/value and output logits); rebuild it with `edgeslm pull`"
            )
        layers = max(i for i, _ in past) + 1
        spec = names["past_key_values.0.key"]
        kv_heads, head_dim, vocab = spec.shape[1], spec.shape[3], outputs["logits"].shape[-1]
        if kv_heads is None or head_dim is None or vocab is None:
            raise ModelLoadError(f"{engine.path.name}: cache and logits need fixed head and vocabulary sizes")
        return cls(layers, kv_heads, head_dim, vocab)


class Decoder:
    """Prefill and batched decode on `slots` sequences of up to `context` tokens each.

    The cache holds, per layer, keys and values float32 [slots, kv_heads, context, head_dim];
    the graph reads and writes it in place. A decode step runs rows 0..width-1 (slot i is row i),
    so the scheduler keeps busy sequences in the lowest slots. Not thread-safe: one worker uses it.
    """

    def __init__(self, engine: Engine, *, slots: int, context: int):
        self.engine = engine
        self.layout = DecoderLayout.of(engine)
        self.slots, self.context = slots, context
        shape = (slots, self.layout.kv_heads, context, self.layout.head_dim)
        # Memory grows with the positions actually used (see lazy_zeros).
        self.cache = [lazy_zeros(shape) for _ in range(2 * self.layout.layers)]
        self._ids = np.zeros((slots, 1), np.int64)
        self._seqlens = np.zeros(slots, np.int32)
        self._total = np.zeros((), np.int32)
        self._first = np.zeros(1, np.int64)
        self._logits = np.zeros((slots, 1, self.layout.vocab), np.float32)
        self._decode: dict[int, Binding] = {}
        self._prefill: dict[int, Binding] = {}
        self.cache_bytes = sum(a.nbytes for a in self.cache)

    def _bind_cache(self, binding: Binding, rows: slice) -> None:
        for i in range(self.layout.layers):
            for j, kind in enumerate(("key", "value")):
                view = self.cache[2 * i + j][rows]
                binding.input(f"past_key_values.{i}.{kind}", view)
                binding.output(f"present.{i}.{kind}", view)

    def _decode_binding(self, width: int) -> Binding:
        binding = self._decode.get(width)
        if binding is None:
            binding = self.engine.bind()
            self._bind_cache(binding, slice(0, width))
            binding.input("input_ids", self._ids[:width])
            binding.input("seqlens_k", self._seqlens[:width])
            binding.input("total_sequence_length", self._total)
            binding.input("logits_index", self._first)
            binding.output("logits", self._logits[:width])
            self._decode[width] = binding
        return binding

    def decode(self, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """One new token per row for rows 0..len(tokens)-1; positions[i] is where row i's token goes.

        Returns logits float32 [rows, vocab] (a view, overwritten by the next call). A row with no
        sequence should pass any token at its slot's next free position: it writes only there.
        """
        width = len(tokens)
        self._ids[:width, 0] = tokens
        self._seqlens[:width] = positions
        self._total[...] = int(positions.max()) + 1
        self._decode_binding(width).run()
        return self._logits[:width, 0]

    def prefill(self, slot: int, tokens: np.ndarray, start: int, *, all_logits: bool = False) -> np.ndarray:
        """Write `tokens` into `slot` from position `start`; return the last logits [vocab] (or all [n, vocab])."""
        n = len(tokens)
        if start + n > self.context:
            raise ValueError(f"{start + n} tokens do not fit a {self.context}-token cache")
        binding = self._prefill.get(slot)
        if binding is None:
            binding = self.engine.bind()
            self._bind_cache(binding, slice(slot, slot + 1))
            self._prefill[slot] = binding
        index = np.arange(n, dtype=np.int64) if all_logits else np.array([n - 1], np.int64)
        logits = np.empty((1, len(index), self.layout.vocab), np.float32)
        binding.input("input_ids", np.ascontiguousarray(tokens, dtype=np.int64).reshape(1, n))
        binding.input("seqlens_k", np.array([start + n - 1], np.int32))
        binding.input("total_sequence_length", np.array(start + n, np.int32))
        binding.input("logits_index", index)
        binding.output("logits", logits)
        binding.run()
        return logits[0] if all_logits else logits[0, 0]

    def teacher_force(self, tokens: np.ndarray, prompt_tokens: int) -> np.ndarray:
        """Logits [len(tokens) - prompt_tokens, vocab] predicting tokens[prompt_tokens:]: a prefill of the first
        `prompt_tokens`, then one decode step per token, the path generation takes. Uses slot 0; only call it
        while no sequence is running."""
        tokens = np.asarray(tokens, dtype=np.int64)
        rows = [self.prefill(0, tokens[:prompt_tokens], 0).copy()]
        for pos in range(prompt_tokens, len(tokens) - 1):
            rows.append(self.decode(tokens[pos : pos + 1], np.array([pos], np.int32))[0].copy())
        return np.stack(rows)
