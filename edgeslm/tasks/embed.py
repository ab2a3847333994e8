"""Sentence embeddings: token features -> pooled -> L2-normalised vectors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from edgeslm.core.scores import l2_normalize, mean_pool
from edgeslm.errors import ModelLoadError
from edgeslm.runtime.base import TensorSpec
from edgeslm.tasks.text import Encoded, TextEncoder


class EmbedTask:
    """Embeds texts: mean (or CLS) pooling over real tokens, then optional unit-length scaling."""

    name = "embed"

    def __init__(self, encoder: TextEncoder, output: TensorSpec, *, pooling: str = "mean", normalize: bool = True):
        if pooling in ("mean", "cls") and len(output.shape) != 3:
            raise ModelLoadError(
                f"{pooling} pooling needs a [batch, seq, hidden] output; {output.describe()} is not one "
                "(set pooling = \"none\" in the card if the model already pools)"
            )
        self.encoder = encoder
        self.output = output.name
        self.pooling = pooling
        self.normalize = normalize
        self.dimensions = output.shape[-1]

    def prepare(self, texts: Sequence[str], *, truncate: bool = True) -> Encoded:
        return self.encoder.encode(texts, truncate=truncate)

    def answer(self, encoded: Encoded, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """[n, H] float32 vectors, one per text."""
        hidden = outputs[self.output]
        if self.pooling == "mean":
            vectors = mean_pool(hidden, encoded.mask)
        elif self.pooling == "cls":
            vectors = hidden[:, 0].astype(np.float32)
        else:
            vectors = hidden.astype(np.float32, copy=False)
        return l2_normalize(vectors) if self.normalize else vectors
