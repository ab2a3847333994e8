"""core/ stays pure numpy: no runtime, no asyncio, no clock, no files."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from edgeslm.core.scores import l2_normalize, mean_pool, row_cosine, softmax, softmax_top_k_row, top_k_indices
from edgeslm.core.tensors import bucket_plan, length_groups, merge_groups, pad_rows, pad_stack, split_rows

CORE = Path(__file__).resolve().parents[2] / "edgeslm" / "core"
ALLOWED = {"numpy", "threading", "collections", "dataclasses", "typing", "math", "logging", "__future__",
           "edgeslm.core", "edgeslm.errors", "abc", "itertools", "enum", "heapq"}


def test_core_imports_only_pure_modules():
    bad = []
    for path in CORE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                if not any(name == ok or name.startswith(ok + ".") for ok in ALLOWED):
                    bad.append(f"{path.name}: {name}")
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "open":
                bad.append(f"{path.name}: open()")
    assert not bad, bad


def test_softmax_is_stable_and_sums_to_one():
    probs = softmax(np.array([[1000.0, 1001.0, 999.0], [0, 0, 0]], dtype=np.float32))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    assert probs[0].argmax() == 1 and np.all(np.isfinite(probs))


def test_top_k_orders_best_first():
    assert top_k_indices(np.array([[0.1, 0.5, 0.2, 0.2]]), 2).tolist() == [[1, 2]]  # ties: lower index first
    assert top_k_indices(np.array([[0.1, 0.5]]), 5).tolist() == [[1, 0]]
    wide = np.zeros((2, 5000))
    wide[0, [7, 4000, 12]] = [3.0, 2.0, 1.0]
    wide[1, 4999] = 1.0
    assert top_k_indices(wide, 3).tolist()[0] == [7, 4000, 12] and top_k_indices(wide, 1).tolist()[1] == [4999]


def test_one_row_in_python_floats_agrees_with_the_numpy_path():
    rng = np.random.default_rng(7)
    rows = [rng.normal(0, 4, 21) for _ in range(200)]
    rows += [np.array([1000.0, 1001.0, 999.0]), np.array([0.5, 2.0, 2.0, 0.5, 2.0]), np.array([-3.0])]
    for row in rows:
        probs, best = softmax_top_k_row(row.tolist(), 3)
        expected = softmax(row[None, :].astype(np.float64))
        np.testing.assert_allclose(probs, expected[0], rtol=1e-12, atol=1e-15)
        assert best == top_k_indices(expected, 3).tolist()[0]
    assert softmax_top_k_row([0.5, 2.0, 2.0, 0.5, 2.0], 4)[1] == [1, 2, 4, 0]  # ties: lower index first
    assert softmax(np.zeros((1, 3))).dtype == np.float64 and softmax(np.zeros((1, 3), np.float32)).dtype == np.float32


def test_mean_pool_ignores_padding_and_normalize_gives_unit_rows():
    hidden = np.array([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]], dtype=np.float32)
    mask = np.array([[1, 1, 0]])
    np.testing.assert_allclose(mean_pool(hidden, mask), [[2.0, 2.0]])
    np.testing.assert_allclose(np.linalg.norm(l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]])), axis=1), [1.0, 0.0])


def test_pad_stack_and_split_round_trip():
    a, b = np.array([[1, 2]]), np.array([[3], [4]])
    stacked = pad_stack([a, b], pad_value=0)
    assert stacked.tolist() == [[1, 2], [3, 0], [4, 0]]
    parts = split_rows({"x": stacked}, [1, 2])
    assert parts[0]["x"].tolist() == [[1, 2]] and parts[1]["x"].shape == (2, 2)
    assert pad_rows([[5, 6, 7], [8]], 0, np.dtype(np.int64)).tolist() == [[5, 6, 7], [8, 0, 0]]


def test_bucket_plan_weighs_padded_rows_against_calls():
    sizes = (1, 8, 64)
    assert bucket_plan(8, sizes) == (8,) and bucket_plan(1, sizes) == (1,)
    # Free calls: no padded row at all; dear calls: one big padded call.
    assert bucket_plan(20, sizes, call_rows=0) == (8, 8, 1, 1, 1, 1)
    assert bucket_plan(20, sizes, call_rows=2) == (8, 8, 8)
    assert bucket_plan(20, sizes, call_rows=40) == (64,)
    for rows in range(1, 130):  # every plan covers its rows, padding fewer than a smallest-fitting bucket would
        for call_rows in (0, 0.5, 3, 100):
            plan = bucket_plan(rows, sizes, call_rows)
            assert sum(plan) >= rows and sum(plan) - plan[-1] < rows
            assert call_rows * len(plan) + sum(plan) <= call_rows * -(-rows // 64) + 64 * -(-rows // 64)
    with pytest.raises(ValueError):
        bucket_plan(0, sizes)


def test_length_groups_keep_like_lengths_together_and_merge_puts_rows_back():
    lengths = [9, 56, 12, 12, 11, 40]

    def cheap_calls(rows, length):
        return 2 + rows * length

    groups = length_groups(lengths, cheap_calls, max_rows=32)
    assert [g.tolist() for g in groups] == [[0, 4, 2, 3], [5], [1]]
    assert [g.tolist() for g in length_groups(lengths, lambda r, n: 1000 + r * n, 32)] == [[0, 4, 2, 3, 5, 1]]
    assert [len(g) for g in length_groups([3] * 5, cheap_calls, max_rows=2)] == [2, 2, 1]
    # Each group's outputs padded to its own length; merged, rows are back in request order and padded alike.
    rows = np.concatenate(groups)
    outputs = [{"id": np.array(g)[:, None] * np.ones((1, max(lengths[i] for i in g)), int)} for g in groups]
    merged = merge_groups(outputs, rows)["id"]
    assert merged.shape == (6, 56) and merged[:, 0].tolist() == list(range(6))
    assert merge_groups(outputs[:1], None) is outputs[0]


def test_row_cosine():
    np.testing.assert_allclose(row_cosine(np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([[2.0, 0.0], [-1.0, -1.0]])),
                               [1.0, -1.0])
