"""Raw tensors in and out (KServe v2 datatypes), checked against the engine's input specs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgeslm.errors import BadInputError
from edgeslm.runtime.base import Engine

# KServe v2 datatype names <-> numpy.
DATATYPES = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
DATATYPE_OF = {dtype: name for name, dtype in DATATYPES.items()}


def datatype_of(dtype: np.dtype) -> str:
    return DATATYPE_OF.get(np.dtype(dtype), "BYTES")


class TensorTask:
    """Turns KServe-style named tensors into checked feeds, and outputs back into named tensors."""

    name = "tensors"

    def __init__(self, engine: Engine):
        self.engine = engine
        self.specs = {spec.name: spec for spec in engine.inputs}
        self.output_names = tuple(spec.name for spec in engine.outputs)

    def array(self, name: str, datatype: str, shape: Sequence[int], data: Any = None,
              raw: bytes | None = None) -> np.ndarray:
        """One input as an array of its declared datatype and shape; BadInputError names what is wrong."""
        param = f"inputs[{name}]"
        spec = self.specs.get(name)
        if spec is None:
            raise BadInputError(f"unknown input {name!r}; this model takes {', '.join(self.specs)}", param=param)
        dtype = DATATYPES.get(datatype)
        if dtype is None:
            raise BadInputError(f"input {name!r}: datatype {datatype!r} is not one of {', '.join(DATATYPES)}",
                                param=param)
        if dtype != spec.dtype:
            raise BadInputError(
                f"input {name!r} must have datatype {datatype_of(spec.dtype)}; got {datatype}", param=param
            )
        if any(d < 0 for d in shape):
            raise BadInputError(f"input {name!r}: shape {list(shape)} has a negative dimension", param=param)
        count = int(np.prod(shape, dtype=np.int64))
        try:
            if raw is not None:
                if len(raw) != count * dtype.itemsize:
                    raise BadInputError(
                        f"input {name!r}: {len(raw)} bytes of binary data, but shape {list(shape)} of {datatype} "
                        f"needs {count * dtype.itemsize}", param=param)
                array = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)
            else:
                array = np.asarray(data, dtype=dtype)
        except (ValueError, TypeError, OverflowError) as exc:
            raise BadInputError(f"input {name!r}: data is not {datatype} ({exc})", param=param) from None
        if array.size != count:
            raise BadInputError(
                f"input {name!r}: shape {list(shape)} needs {count} values; data has {array.size}", param=param
            )
        return array.reshape(shape)

    def prepare(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check the full set of inputs against the model (names, dtypes, ranks, fixed dims)."""
        feeds = dict(arrays)
        self.engine.check_feeds(feeds)
        rows = {a.shape[0] if a.ndim else 0 for a in feeds.values()}
        if len(rows) != 1 or 0 in rows:
            raise BadInputError("every input must have the same, non-zero first (batch) dimension", param="inputs")
        return feeds

    def answer(self, outputs: Mapping[str, np.ndarray], wanted: Sequence[str] | None = None) -> list[dict]:
        names = list(wanted) if wanted else list(self.output_names)
        unknown = [n for n in names if n not in outputs]
        if unknown:
            raise BadInputError(
                f"unknown output(s) {', '.join(unknown)}; this model gives {', '.join(self.output_names)}",
                param="outputs",
            )
        return [
            {"name": n, "datatype": datatype_of(outputs[n].dtype), "shape": list(outputs[n].shape),
             "array": outputs[n]}
            for n in names
        ]
