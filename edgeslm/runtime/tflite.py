"""Engine over a LiteRT (ai-edge-litert) or tflite-runtime interpreter, for dynamic and fixed-bucket models."""

from __future__ import annotations

import queue
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from edgeslm.core.tensors import bucket_plan
from edgeslm.errors import BadInputError, ModelLoadError, RuntimeMissingError
from edgeslm.runtime.base import Engine, EngineOptions, TensorSpec

_BUCKET_KEY = re.compile(r"^b(\d+)_s(\d+)$")
_T = TypeVar("_T")


def load_interpreter_class() -> tuple[type, str]:
    """The Interpreter class of the first TFLite runtime that imports, and its name and version."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, f"ai-edge-litert {metadata.version('ai-edge-litert')}"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter  # type: ignore[import-not-found]

        return Interpreter, f"tflite-runtime {metadata.version('tflite-runtime')}"
    except ImportError:
        raise RuntimeMissingError(
            "no TFLite runtime is installed: pip install 'edgeslm[tflite]' (ai-edge-litert), "
            "or tflite-runtime on boards LiteRT does not support"
        ) from None


def _dims(signature: Any) -> tuple[int | None, ...]:
    return tuple(None if int(d) < 0 else int(d) for d in signature)


class OwnerThread:
    """One thread that runs every call handed to it, in order; the caller waits for the result or the error.

    What a one-worker ThreadPoolExecutor does, with less on each call: one queue each way, and no
    Future, work item or condition variable. A call still costs two thread wake-ups, and on the 2-core
    VM this was measured on those cost more than the intents model's whole run (13 us on its own
    thread): a TFLite call from another thread took 122 us (median) through the executor and 94 us
    this way, interleaved. A call made on the owner thread itself runs at once.
    """

    def __init__(self, name: str):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()  # no call is queued behind the end-of-jobs mark
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def call(self, fn: Callable[..., _T], *args: Any) -> _T:
        if threading.current_thread() is self._thread:
            return fn(*args)
        replies: queue.SimpleQueue = queue.SimpleQueue()  # the call's own: a reply never reaches another call
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self._thread.name} is closed")
            self._jobs.put((fn, args, replies))
        ok, value = replies.get()
        if ok:
            return value
        raise value

    def close(self) -> None:
        """Run what is queued, then end the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._jobs.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, args, replies = job
            try:
                replies.put((True, fn(*args)))
            except BaseException as exc:  # handed to the caller, which raises it
                replies.put((False, exc))
            del job, fn, args, replies  # hold nothing of the last call while waiting for the next


