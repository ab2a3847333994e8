"""Turning model outputs into answers: softmax, top-k, pooling, normalisation."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, stable for large logits: float64 for float64 logits, else float32. [..., K]."""
    dtype = np.float64 if logits.dtype == np.float64 else np.float32
    shifted = np.subtract(logits, logits.max(axis=-1, keepdims=True), dtype=dtype)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=-1, keepdims=True)
    return shifted


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities over the last axis, in float64 (differences of near-equal logits survive). [..., K]."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def kl_rows(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """KL(reference || other) of each row's next-token distribution, both given as logits. [n, V] -> [n]."""
    p_log, q_log = log_softmax(reference), log_softmax(other)
    return (np.exp(p_log) * (p_log - q_log)).sum(axis=-1)


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores per row, best first (ties: lower index first). [n, K] -> [n, k]."""
    k = min(k, scores.shape[-1])
    if scores.shape[-1] > 1024:
        # Wide rows (vocabularies): partition first, then sort only the k winners.
        part = np.argpartition(scores, -k, axis=-1)[:, -k:]
        rows = np.arange(scores.shape[0])[:, None]
        return part[rows, np.argsort(-scores[rows, part], axis=-1, kind="stable")]
    return np.argsort(-scores, axis=-1, kind="stable")[:, :k]


def softmax_top_k_row(logits: Sequence[float], k: int) -> tuple[list[float], list[int]]:
    """One row of a few scores as Python floats: its softmax (float64) and the indices of the k largest, best
    first (ties: lower index first, as top_k_indices). For a handful of classes this is a third of the time
    of the numpy calls, whose fixed cost per call dominates rows this short."""
    top = max(logits)
    exps = [math.exp(x - top) for x in logits]
    total = math.fsum(exps)
    probs = [e / total for e in exps]
    return probs, sorted(range(len(probs)), key=probs.__getitem__, reverse=True)[:k]  # sorted is stable


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of token vectors over positions where mask is 1. [n, L, H], [n, L] -> [n, H] float32."""
    length = min(hidden.shape[1], mask.shape[1])
    weights = mask[:, :length].astype(np.float32)
    summed = np.einsum("nlh,nl->nh", hidden[:, :length].astype(np.float32, copy=False), weights)
    counts = np.maximum(weights.sum(axis=1, keepdims=True), 1.0)
    return summed / counts


def l2_normalize(vectors: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Scale each row to unit length (zero rows stay zero). [n, H] -> [n, H]."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, eps)


def row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows, flattening everything after axis 0. -> [n]."""
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    b = b.reshape(b.shape[0], -1).astype(np.float64)
    denom = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    return (a * b).sum(axis=1) / denom
