"""The call cost measured at load: a fake engine whose runs take a known fixed + per-slot time on a fake clock."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeslm.runtime.fake import FakeEngine
from edgeslm.tasks.cost import measure_call_tokens, token_feeds
from edgeslm.tasks.text import TextEncoder

INTENTS = Path(__file__).resolve().parents[2] / "models" / "intents"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def timed_engine(clock: Clock, fixed_s: float, per_slot_s: float, **buckets) -> FakeEngine:
    engine = FakeEngine(**buckets)
    plain = engine.run

    def run(feeds):
        rows, seq = feeds["input_ids"].shape
        clock.now += fixed_s + per_slot_s * rows * seq
        return plain(feeds)

    engine.run = run  # type: ignore[method-assign]
    return engine


def encoder(max_len: int = 32) -> TextEncoder:
    return TextEncoder(INTENTS / "tokenizer.json", max_len=max_len, pad_id=0, model_name="intents",
                       ids_name="input_ids", mask_name="attention_mask",
                       dtypes={"input_ids": np.dtype(np.int64), "attention_mask": np.dtype(np.int64)})


def test_token_feeds_are_real_ids_unmasked_at_the_asked_shape():
    feeds = token_feeds(encoder(), 3, 20)
    assert feeds["input_ids"].shape == (3, 20) and feeds["input_ids"].dtype == np.int64
    assert (feeds["attention_mask"] == 1).all() and (feeds["input_ids"] > 0).any()


@pytest.mark.parametrize(("fixed_s", "per_slot_s", "expected"), [(50e-6, 1e-6, 50.0), (2e-3, 250e-6, 8.0),
                                                                 (0.0, 1e-6, 0.0)])
def test_the_fixed_cost_comes_out_in_token_slots(fixed_s, per_slot_s, expected):
    clock = Clock()
    engine = timed_engine(clock, fixed_s, per_slot_s)
    assert measure_call_tokens(engine, encoder(), clock=clock) == pytest.approx(expected)
    assert {shape for shape in engine.calls} == {(1, 16), (8, 16)}  # one short text, and eight


def test_fixed_shape_engines_are_timed_on_their_own_buckets():
    clock = Clock()
    engine = timed_engine(clock, 1e-3, 1e-5, batch_buckets=(2, 4, 16), seq_buckets=(8, 32))
    assert measure_call_tokens(engine, encoder(), clock=clock) == pytest.approx(100.0)
    assert {shape for shape in engine.calls} == {(2, 8), (4, 8)}
    one_size = timed_engine(clock, 1e-3, 1e-5, batch_buckets=(4,), seq_buckets=(8,))
    assert measure_call_tokens(one_size, encoder(), clock=clock) is None  # rows never share a call


def test_a_bigger_batch_that_ran_no_slower_leaves_the_batcher_as_it_was():
    clock = Clock()
    assert measure_call_tokens(timed_engine(clock, 1e-3, 0.0), encoder(), clock=clock) is None


def test_the_budget_bounds_the_rounds():
    clock = Clock()
    engine = timed_engine(clock, 0.1, 0.01)  # 0.26 s + 1.38 s a round: one round fills a 1 s budget
    measure_call_tokens(engine, encoder(), clock=clock, budget_s=1.0)
    assert len(engine.calls) == 2
