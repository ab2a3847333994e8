"""The Engine contract every inference runtime implements."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from edgeslm.errors import BadInputError


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of one model input or output; None marks a dynamic dimension."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]

    def describe(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name} {self.dtype.name}[{dims}]"


@dataclass(frozen=True)
class EngineOptions:
    """Runtime knobs taken from a model's config entry."""

    threads: int = 0
    graph_optimization: str = "all"
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    spin: Literal["off", "run", "always"] = "run"  # run: spin inside a run, stop when it ends; always: spin on after
    extra: Mapping[str, Any] = field(default_factory=dict)


class Binding:
    """Arrays an engine reads from and writes into, kept across runs; binding a name again replaces it.

    Outputs land in the bound arrays, which may be the very arrays bound as inputs (an in-place
    KV cache). Arrays must be C-contiguous and stay alive while bound. This default runs
    `engine.run` and copies the results in; engines that can bind memory override it.
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self.inputs: dict[str, np.ndarray] = {}
        self.outputs: dict[str, np.ndarray] = {}

    def input(self, name: str, array: np.ndarray) -> None:
        self.inputs[name] = array

    def output(self, name: str, array: np.ndarray) -> None:
        self.outputs[name] = array

    def run(self) -> None:
        results = self.engine.run(self.inputs)
        for name, target in self.outputs.items():
            np.copyto(target, results[name], casting="no")


class Engine(abc.ABC):
    """One loaded model file that runs one batch at a time.

    A subclass must, in `__init__`, load the file and set `inputs` and `outputs`
    (resolved once, never per call), and implement `run`. It may set
    `batch_buckets` / `seq_buckets` when the file only accepts fixed shapes: the
    batcher then never sends more rows than the largest batch bucket, and tasks
    never send longer sequences than the largest seq bucket; such an engine
    overrides `batch_cost` with the buckets it would run. It may override
    `close` to free native memory, and `describe` to report versions.

    `run` is called from one thread at a time (the model's batch worker), takes
    arrays whose dtypes match `inputs`, and returns every output by name.
    """

    runtime: ClassVar[str] = "?"
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batch_buckets: tuple[int, ...] | None = None
    seq_buckets: tuple[int, ...] | None = None
    # A call's fixed cost in token slots (rows x positions), beside the slots it computes; None until the
    # served model measures it at load (tasks/cost.py). The batcher weighs padding against it.
    call_tokens: float | None = None

    def __init__(self, path: Path, options: EngineOptions):
        self.path = Path(path)
        self.options = options

    def batch_cost(self, rows: int, seq: int) -> float:
        """What one batch of `rows` token rows padded to `seq` positions costs, in token slots: the fixed
        cost of each call it takes (`call_tokens`) plus the slots computed."""
        return (self.call_tokens or 0.0) + rows * seq

    def set_call_tokens(self, call_tokens: float) -> None:
        """Record the measured fixed cost of a call (engines that plan calls by it override this)."""
        self.call_tokens = call_tokens

    @abc.abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; `feeds` holds every input by name."""

    def bind(self) -> Binding:
        """A reusable set of bound input and output arrays (see Binding)."""
        return Binding(self)

    def close(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Free the runtime's resources. Safe to call twice."""

    def describe(self) -> dict[str, Any]:
        """Facts for /v1/models and logs."""
        return {"runtime": self.runtime}

    @property
    def max_batch(self) -> int | None:
        return max(self.batch_buckets) if self.batch_buckets else None

    @property
    def max_seq(self) -> int | None:
        return max(self.seq_buckets) if self.seq_buckets else None

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def check_feeds(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Raise BadInputError naming the input unless `feeds` fits `inputs` (names, dtypes, ranks, fixed dims)."""
        missing = [spec.name for spec in self.inputs if spec.name not in feeds]
        if missing:
            raise BadInputError(
                f"missing input(s) {', '.join(missing)}; this model takes "
                + "; ".join(spec.describe() for spec in self.inputs),
                param=missing[0],
            )
        known = {spec.name for spec in self.inputs}
        for name in feeds:
            if name not in known:
                raise BadInputError(
                    f"unknown input {name!r}; this model takes " + ", ".join(sorted(known)), param=name
                )
        for spec in self.inputs:
            array = feeds[spec.name]
            if array.dtype != spec.dtype:
                raise BadInputError(
                    f"input {spec.name!r} must be {spec.dtype.name}; got {array.dtype.name}", param=spec.name
                )
            if len(array.shape) != len(spec.shape) or any(
                want is not None and want != got for want, got in zip(spec.shape, array.shape)
            ):
                raise BadInputError(
                    f"input {spec.name!r} has shape {list(array.shape)}; expected {spec.describe()}",
                    param=spec.name,
                )
            if self.max_seq is not None and array.ndim >= 2 and array.shape[1] > self.max_seq:
                raise BadInputError(
                    f"input {spec.name!r} has {array.shape[1]} positions; this model's largest bucket takes "
                    f"{self.max_seq}: shorten it",
                    param=spec.name,
                )
