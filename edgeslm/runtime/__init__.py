"""Inference engines: the only package that imports onnxruntime or LiteRT."""

from __future__ import annotations

import importlib
from pathlib import Path

from edgeslm.errors import ModelLoadError
from edgeslm.runtime.base import Engine, EngineOptions, TensorSpec

# name -> "module:Class"; imported only when chosen, so a board without LiteRT still serves ONNX.
ENGINES = {
    "onnx": "edgeslm.runtime.onnx:OnnxEngine",
    "tflite": "edgeslm.runtime.tflite:TFLiteEngine",
    "fake": "edgeslm.runtime.fake:FakeEngine",
}
EXTENSIONS = {".onnx": "onnx", ".tflite": "tflite"}


def runtime_for(path: Path, runtime: str = "auto") -> str:
    """The engine name for a model file: `runtime` unless it is auto, else by extension."""
    if runtime != "auto":
        if runtime not in ENGINES:
            raise ModelLoadError(f"unknown runtime {runtime!r}; choose one of {', '.join(ENGINES)} or auto")
        return runtime
    try:
        return EXTENSIONS[path.suffix.lower()]
    except KeyError:
        raise ModelLoadError(
            f"cannot tell the runtime of {path.name} from its extension; name it .onnx or .tflite, "
            "or set runtime = \"onnx\" / \"tflite\""
        ) from None


def open_engine(path: Path, runtime: str = "auto", options: EngineOptions | None = None) -> Engine:
    """Load `path` with the chosen engine; raise ModelLoadError with the reason if it cannot be served."""
    path = Path(path)
    name = runtime_for(path, runtime)
    if name != "fake" and not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist; pull or copy it there, or fix the model's path")
    module_name, class_name = ENGINES[name].split(":")
    engine_class = getattr(importlib.import_module(module_name), class_name)
    return engine_class(path, options or EngineOptions())


__all__ = ["ENGINES", "Engine", "EngineOptions", "TensorSpec", "open_engine", "runtime_for"]