class TFLiteEngine(Engine):
    """Runs a .tflite file. Every interpreter call happens on one owner thread.

    Dynamic models keep one allocated interpreter per input shape (LRU,
    `max_cached_shapes`), so alternating batch shapes do not reallocate.
    Fixed-shape models with one signature per bucket (`b8_s16`...) run each batch
    at the shortest seq bucket that fits, split over the batch buckets that cost
    least (`plan`); the bucket sizes are published as `batch_buckets` / `seq_buckets`.
    """

    runtime = "tflite"
    max_cached_shapes = 8

    def __init__(self, path: Path, options: EngineOptions):
        super().__init__(path, options)
        self._interpreter_class, self.runtime_impl = load_interpreter_class()
        self._owner = OwnerThread(f"tflite-{Path(path).stem}")
        self._cache: OrderedDict[tuple, Any] = OrderedDict()
        self._buckets: dict[tuple[int, int], Any] = {}
        self._plans: dict[tuple[int, int], tuple[int, tuple[int, ...]]] = {}
        self._spare: Any = None
        self._interpreter: Any = None
        try:
            self._owner.call(self._load)
        except ModelLoadError:
            self._owner.close()
            raise

    def _new_interpreter(self) -> Any:
        threads = self.options.threads or None
        try:
            return self._interpreter_class(model_path=str(self.path), num_threads=threads)
        except (ValueError, RuntimeError, OSError) as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"{self.runtime_impl} cannot load {self.path.name}: {first_line}") from exc

    def _load(self) -> None:
        interpreter = self._new_interpreter()
        signatures = interpreter.get_signature_list()
        keys = [key for key in signatures if _BUCKET_KEY.match(key)]
        if signatures and len(keys) == len(signatures):
            self._load_buckets(interpreter, keys)
        else:
            self._load_dynamic(interpreter, signatures)

    def _load_buckets(self, interpreter: Any, keys: list[str]) -> None:
        for key in keys:
            match = _BUCKET_KEY.match(key)
            assert match is not None
            self._buckets[(int(match[1]), int(match[2]))] = interpreter.get_signature_runner(key)
        self.batch_buckets = tuple(sorted({b for b, _ in self._buckets}))
        self.seq_buckets = tuple(sorted({s for _, s in self._buckets}))
        runner = self._buckets[max(self._buckets)]
        self._input_names = tuple(runner.get_input_details())
        self.inputs = tuple(
            TensorSpec(name, np.dtype(d["dtype"]), (None, None, *_dims(d["shape"][2:])))
            for name, d in runner.get_input_details().items()
        )
        outputs = {}
        for name, d in runner.get_output_details().items():
            dims = (None, *_dims(d["shape"][1:]))
            # dim 1 is a sequence dim when it follows the bucket's seq length in every bucket.
            if len(dims) >= 2 and all(
                r.get_output_details()[name]["shape"][1] == s for (_, s), r in self._buckets.items()
            ):
                dims = (None, None, *dims[2:])
            outputs[name] = TensorSpec(name, np.dtype(d["dtype"]), dims)
        self.outputs = tuple(outputs.values())
        self._interpreter = interpreter
        self.mode = "buckets"

    def _load_dynamic(self, interpreter: Any, signatures: Mapping[str, Any]) -> None:
        if len(signatures) == 1:
            runner = interpreter.get_signature_runner(next(iter(signatures)))
            inputs, outputs = runner.get_input_details(), runner.get_output_details()
        else:
            inputs = {d["name"]: d for d in interpreter.get_input_details()}
            outputs = {d["name"]: d for d in interpreter.get_output_details()}
        self._input_index = {name: d["index"] for name, d in inputs.items()}
        self._output_index = {name: d["index"] for name, d in outputs.items()}
        self.inputs = tuple(
            TensorSpec(name, np.dtype(d["dtype"]), _dims(d["shape_signature"])) for name, d in inputs.items()
        )
        self.outputs = tuple(
            TensorSpec(name, np.dtype(d["dtype"]), _dims(d["shape_signature"])) for name, d in outputs.items()
        )
        self._spare = interpreter
        self.mode = "dynamic"

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.mode == "buckets":
            return self._owner.call(self._run_bucket, feeds)
        return self._owner.call(self._run_dynamic, feeds)

    def _interpreter_for(self, shapes: tuple) -> Any:
        interpreter = self._cache.get(shapes)
        if interpreter is not None:
            self._cache.move_to_end(shapes)
            return interpreter
        if self._spare is not None:
            interpreter, self._spare = self._spare, None
        elif len(self._cache) >= self.max_cached_shapes:
            interpreter = self._cache.popitem(last=False)[1]
        else:
            interpreter = self._new_interpreter()
        for name, shape in zip(self._input_index, shapes):
            interpreter.resize_tensor_input(self._input_index[name], list(shape), strict=False)
        interpreter.allocate_tensors()
        self._cache[shapes] = interpreter
        return interpreter

    def _run_dynamic(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        interpreter = self._interpreter_for(tuple(feeds[name].shape for name in self._input_index))
        for name, index in self._input_index.items():
            interpreter.set_tensor(index, feeds[name])
        interpreter.invoke()
        return {name: interpreter.get_tensor(index) for name, index in self._output_index.items()}

    def plan(self, rows: int, seq: int) -> tuple[int, tuple[int, ...]]:
        """(seq bucket, batch buckets) that run `rows` x `seq`: the shortest seq bucket that fits, and the
        batch buckets at it with the least cost (see bucket_plan; each call costs `call_tokens`)."""
        plans = self._plans.get((rows, seq))
        if plans is None:
            fitting = sorted(s for s in self.seq_buckets or () if s >= seq)
            sizes = tuple(b for b, s in self._buckets if fitting and s == fitting[0])
            if not sizes:
                raise BadInputError(
                    f"a batch of {rows} x {seq} fits no bucket of {self.path.name}; longest sequence "
                    f"{max(self.seq_buckets or (0,))}, largest batch {max(self.batch_buckets or (0,))}"
                )
            call_rows = (self.call_tokens or 0.0) / fitting[0]
            plans = self._plans[(rows, seq)] = (fitting[0], bucket_plan(rows, sizes, call_rows))
        return plans

    def batch_cost(self, rows: int, seq: int) -> float:
        if self.mode != "buckets":
            return super().batch_cost(rows, seq)
        s, sizes = self.plan(rows, seq)
        return len(sizes) * (self.call_tokens or 0.0) + sum(sizes) * s

    def set_call_tokens(self, call_tokens: float) -> None:
        super().set_call_tokens(call_tokens)
        self._plans.clear()  # they were weighed with the old cost

    def _run_bucket(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        first = feeds[self._input_names[0]]
        rows, seq = first.shape[0], (first.shape[1] if first.ndim > 1 else 1)
        s, sizes = self.plan(rows, seq)
        if len(sizes) == 1:
            return self._run_one_bucket(feeds, rows, seq, sizes[0], s)
        pieces, start = [], 0
        for b in sizes:
            stop = min(rows, start + b)
            part = {name: feeds[name][start:stop] for name in self._input_names}
            pieces.append(self._run_one_bucket(part, stop - start, seq, b, s))
            start = stop
        return {name: np.concatenate([piece[name] for piece in pieces]) for name in pieces[0]}

    def _run_one_bucket(self, feeds: Mapping[str, np.ndarray], rows: int, seq: int, b: int,
                        s: int) -> dict[str, np.ndarray]:
        padded = {}
        for name in self._input_names:
            array = feeds[name]
            if array.shape[0] == b and (array.ndim < 2 or array.shape[1] == s):
                padded[name] = array
                continue
            # Zero rows and zero positions: pad id 0 with mask 0 leaves real rows unchanged.
            full = np.zeros((b, s, *array.shape[2:]), dtype=array.dtype)
            full[:rows, :seq] = array
            padded[name] = full
        results = self._buckets[(b, s)](**padded)
        out = {}
        for name, value in results.items():
            value = value[:rows]
            if value.ndim >= 2 and value.shape[1] == s != seq:
                value = value[:, :seq]
            out[name] = value
        return out

    @property
    def cached_shapes(self) -> list[tuple]:
        """Input shapes that currently hold an allocated interpreter (dynamic mode), oldest first."""
        return list(self._cache)

    def close(self) -> None:
        if getattr(self, "_owner", None) is None:
            return
        self._owner.call(self._release)
        self._owner.close()
        self._owner = None  # type: ignore[assignment]

    def _release(self) -> None:
        self._cache.clear()
        self._buckets.clear()
        self._spare = None
        self._interpreter = None

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"runtime": self.runtime, "runtime_version": self.runtime_impl, "mode": self.mode}
        info["threads"] = self.options.threads
        if self.mode == "buckets":
            info["buckets"] = [f"b{b}_s{s}" for b, s in sorted(self._buckets)]
        return info
