"""Padding and stacking of ragged rows into one batch, and splitting results back."""

from __future__ import annotations

from collections.abc import Callable, Sequence

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


def bucket_plan(rows: int, sizes: Sequence[int], call_rows: float = 0.0) -> tuple[int, ...]:
    """The batch buckets to run `rows` rows in, largest first; their sum covers `rows` (the last may pad).

    `sizes` are the batch sizes a fixed-shape model takes at one sequence length. Each call costs
    `call_rows` (its fixed cost, in rows of that length) plus its bucket's rows; the plan has the least
    total cost, then the fewest calls. Rows 20 over (1, 8, 64): (8, 8, 1, 1, 1, 1) at call_rows 0,
    (8, 8, 8) at call_rows 2, (64,) at call_rows 40."""
    if rows < 1 or not sizes:
        raise ValueError("bucket_plan needs at least one row and one bucket size")
    # best[r]: (cost, calls, first bucket) covering r rows; covering none costs nothing.
    best: list[tuple[float, int, int]] = [(0.0, 0, 0)]
    for r in range(1, rows + 1):
        best.append(min((call_rows + size + best[max(0, r - size)][0], 1 + best[max(0, r - size)][1], size)
                        for size in sizes))
    plan, left = [], rows
    while left > 0:
        plan.append(best[left][2])
        left -= best[left][2]
    return tuple(sorted(plan, reverse=True))


def cheaper_together(cost: Callable[[int, int], float], rows: int, length: int, more_rows: int,
                     more_length: int) -> bool:
    """Whether `more_rows` rows of `more_length` cost no more run with `rows` rows of `length` (all padded to
    the longer) than run apart, by `cost(rows, padded length)`."""
    return cost(rows + more_rows, max(length, more_length)) <= cost(rows, length) + cost(more_rows, more_length)


def length_groups(lengths: Sequence[int], cost: Callable[[int, int], float], max_rows: int) -> list[np.ndarray]:
    """One request's rows in groups to run apart: indices into `lengths`, shortest rows first.

    A row joins the group of the rows just shorter than it while that is cheaper together (as the batcher
    weighs it) and the group has fewer than `max_rows` rows."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    groups, current, longest = [], [], 0
    for i in order.tolist():
        length = int(lengths[i])
        if current and (len(current) >= max_rows or (length != longest and not cheaper_together(
                cost, len(current), longest, 1, length))):
            groups.append(np.array(current))
            current = []
        current.append(i)
        longest = length
    groups.append(np.array(current))
    return groups


def merge_groups(outputs: Sequence[dict[str, np.ndarray]], rows: np.ndarray | None) -> dict[str, np.ndarray]:
    """The outputs of a request's groups (or chunks) as one, padding sequence outputs to agree along axis 1;
    `rows` (the original index of each row, in group order) puts the rows back in the request's order."""
    if len(outputs) == 1 and rows is None:
        return outputs[0]
    merged = {name: pad_stack([out[name] for out in outputs]) for name in outputs[0]}
    if rows is None:
        return merged
    inverse = np.argsort(rows)
    return {name: value[inverse] for name, value in merged.items()}
