"""Write the trained intent model as ONNX and TFLite files and its model.toml card; run the files back."""

from __future__ import annotations

import hashlib
import tempfile
import tomllib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

BUCKET_BATCHES = (1, 2, 4, 8, 16, 32)
BUCKET_SEQS = (16, 32)
# Large enough that a padded position never wins the masked max, small enough
# that float32 keeps the real activations exact when 0.0 is added to them.
PAD_NEGATIVE = 1.0e4
ONNX_OPSET = 17
ONNX_IR_VERSION = 9  # readable by onnxruntime releases older than the one used here


def build_onnx_graph(weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The float ONNX graph of `IntentNet`, written node by node from its weights.

    Each kernel-3 convolution is written as three shifted copies of the sequence
    concatenated on the channel axis and one MatMul, so that dynamic quantization
    turns it into MatMulInteger, which every onnxruntime CPU build implements.
    """
    n_layers = sum(1 for k in weights if k.startswith("conv") and k.endswith("_kernel"))
    channels = weights["conv0_kernel"].shape[2]
    n_labels = weights["dense_kernel"].shape[1]
    consts = {
        "embedding": weights["embedding"],
        "dense_kernel": weights["dense_kernel"],
        "dense_bias": weights["dense_bias"],
        "axis_1": np.array([1], np.int64),
        "axis_2": np.array([2], np.int64),
        "seq_pads": np.array([0, 1, 0, 0, 1, 0], np.int64),
        "start_0": np.array([0], np.int64),
        "start_1": np.array([1], np.int64),
        "start_2": np.array([2], np.int64),
        "end_minus_2": np.array([-2], np.int64),
        "end_minus_1": np.array([-1], np.int64),
        "end_max": np.array([np.iinfo(np.int64).max], np.int64),
        "one": np.array(1.0, np.float32),
        "zero": np.array(0.0, np.float32),
        "pad_negative": np.array(PAD_NEGATIVE, np.float32),
    }
    node = helper.make_node
    nodes = [
        node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        node("Unsqueeze", ["mask_f", "axis_2"], ["mask3"]),
        node("Gather", ["embedding", "input_ids"], ["embedded"]),
        node("Mul", ["embedded", "mask3"], ["conv_in_0"]),
    ]
    for layer in range(n_layers):
        kernel = weights[f"conv{layer}_kernel"]  # [3, in, out]
        consts[f"conv{layer}_kernel"] = kernel.reshape(-1, kernel.shape[2])
        consts[f"conv{layer}_bias"] = weights[f"conv{layer}_bias"]
        x, out = f"conv_in_{layer}", ("hidden" if layer == n_layers - 1 else f"conv_in_{layer + 1}")
        nodes += [
            node("Pad", [x, "seq_pads"], [f"{x}_padded"]),
            node("Slice", [f"{x}_padded", "start_0", "end_minus_2", "axis_1"], [f"{x}_prev"]),
            node("Slice", [f"{x}_padded", "start_1", "end_minus_1", "axis_1"], [f"{x}_here"]),
            node("Slice", [f"{x}_padded", "start_2", "end_max", "axis_1"], [f"{x}_next"]),
            node("Concat", [f"{x}_prev", f"{x}_here", f"{x}_next"], [f"{x}_windows"], axis=2),
            node("MatMul", [f"{x}_windows", f"conv{layer}_kernel"], [f"{x}_mm"]),
            node("Add", [f"{x}_mm", f"conv{layer}_bias"], [f"{x}_biased"]),
            node("Relu", [f"{x}_biased"], [f"{x}_relu"]),
            node("Mul", [f"{x}_relu", "mask3"], [out]),
        ]
    nodes += [
        node("ReduceSum", ["hidden", "axis_1"], ["hidden_sum"], keepdims=0),
        node("ReduceSum", ["mask3", "axis_1"], ["token_count"], keepdims=0),
        node("Max", ["token_count", "one"], ["token_count_safe"]),
        node("Div", ["hidden_sum", "token_count_safe"], ["mean_pool"]),
        node("Sub", ["mask3", "one"], ["pad_flag"]),
        node("Mul", ["pad_flag", "pad_negative"], ["pad_bias"]),
        node("Add", ["hidden", "pad_bias"], ["hidden_for_max"]),
        node("ReduceMax", ["hidden_for_max"], ["max_raw"], axes=[1], keepdims=0),
        node("Max", ["max_raw", "zero"], ["max_pool"]),
        node("Concat", ["mean_pool", "max_pool"], ["pooled"], axis=1),
        node("MatMul", ["pooled", "dense_kernel"], ["dense_mm"]),
        node("Add", ["dense_mm", "dense_bias"], ["logits"]),
    ]
    io = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes,
        "intents",
        inputs=[
            io("input_ids", TensorProto.INT64, ["batch", "seq"]),
            io("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        outputs=[
            io("logits", TensorProto.FLOAT, ["batch", n_labels]),
            io("hidden", TensorProto.FLOAT, ["batch", "seq", channels]),
        ],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    model.ir_version = ONNX_IR_VERSION
    model.producer_name = "edgeslm models/intents/build.py"
    onnx.checker.check_model(model, full_check=True)
    return model


def write_onnx(weights: dict[str, np.ndarray], path: Path, float_path: Path) -> None:
    """Save the float graph to `float_path` and its int8 dynamic quantization to `path`."""
    onnx.save(build_onnx_graph(weights), str(float_path))
    # MatMulNBits 8-bit with accuracy_level 4 quantizes activations per row block, so a row's answer
    # does not depend on its batch-mates (quantize_dynamic's per-tensor activation scale does).
    config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=4, bits=8)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(float_path)), algo_config=config)
    quantizer.process()
    onnx.save(quantizer.model.model, str(path))


def write_tflite(net: tf.Module, path: Path, *, buckets: bool) -> None:
    """Convert `net` to an int8 dynamic-range TFLite file.

    Without buckets: one `serving_default` signature with [-1, -1] inputs.
    With buckets: one fixed-shape signature `b{B}_s{S}` per bucket.
    """
    if buckets:
        shapes = {f"b{b}_s{s}": [b, s] for b in BUCKET_BATCHES for s in BUCKET_SEQS}
    else:
        shapes = {"serving_default": [None, None]}
    signatures = {key: _signature(net, shape) for key, shape in shapes.items()}
    with tempfile.TemporaryDirectory() as saved_dir:
        tf.saved_model.save(net, saved_dir, signatures=signatures)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_dir, signature_keys=list(shapes))
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        path.write_bytes(converter.convert())


def _signature(net: tf.Module, shape: list[int | None]):
    # A new tf.function per shape: asking one function for a [1, 16] trace would hand
    # back an existing [None, None] trace, since that shape admits [1, 16] too.
    spec = [tf.TensorSpec(shape, tf.int64, name="input_ids"), tf.TensorSpec(shape, tf.int64, name="attention_mask")]

    @tf.function(input_signature=spec)
    def infer(input_ids, attention_mask):
        return net(input_ids, attention_mask)

    return infer.get_concrete_function()


class OnnxRunner:
    """Runs an ONNX file on onnxruntime's CPU provider."""

    def __init__(self, path: Path):
        self.name = path.name
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(self, ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, hidden = self.session.run(["logits", "hidden"], {"input_ids": ids, "attention_mask": mask})
        return logits, hidden


class TfliteRunner:
    """Runs the dynamic-shape TFLite file the way the daemon does: resize, allocate, invoke.

    Tensor indices and dtypes come from the `serving_default` signature, once.
    """

    def __init__(self, path: Path):
        self.name = path.name
        self.interpreter = Interpreter(model_path=str(path))
        signature = self.interpreter.get_signature_runner("serving_default")
        self.inputs = signature.get_input_details()
        self.outputs = signature.get_output_details()
        self.shape_signature = {k: d["shape_signature"].tolist() for k, d in self.inputs.items()}
        assert set(self.inputs) == {"input_ids", "attention_mask"} and set(self.outputs) == {"logits", "hidden"}

    def run(self, ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feeds = {"input_ids": ids, "attention_mask": mask}
        for detail in self.inputs.values():
            self.interpreter.resize_tensor_input(detail["index"], list(ids.shape), strict=True)
        self.interpreter.allocate_tensors()
        for key, detail in self.inputs.items():
            self.interpreter.set_tensor(detail["index"], feeds[key].astype(detail["dtype"]))
        self.interpreter.invoke()
        get = self.interpreter.get_tensor
        return get(self.outputs["logits"]["index"]).copy(), get(self.outputs["hidden"]["index"]).copy()


class BucketRunner:
    """Runs the fixed-shape TFLite file: pads a batch up to the smallest bucket that holds it."""

    def __init__(self, path: Path):
        self.name = path.name
        self.interpreter = Interpreter(model_path=str(path))
        self.signatures = self.interpreter.get_signature_list()
        self.runners = {key: self.interpreter.get_signature_runner(key) for key in self.signatures}
        for key, runner in self.runners.items():
            batch, seq = (int(n) for n in key[1:].split("_s"))
            inputs, outputs = runner.get_input_details(), runner.get_output_details()
            assert set(inputs) == {"input_ids", "attention_mask"} and set(outputs) == {"logits", "hidden"}, key
            for name, detail in inputs.items():
                assert detail["shape_signature"].tolist() == [batch, seq], (key, name, detail["shape_signature"])
        self.dtypes = {
            key: {k: d["dtype"] for k, d in runner.get_input_details().items()}
            for key, runner in self.runners.items()
        }

    def run(self, ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows, seq = ids.shape
        batch = min(b for b in BUCKET_BATCHES if b >= rows)
        length = min(s for s in BUCKET_SEQS if s >= seq)
        key = f"b{batch}_s{length}"
        padded = {}
        for name, array in (("input_ids", ids), ("attention_mask", mask)):
            full = np.zeros((batch, length), self.dtypes[key][name])
            full[:rows, :seq] = array
            padded[name] = full
        out = self.runners[key](**padded)
        return out["logits"][:rows], out["hidden"][:rows, :seq]


def predict(runner, ids: np.ndarray, mask: np.ndarray, chunk: int = 32) -> np.ndarray:
    """Logits for many rows, in batches of at most `chunk`, each cut to its own longest row."""
    out = []
    for start in range(0, len(ids), chunk):
        m = mask[start : start + chunk]
        seq = int(m.sum(axis=1).max())
        out.append(runner.run(ids[start : start + chunk, :seq], m[:, :seq])[0])
    return np.concatenate(out)


def padding_invariance(runner, ids: np.ndarray, mask: np.ndarray, exact: bool) -> dict[str, float]:
    """Max |change| of logits and hidden[:len] when each row but the last, run alone unpadded,
    is instead (a) padded to the width of `ids` or (b) run as part of the whole batch.

    The caller makes the last row a long one. Float runners must agree within 1e-4;
    int8 runners must give the same top label.
    """
    worst = {"padded logits": 0.0, "padded hidden": 0.0, "batched logits": 0.0, "batched hidden": 0.0}
    batched = runner.run(ids, mask)
    for row in range(len(ids) - 1):
        n = int(mask[row].sum())
        alone_logits, alone_hidden = runner.run(ids[row : row + 1, :n], mask[row : row + 1, :n])
        padded = runner.run(*[np.pad(a[row : row + 1, :n], ((0, 0), (0, ids.shape[1] - n))) for a in (ids, mask)])
        for case, (logits, hidden), at in (("padded", padded, 0), ("batched", batched, row)):
            logit_change = float(np.abs(logits[at] - alone_logits[0]).max())
            hidden_change = float(np.abs(hidden[at, :n] - alone_hidden[0]).max())
            worst[f"{case} logits"] = max(worst[f"{case} logits"], logit_change)
            worst[f"{case} hidden"] = max(worst[f"{case} hidden"], hidden_change)
            assert logits[at].argmax() == alone_logits[0].argmax(), \
                f"{runner.name}: padding changed the label of row {row}"
            assert np.abs(hidden[at, n:]).max() == 0.0, f"{runner.name}: hidden is not zero on padding"
    if exact:
        assert max(worst.values()) < 1e-4, f"{runner.name}: padding changed outputs {worst}"
    return worst


def selfcheck(runner, ids: np.ndarray, mask: np.ndarray, expected: np.ndarray, min_cosine: float) -> list[float]:
    """Per-row cosine of the runner's logits against `expected`; asserts the card's self-check passes."""
    logits = runner.run(ids, mask)[0]
    cosines = (logits * expected).sum(1) / (np.linalg.norm(logits, axis=1) * np.linalg.norm(expected, axis=1))
    assert (cosines >= min_cosine).all(), f"{runner.name}: self-check cosine {cosines}"
    assert (logits.argmax(1) == expected.argmax(1)).all(), f"{runner.name}: self-check top label differs"
    return cosines.tolist()


QUANTIZATION = {
    "model.onnx": ("onnx", "int8 weight-only MatMulNBits (bits 8, block 32, accuracy_level 4); embedding fp32"),
    "model.tflite": ("tflite", "int8 dynamic range (TFLiteConverter Optimize.DEFAULT)"),
    "model_buckets.tflite": ("tflite", "int8 dynamic range (TFLiteConverter Optimize.DEFAULT), fixed-shape buckets"),
}


def write_card(out: Path, *, n_labels: int, max_seq_len: int, accuracy: dict, n_heldout: int, n_train: int,
               formats_agree: bool, selfcheck_input: list[str], expected: np.ndarray, min_cosine: float,
               tflite_input_dtype: str, blind: tuple[int, float]) -> None:
    """model.toml in the schema the daemon reads; hashes and sizes are taken from the written files."""
    def quoted(items):
        return "[" + ", ".join(f'"{i}"' for i in items) + "]"

    lines = [
        "[model]",
        'name = "intents"',
        f'description = "Classifies a spoken command for a Raspberry Pi assistant into one of {n_labels} intents."',
        'tasks = ["classify", "embed"]',
        'license = "Apache-2.0"',
        'source = "trained here by models/intents/build.py from models/intents/phrases.toml"',
        f"max_seq_len = {max_seq_len}",
        "pad_id = 0",
        'tokenizer = "tokenizer.json"',
        "",
        "[inputs]",
        'input_ids = "input_ids"',
        'attention_mask = "attention_mask"',
        "",
        "[classify]",
        'output = "logits"',
        'labels = "labels.txt"',
        "",
        "[embed]",
        'output = "hidden"',
        'pooling = "mean"',
        "normalize = true",
        "",
    ]
    for name, (runtime, quantization) in QUANTIZATION.items():
        data = (out / name).read_bytes()
        lines += [
            f'[files."{name}"]',
            f'runtime = "{runtime}"',
            f'quantization = "{quantization}"',
            f'sha256 = "{hashlib.sha256(data).hexdigest()}"',
            f"size_bytes = {len(data)}",
            f"heldout_accuracy = {accuracy[name]:.4f}   # top-1 on the held-out phrasings, this file",
        ]
        if runtime == "tflite":
            lines.append(f'# inputs are {tflite_input_dtype}, like the ONNX file')
        if name == "model_buckets.tflite":
            batches = ",".join(map(str, BUCKET_BATCHES))
            seqs = ",".join(map(str, BUCKET_SEQS))
            lines.append(f'buckets = "b{{{batches}}}_s{{{seqs}}}"')
        lines.append("")
    rows = ",\n  ".join("[" + ", ".join(f"{v:.4f}" for v in row) + "]" for row in expected)
    lines += [
        "[eval]",
        f"heldout_phrases = {n_heldout}",
        f"train_phrases = {n_train}",
        f"fp32_heldout_accuracy = {accuracy['fp32']:.4f}",
        f"formats_agree_on_heldout = {str(formats_agree).lower()}   "
        "# ONNX and both TFLite files give the same top label on every held-out phrase",
        f"blind_phrases = {blind[0]}   # blind.toml: written after training, never used to train or tune",
        f"blind_accuracy = {blind[1]:.4f}",
        "",
        "[selfcheck]",
        "# a reference input and the fp32 reference output; the daemon re-runs it at load on the engine it uses",
        f"input = {quoted(selfcheck_input)}",
        'output = "logits"',
        f"expected = [\n  {rows},\n]   # fp32 model logits, rounded to 4 decimals",
        f"min_cosine = {min_cosine}   # every row's cosine(actual logits, expected) must be >= this",
        "top1 = true   # and the argmax must match",
    ]
    (out / "model.toml").write_text("\n".join(lines) + "\n")
    card = tomllib.loads((out / "model.toml").read_text())
    assert np.allclose(card["selfcheck"]["expected"], expected), "model.toml does not round-trip"
