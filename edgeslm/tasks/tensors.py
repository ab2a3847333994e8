"""Raw tensors in and out (KServe v2 datatypes), checked against the engine's input specs."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class TokenInput:
    """What a text model's token input may hold: sequences up to `max_len`, values in [low, high)."""

    max_len: int
    low: int
    high: int
    what: str  # "token ids", "mask values", ...


class TensorTask:
    """Turns KServe-style named tensors into checked feeds, and outputs back into named tensors.

    For a text model (`token_inputs`), its token inputs are held to what its tokenizer can produce: at most
    max_len positions and values in range. A runtime's own error for those is an engine message naming no
    input, and a TFLite model given a zero-length sequence dies of a division by zero.
    """

    name = "tensors"

    def __init__(self, engine: Engine):
        self.engine = engine
        self.specs = {spec.name: spec for spec in engine.inputs}
        self.output_names = tuple(spec.name for spec in engine.outputs)
        self.token_inputs: dict[str, TokenInput] = {}

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
        if any(d < 1 for d in shape):
            raise BadInputError(f"input {name!r}: shape {list(shape)} has a dimension below 1; every dimension "
                                "holds at least one value", param=param)
        count = math.prod(shape)  # a Python int: no overflow however large the dimensions claimed
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
        array = array.reshape(shape)
        token = self.token_inputs.get(name)
        if token is not None:
            self._check_tokens(name, array, token, param)
        return array

    @staticmethod
    def _check_tokens(name: str, array: np.ndarray, token: TokenInput, param: str) -> None:
        if array.ndim >= 2 and array.shape[1] > token.max_len:
            raise BadInputError(f"input {name!r}: {array.shape[1]} positions; this model takes at most "
                                f"{token.max_len} (its max_seq_len)", param=param)
        if array.size and (int(array.min()) < token.low or int(array.max()) >= token.high):
            raise BadInputError(f"input {name!r}: {token.what} must be in {token.low}..{token.high - 1}; got "
                                f"{int(array.min())}..{int(array.max())}", param=param)

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
