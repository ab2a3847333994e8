"""Engine over an onnxruntime InferenceSession."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgeslm.errors import ModelLoadError, RuntimeMissingError
from edgeslm.runtime.base import Binding, Engine, EngineOptions, TensorSpec

try:
    import onnxruntime as ort
except ImportError as exc:  # pragma: no cover - onnxruntime is a hard dependency
    raise RuntimeMissingError(f"onnxruntime is not installed ({exc}); pip install onnxruntime") from exc

_ONNX_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}
_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def _spec(arg: Any) -> TensorSpec:
    if arg.type not in _ONNX_DTYPES:
        raise ModelLoadError(f"tensor {arg.name!r} has type {arg.type}, which edgeslm does not handle")
    # Symbolic dims ('batch', 'seq') and unknown dims are dynamic.
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in (arg.shape or ()))
    return TensorSpec(arg.name, np.dtype(_ONNX_DTYPES[arg.type]), shape)


class OnnxBinding(Binding):
    """onnxruntime IOBinding over numpy memory: inputs are read and outputs written in place, no copies."""

    def __init__(self, engine: OnnxEngine):
        super().__init__(engine)
        self._binding = engine._session.io_binding()

    def _check(self, name: str, array: np.ndarray) -> None:
        if not array.flags.c_contiguous:
            raise ValueError(f"array bound to {name!r} must be C-contiguous")

    def input(self, name: str, array: np.ndarray) -> None:
        self._check(name, array)
        self.inputs[name] = array
        self._binding.bind_input(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)

    def output(self, name: str, array: np.ndarray) -> None:
        self._check(name, array)
        self.outputs[name] = array
        self._binding.bind_output(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)

    def run(self) -> None:
        self.engine._session.run_with_iobinding(self._binding)  # type: ignore[attr-defined]


class OnnxEngine(Engine):
    """Runs a .onnx file with the configured threads, optimisation level and providers."""

    runtime = "onnx"

    def __init__(self, path: Path, options: EngineOptions):
        super().__init__(path, options)
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = options.threads
        session_options.inter_op_num_threads = 1
        session_options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session_options.graph_optimization_level = _LEVELS[options.graph_optimization]
        session_options.log_severity_level = 3
        # Workers that spin between a run's parallel sections instead of sleeping make a decode step (hundreds of
        # small nodes) about 1.3x faster; "run" stops them when the run ends, so an idle board burns nothing and
        # the event loop is not starved between runs ("always" leaves them spinning for a while after each run).
        session_options.add_session_config_entry("session.intra_op.allow_spinning",
                                                 "0" if options.spin == "off" else "1")
        if options.spin == "run":
            session_options.add_session_config_entry("session.force_spinning_stop", "1")
        for key, value in options.extra.items():
            session_options.add_session_config_entry(str(key), str(value))
        available = ort.get_available_providers()
        unknown = [p for p in options.providers if p not in available]
        if unknown:
            raise ModelLoadError(
                f"execution provider(s) {', '.join(unknown)} are not in this onnxruntime build; "
                f"available: {', '.join(available)}"
            )
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=session_options, providers=list(options.providers)
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"onnxruntime cannot load {path.name}: {first_line}") from exc
        self.inputs = tuple(_spec(arg) for arg in self._session.get_inputs())
        self.outputs = tuple(_spec(arg) for arg in self._session.get_outputs())
        self._output_names = [spec.name for spec in self.outputs]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._session.run(self._output_names, dict(feeds))
        return dict(zip(self._output_names, values))

    def bind(self) -> Binding:
        return OnnxBinding(self)

    def close(self) -> None:
        self._session = None  # type: ignore[assignment]

    def describe(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "runtime_version": f"onnxruntime {ort.__version__}",
            "providers": list(self.options.providers),
            "threads": self.options.threads,
        }
