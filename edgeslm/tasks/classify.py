"""Text classification: logits -> softmax -> top-k labels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from edgeslm.core.scores import softmax, softmax_top_k_row, top_k_indices
from edgeslm.errors import ModelLoadError
from edgeslm.runtime.base import TensorSpec
from edgeslm.tasks.text import Encoded, TextEncoder


def read_labels(path: Path) -> list[str]:
    try:
        labels = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as exc:
        raise ModelLoadError(f"cannot read labels file {path}: {exc.strerror}") from None
    if not labels:
        raise ModelLoadError(f"labels file {path} is empty; put one label per line")
    return labels


SMALL_ROW = 256  # classes up to which a one-text answer is computed in Python floats rather than numpy


class ClassifyTask:
    """Labels texts with the model's classes; scores are softmax probabilities."""

    name = "classify"

    def __init__(self, encoder: TextEncoder, output: TensorSpec, labels: Sequence[str]):
        if output.shape and output.shape[-1] is not None and output.shape[-1] != len(labels):
            raise ModelLoadError(
                f"output {output.name!r} has {output.shape[-1]} classes but the labels file has {len(labels)}"
            )
        self.encoder = encoder
        self.output = output.name
        self.labels = list(labels)

    def prepare(self, texts: Sequence[str], *, truncate: bool = True) -> Encoded:
        return self.encoder.encode(texts, truncate=truncate)

    def answer(self, encoded: Encoded, outputs: Mapping[str, np.ndarray], k: int = 3) -> list[dict]:
        """One dict per text: best label and score, the top-k list, and whether the text was truncated."""
        logits = outputs[self.output]
        if len(logits) == 1 and logits.shape[-1] <= SMALL_ROW:  # one text (a voice command): Python floats
            probs, best = softmax_top_k_row(logits[0].tolist(), k)
            rows, order = [probs], [best]
        else:
            scores = softmax(logits.astype(np.float64))  # float64, as the one-text path: the same scores
            rows, order = scores.tolist(), top_k_indices(scores, k).tolist()
        # Scores are Python floats rounded in float64 (float32 rounding shows as 0.19898800551891327).
        labels, truncated = self.labels, encoded.truncated.tolist()
        results = []
        for i, (row, best) in enumerate(zip(rows, order)):
            top = [{"label": labels[j], "score": round(row[j], 6)} for j in best]
            results.append({"index": i, "label": top[0]["label"], "score": top[0]["score"], "top": top,
                            "truncated": truncated[i]})
        return results
