"""A deterministic in-memory engine for unit tests of what sits above the runtimes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from edgeslm.runtime.base import Engine, EngineOptions, TensorSpec


class FakeEngine(Engine):
    """Behaves like a text classifier with `labels` classes and `hidden_size` token features.

    logits[i, k] = sum over real tokens of ((id * (k + 1)) % 7), so results depend on
    the ids and ignore pads; `hidden[i, t] = id_t` repeated. Tests can set `fail_on_id`
    (any batch containing that token id raises), `gate` (run blocks until the event
    is set) and read `calls` (the shape of every batch run).
    """

    runtime = "fake"

    def __init__(
        self,
        path: Path = Path("fake.onnx"),
        options: EngineOptions = EngineOptions(),
        *,
        labels: int = 4,
        hidden_size: int = 3,
        batch_buckets: tuple[int, ...] | None = None,
        seq_buckets: tuple[int, ...] | None = None,
        compute: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]] | None = None,
    ):
        super().__init__(path, options)
        self.inputs = (
            TensorSpec("input_ids", np.dtype(np.int64), (None, None)),
            TensorSpec("attention_mask", np.dtype(np.int64), (None, None)),
        )
        self.outputs = (
            TensorSpec("logits", np.dtype(np.float32), (None, labels)),
            TensorSpec("hidden", np.dtype(np.float32), (None, None, hidden_size)),
        )
        self.labels = labels
        self.hidden_size = hidden_size
        self.batch_buckets = batch_buckets
        self.seq_buckets = seq_buckets
        self.compute = compute
        self.calls: list[tuple[int, ...]] = []
        self.fail_on_id: int | None = None
        self.gate: threading.Event | None = None
        self.closed = False

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids, mask = feeds["input_ids"], feeds["attention_mask"]
        self.calls.append(ids.shape)
        if self.gate is not None:
            self.gate.wait()
        if self.fail_on_id is not None and np.any((ids == self.fail_on_id) & (mask == 1)):
            raise RuntimeError(f"fake engine failure on token {self.fail_on_id}")
        if self.compute is not None:
            return self.compute(feeds)
        weights = np.arange(1, self.labels + 1, dtype=np.int64)
        logits = ((ids[:, :, None] * weights) % 7 * mask[:, :, None]).sum(axis=1).astype(np.float32)
        hidden = np.repeat((ids * mask).astype(np.float32)[:, :, None], self.hidden_size, axis=2)
        return {"logits": logits, "hidden": hidden}

    def close(self) -> None:
        self.closed = True
