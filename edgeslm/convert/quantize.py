"""Weight-only ONNX quantization (MatMulNBits, int8 embedding rows) and how closely a quantized model agrees."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeslm.core.scores import row_cosine
from edgeslm.errors import QuantizeError

# Tables smaller than this stay float: the saving is small and the rows are few.
MIN_GATHER_ELEMENTS = 1 << 16


def quantize_matmuls(model: onnx.ModelProto, bits: int, *, block_size: int = 32,
                     accuracy_level: int = 4) -> onnx.ModelProto:
    """Every MatMul with a constant weight as onnxruntime's MatMulNBits (weight-only, symmetric, per block).

    accuracy_level 4 runs the product in int8 with activations quantized per row block, so one
    row's result never depends on the other rows of its batch (per-tensor dynamic quantization does).
    """
    if bits not in (4, 8):
        raise QuantizeError(f"MatMulNBits takes 4 or 8 bits, not {bits}")
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, accuracy_level=accuracy_level,
                                          bits=bits)
    with _ort_logs_at(logging.WARNING):  # not a line per node
        quantizer = MatMulNBitsQuantizer(model, algo_config=config)
        quantizer.process()
    return quantizer.model.model


@contextlib.contextmanager
def _ort_logs_at(level: int) -> Iterator[None]:
    quiet = logging.getLogger("onnxruntime.quantization")
    before = quiet.level
    quiet.setLevel(level)
    try:
        yield
    finally:
        quiet.setLevel(before)


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {init.name: init for init in model.graph.initializer}


@dataclass(frozen=True)
class EmbeddingTables:
    """The constant Gather tables `--embeddings` quantizes, and a reason for each float table it leaves alone."""

    chosen: tuple[str, ...]  # initializer names
    skipped: tuple[str, ...]  # "name: why; left fp32"


def embedding_tables(model: onnx.ModelProto, *, min_elements: int = MIN_GATHER_ELEMENTS) -> EmbeddingTables:
    """Pick the tables both bit widths quantize: 2-D float initializers of at least `min_elements`,
    read only by Gathers on axis 0 (another reader, a tied output projection say, needs the float table)."""
    inits = _initializers(model)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            if name in inits:
                readers.setdefault(name, []).append(node)
    chosen, skipped = [], []
    for name, nodes in readers.items():
        table = inits[name]
        if table.data_type != TensorProto.FLOAT or not any(n.op_type == "Gather" and n.input[0] == name for n in nodes):
            continue  # not an embedding table: index constants, MatMul weights
        why = _why_not_quantized(table, nodes, min_elements)
        if why:
            skipped.append(f"{name}: {why}; left fp32")
        else:
            chosen.append(name)
    return EmbeddingTables(tuple(chosen), tuple(skipped))


def _why_not_quantized(table: onnx.TensorProto, readers: list[onnx.NodeProto], min_elements: int) -> str:
    elements = int(np.prod(table.dims))
    if len(table.dims) != 2:
        return f"shape {list(table.dims)}, not a 2-D [rows, width] table"
    others = sorted({n.op_type for n in readers if n.op_type != "Gather" or n.input[0] != table.name})
    if others:
        return f"also read by {', '.join(others)}, which needs it in float"
    if any(next((a.i for a in n.attribute if a.name == "axis"), 0) != 0 for n in readers):
        return "gathered along axis 1, not by row"
    if elements < min_elements:
        return (f"{elements} elements, under the {min_elements} that --embeddings quantizes "
                "(a small table saves little and its few rows each matter)")
    return ""


def quantize_gathers_int8(model: onnx.ModelProto, *, min_elements: int = MIN_GATHER_ELEMENTS) -> list[str]:
    """Store large constant embedding tables as int8 with one scale per row; returns the tables changed.

    `Gather(table, ids)` becomes `Gather(q, ids) -> Cast -> Mul(Gather(scale, ids))`: only the
    gathered rows are dequantized, so the table stays int8 in memory as well as on disk.
    Which tables: `embedding_tables`.
    """
    tables = embedding_tables(model, min_elements=min_elements).chosen
    chosen = set(tables)
    inits = _initializers(model)
    for base in tables:  # in graph order, so the same model always gives the same bytes
        table = inits[base]
        weights = numpy_helper.to_array(table).astype(np.float32)
        scale = np.abs(weights).max(axis=1, keepdims=True) / 127.0
        scale[scale == 0] = 1.0
        quantized = np.clip(np.rint(weights / scale), -127, 127).astype(np.int8)
        model.graph.initializer.remove(table)
        model.graph.initializer.extend([numpy_helper.from_array(quantized, f"{base}_int8"),
                                        numpy_helper.from_array(scale.astype(np.float32), f"{base}_scale")])
    new_nodes = []
    for node in model.graph.node:
        if node.op_type != "Gather" or node.input[0] not in chosen:
            new_nodes.append(node)
            continue
        base, ids, out = node.input[0], node.input[1], node.output[0]
        stem = node.name or out  # node names must be unique, and unnamed nodes would all give "_q"
        new_nodes += [
            helper.make_node("Gather", [f"{base}_int8", ids], [f"{out}_q"], axis=0, name=f"{stem}_q"),
            helper.make_node("Cast", [f"{out}_q"], [f"{out}_f"], to=TensorProto.FLOAT, name=f"{stem}_cast"),
            helper.make_node("Gather", [f"{base}_scale", ids], [f"{out}_s"], axis=0, name=f"{stem}_scale"),
            helper.make_node("Mul", [f"{out}_f", f"{out}_s"], [out], name=f"{stem}_dequant"),
        ]
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    return list(tables)


def quantize_gathers_int4(model: onnx.ModelProto, *, block_size: int = 32,
                          min_elements: int = MIN_GATHER_ELEMENTS) -> onnx.ModelProto:
    """The tables `embedding_tables` picks as onnxruntime's GatherBlockQuantized (4 bits, per block).

    onnxruntime's quantizer takes every constant Gather; the others are excluded by node name,
    so unnamed ones get a name first (names are labels only; nothing refers to them).
    """
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    chosen = set(embedding_tables(model, min_elements=min_elements).chosen)
    excluded = []
    for i, node in enumerate(model.graph.node):
        if node.op_type == "Gather" and node.input[0] not in chosen:
            node.name = node.name or f"gather_{i}_kept_float"
            excluded.append(node.name)
    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, bits=4,
                                          op_types_to_quantize=("Gather",), quant_axes=(("Gather", 1),))
    # ERROR: the opset and IR version bump it warns about is what int4 data needs, not a problem.
    with _ort_logs_at(logging.ERROR):
        quantizer = MatMulNBitsQuantizer(model, algo_config=config, nodes_to_exclude=excluded)
        quantizer.process()
    return quantizer.model.model


@dataclass(frozen=True)
class Agreement:
    """How a quantized model's outputs compare with the original's on the same feeds, per output."""

    output: str
    rows: int
    min_cosine: float
    mean_cosine: float
    top1: float | None  # share of rows whose argmax agrees (outputs with a class / vocab axis), else None

    def describe(self) -> str:
        top = f", top-1 agreement {self.top1:.1%}" if self.top1 is not None else ""
        return (f"{self.output}: cosine min {self.min_cosine:.4f} mean {self.mean_cosine:.4f} "
                f"over {self.rows} rows{top}")


def compare_outputs(reference: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray]) -> list[Agreement]:
    """Cosine per row (and top-1 on the last axis for float outputs) of every shared output."""
    result = []
    for name, ref in reference.items():
        if name not in actual or not np.issubdtype(ref.dtype, np.floating):
            continue
        got = actual[name]
        if ref.ndim == 0:
            ref, got = ref.reshape(1), got.reshape(1)
        cos = row_cosine(ref, got)
        top1 = None
        if ref.ndim >= 2 and ref.shape[-1] > 1:
            top1 = float(np.mean(ref.argmax(-1) == got.argmax(-1)))
        result.append(Agreement(name, int(ref.shape[0]), float(cos.min()), float(cos.mean()), top1))
    return result


def load_feeds(path: Path) -> list[dict[str, np.ndarray]]:
    """Reference inputs from an .npz: keys `NAME` (one feed) or `NAME` with a leading `N/` / `N__` prefix per feed.

    `input_ids`, `attention_mask` → one feed; `0/input_ids`, `1/input_ids`, … → several feeds
    of different shapes (numpy.savez(f, **{"0/input_ids": a, "1/input_ids": b})).
    """
    if not Path(path).is_file():
        raise QuantizeError(f"reference inputs {path} do not exist; give an .npz written by numpy.savez")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise QuantizeError(f"cannot read reference inputs {path}: {exc}; give an .npz written by numpy.savez"
                            ) from None
    groups: dict[str, dict[str, np.ndarray]] = {}
    with archive:
        for key in archive.files:
            for sep in ("/", "__"):
                prefix, found, name = key.partition(sep)
                if found and prefix.isdigit():
                    groups.setdefault(prefix, {})[name] = archive[key]
                    break
            else:
                groups.setdefault("", {})[key] = archive[key]
    if not groups:
        raise QuantizeError(f"{path} holds no arrays")
    return [groups[k] for k in sorted(groups, key=lambda k: (k != "", int(k) if k else 0))]
