"""Build a model folder from a Llama-family GGUF: ONNX (exact and int8), tokenizer.json and model.toml."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeslm.convert import toml_text
from edgeslm.convert.gguf_llama import GgufLlama, read_gguf
from edgeslm.convert.gguf_tokenizer import build_tokenizer
from edgeslm.core.scores import kl_rows, log_softmax
from edgeslm.errors import ModelLoadError
from edgeslm.store.progress import NullProgress, Progress
from edgeslm.tasks.card import sha256_of

FILES = {"model.onnx": "exact", "model_int8.onnx": "int8"}
QUANTIZATION = {
    "exact": "GGUF 4-bit codes and scales carried over unchanged (Q4_1: MatMulNBits 4-bit, block 32, integer zero "
             "points; the remainder of each block's minimum in the same node as two 4-bit levels over the input's "
             "block sums, within 1/450 of the block's scale in ordinary blocks), accuracy_level 4; token embedding "
             "and tied output Q8_0 as exact 8-bit",
    "int8": "MatMulNBits 8-bit, block 32, accuracy_level 4: Q4_1 weights rounded to the nearest 8-bit level, "
            "Q8_0 embedding and tied output exact",
}
# The self-check: a fixed chat prompt, teacher-forced through the fp32 reference at build time and the
# engine at load time.
CHECK_MESSAGES = ({"role": "user", "content": "Name three colours of the rainbow."},)
CHECK_TOP = 5
MAX_BUILD_KL = 0.05  # a converted file whose mean next-token KL vs fp32 on the check prompt exceeds this is broken


@dataclass(frozen=True)
class Recipe:
    """What a build knows about its source beyond the GGUF: names, licence, and llama.cpp's ids for test texts."""

    name: str
    description: str
    license: str
    package: str
    token_cases: list[tuple[str, list[int]]] = field(default_factory=list)


def find_gguf(source: Path) -> Path:
    found = sorted(Path(source).rglob("*.gguf"))
    if not found:
        raise ModelLoadError(f"no .gguf file under {source}; is it the unpacked package?")
    return found[0]


def package_version(source: Path) -> str | None:
    for meta in Path(source).rglob("METADATA"):
        for line in meta.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("Version:"):
                return line.split(":", 1)[1].strip()
    return None


def check_tokenizer(tokenizer, cases: list[tuple[str, list[int]]]) -> None:
    """Raise unless every case text encodes to the ids llama.cpp gave it."""
    for text, want in cases:
        got = tokenizer.encode(text).ids
        if got != want:
            raise ModelLoadError(f"tokenizer.json splits {text!r} into {got}, llama.cpp into {want}: "
                                 "the GGUF vocabulary is not the one this recipe knows")


def mean_kl(reference: np.ndarray, other: np.ndarray) -> float:
    """Mean over rows of KL(reference || other) between next-token distributions given as logits."""
    return float(kl_rows(reference, other).mean())


def _engine_logits(path: Path, ids: list[int]) -> np.ndarray:
    from edgeslm.runtime import EngineOptions, open_engine
    from edgeslm.tasks.decoder import Decoder

    engine = open_engine(path, "onnx", EngineOptions(threads=0))
    try:
        return Decoder(engine, slots=1, context=len(ids)).prefill(0, np.array(ids), 0, all_logits=True)
    finally:
        engine.close()


