"""How closely a converted decoder follows the fp32 reference: top-1 agreement and KL on teacher-forced sequences."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from edgeslm.convert.reference import ReferenceLlama
from edgeslm.core.scores import kl_rows

# Fixed prompts: chat turns (rendered with the model's template) and plain text to continue.
CHAT_PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a Raspberry Pi is in two sentences.",
    "Give me three tips for sleeping better.",
    "How do I reverse a list in Python?",
    "What is 17 plus 25?",
    "Translate 'good morning' into Spanish.",
    "Why is the sky blue?",
    "Suggest a name for a friendly robot.",
    "What should I pack for a weekend hiking trip?",
    "Summarize the plot of Romeo and Juliet in one sentence.",
    "What are the primary colors?",
    "Tell me a short joke about computers.",
)
TEXT_PROMPTS = (
    "The quick brown fox",
    "Once upon a time, in a small village by the mountains,",
    "def fibonacci(n):\n",
    "The three laws of thermodynamics are",
    "Water boils at",
    "In 1969, the first humans",
    "My favourite recipe for pancakes starts with",
    "The Raspberry Pi 5 has a quad-core",
)


@dataclass
class QualityReport:
    """Agreement with the reference over every teacher-forced position of every prompt."""

    positions: int = 0
    top1_agree: int = 0
    kl_sum: float = 0.0
    per_prompt: list[tuple[int, float, float]] = field(default_factory=list)  # (positions, top1, mean KL)

    @property
    def top1(self) -> float:
        return self.top1_agree / max(self.positions, 1)

    @property
    def mean_kl(self) -> float:
        return self.kl_sum / max(self.positions, 1)

    def add(self, reference: np.ndarray, other: np.ndarray) -> None:
        kl = kl_rows(reference, other)
        agree = int(np.sum(reference.argmax(-1) == other.argmax(-1)))
        self.positions += len(kl)
        self.top1_agree += agree
        self.kl_sum += float(kl.sum())
        self.per_prompt.append((len(kl), agree / len(kl), float(kl.mean())))


def prompt_ids(tokenizer, render_chat) -> list[list[int]]:
    """Token ids of every fixed prompt; `render_chat(messages) -> text` applies the chat template."""
    chats = [render_chat([{"role": "user", "content": text}]) for text in CHAT_PROMPTS]
    return [tokenizer.encode(text, add_special_tokens=False).ids for text in (*chats, *TEXT_PROMPTS)]


def reference_sequences(reference: ReferenceLlama, prompts: Sequence[Sequence[int]], new_tokens: int,
                        stop_ids: Sequence[int]) -> list[list[int]]:
    """Each prompt followed by the reference's own greedy continuation (the sequence to teacher-force)."""
    return [list(p) + reference.greedy(p, new_tokens, stop_ids) for p in prompts]


def compare(reference: ReferenceLlama, candidate, sequences: Sequence[Sequence[int]],
            prompt_lengths: Sequence[int]) -> QualityReport:
    """`candidate(tokens, prompt_tokens) -> logits [len - prompt_tokens, vocab]` against the reference's logits
    at the same positions (those predicting the continuation)."""
    report = QualityReport()
    for seq, n in zip(sequences, prompt_lengths):
        if len(seq) <= n:
            continue
        ref = reference.logits(seq)[n - 1 : len(seq) - 1]
        report.add(ref, candidate(np.asarray(seq), n))
    return report
