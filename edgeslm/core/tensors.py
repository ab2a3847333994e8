"""Padding and stacking of ragged rows into one batch, and splitting results back."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pad_stack(arrays: Sequence[np.ndarray], pad_value: int | float = 0) -> np.ndarray:
    """Stack arrays of shape [n_i, L_i, *rest] into [sum n_i, max L_i, *rest], padding axis 1.

    All arrays must share dtype and trailing dims `rest`; the result is one fresh
    allocation filled with `pad_value` where a row is shorter than the longest.
    """
    if len(arrays) == 1:
        return arrays[0]
    first = arrays[0]
    if first.ndim < 2 or all(a.shape[1:] == first.shape[1:] for a in arrays):
        return np.concatenate(arrays)
    longest = max(a.shape[1] for a in arrays)
    rows = sum(a.shape[0] for a in arrays)
    out = np.full((rows, longest, *first.shape[2:]), pad_value, dtype=first.dtype)
    start = 0
    for a in arrays:
        out[start : start + a.shape[0], : a.shape[1]] = a
        start += a.shape[0]
    return out


def pad_rows(rows: Sequence[Sequence[int]], pad_value: int, dtype: np.dtype) -> np.ndarray:
    """Ragged lists of ids -> [n, longest] array of `dtype`, padded with `pad_value`."""
    longest = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), longest), pad_value, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def split_rows(outputs: dict[str, np.ndarray], counts: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """Cut every output along axis 0 into consecutive pieces of `counts` rows (views, no copies).

    A single piece is `outputs` itself: a request that ran alone needs no slicing."""
    if len(counts) == 1:
        return [outputs]
    pieces = []
    start = 0
    for n in counts:
        pieces.append({name: value[start : start + n] for name, value in outputs.items()})
        start += n
    return pieces