def build_llama(recipe: Recipe, source: Path, out: Path, progress: Progress | None = None) -> None:
    """Convert the GGUF found under `source` into the empty folder `out`; raise ModelLoadError if a check fails."""
    import onnx

    from edgeslm.convert.llama_onnx import build_graph, share_gather_table
    from edgeslm.convert.reference import ReferenceLlama
    from edgeslm.tasks.chat import ChatTemplate

    progress = progress or NullProgress()
    out = Path(out)
    progress.stage("reading GGUF", None)
    gguf_path = find_gguf(source)
    model = read_gguf(gguf_path)

    progress.stage("tokenizer", len(recipe.token_cases))
    tokenizer = build_tokenizer(model.vocab)
    check_tokenizer(tokenizer, recipe.token_cases)
    progress.advance(len(recipe.token_cases))
    tokenizer.save(str(out / "tokenizer.json"))

    for name, variant in FILES.items():
        progress.stage(f"writing {name}", None)
        # Weights in a side file: onnxruntime maps it instead of copying it out of a parsed protobuf.
        onnx.save_model(build_graph(model, variant), str(out / name), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=f"{name}.data", size_threshold=1024)
        share_gather_table(out / name)
        # onnx writes the side file 0600; a store root pulls for the service user must be readable like the rest.
        (out / f"{name}.data").chmod(0o644)

    progress.stage("checking against the fp32 reference", len(FILES) + 1)
    template = ChatTemplate(model.vocab.chat_template or "", bos_token="", eos_token="")
    check_ids = tokenizer.encode(template.render(list(CHECK_MESSAGES), add_generation_prompt=True)).ids
    reference = ReferenceLlama(model, keep_weights=False).logits(check_ids)
    progress.advance()
    measured = {}
    for name in FILES:
        logits = _engine_logits(out / name, check_ids)
        measured[name] = {"kl": mean_kl(reference, logits),
                          "top1": float(np.mean(logits.argmax(-1) == reference.argmax(-1)))}
        progress.advance()
        progress.note(f"{name}: next-token KL {measured[name]['kl']:.4f}, top-1 {measured[name]['top1']:.3f} "
                      "vs the fp32 reference on the check prompt")
        if name == "model.onnx" and measured[name]["kl"] > MAX_BUILD_KL:
            raise ModelLoadError(f"the converted model disagrees with the fp32 reference (mean KL "
                                 f"{measured[name]['kl']:.4f} > {MAX_BUILD_KL}); this onnxruntime build may "
                                 "lack the fused CPU kernels")
    progress.stage("writing model.toml", None)
    text = card_text(recipe, model, source, out, check_ids, reference, measured)
    (out / "model.toml").write_text(text, encoding="utf-8")


def card_text(recipe: Recipe, model: GgufLlama, source: Path, out: Path, check_ids: list[int],
              reference: np.ndarray, measured: dict[str, dict[str, float]]) -> str:
    s, v = model.shape, model.vocab
    stop_ids = sorted({i for i in (v.eos_id, 0) if i is not None and v.token_types[i] == 3})
    version = package_version(source)
    top = np.argsort(-reference, axis=-1)[:, :CHECK_TOP]
    top_logprobs = np.take_along_axis(log_softmax(reference), top, axis=-1)
    files = {}
    for name, variant in FILES.items():
        path = out / name
        data = out / f"{name}.data"
        files[name] = {"runtime": "onnx", "quantization": QUANTIZATION[variant], "sha256": sha256_of(path),
                       "size_bytes": path.stat().st_size, "data_file": data.name, "data_sha256": sha256_of(data),
                       "data_size_bytes": data.stat().st_size, "check_kl_vs_fp32": round(measured[name]["kl"], 6),
                       "check_top1_vs_fp32": round(measured[name]["top1"], 4)}
    doc = {
        "model": {
            "name": recipe.name, "description": recipe.description, "tasks": ["generate"], "license": recipe.license,
            "source": f"{recipe.package} {version or '?'}: {find_gguf(source).name}",
            "package": recipe.package, "package_version": version, "max_seq_len": s.context,
            "pad_id": v.pad_id if v.pad_id is not None else 0, "tokenizer": "tokenizer.json",
        },
        "generate": {
            "architecture": "llama", "layers": s.layers, "hidden_size": s.hidden, "intermediate_size": s.ffn,
            "heads": s.heads,
            "kv_heads": s.kv_heads, "head_dim": s.head_dim, "vocab_size": s.vocab, "context_length": s.context,
            "rope_base": s.rope_base, "bos_token": v.tokens[v.bos_id] if v.bos_id is not None else "",
            "eos_token": v.tokens[v.eos_id] if v.eos_id is not None else "", "add_bos": v.add_bos,
            "stop_token_ids": stop_ids, "chat_template": v.chat_template or "",
            "selfcheck": {
                "prompt_ids": [int(i) for i in check_ids],
                "top_ids": top.tolist(),
                "top_logprobs": np.round(top_logprobs, 4).tolist(),
                "min_top1": 0.8, "max_logprob_error": 0.5,
            },
        },
        "files": files,
    }
    header = (f"# Built by edgeslm.convert from {recipe.package} {version or '?'}; the weights are the GGUF's own.\n"
              "# check_* figures: the self-check prompt teacher-forced, against the fp32 numpy reference.\n")
    return header + toml_text.dumps(doc)
