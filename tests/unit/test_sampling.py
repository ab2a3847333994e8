"""Sampling in numpy: greedy, temperature, top-k, top-p, repetition penalty, reproducible seeds."""

from __future__ import annotations

import numpy as np
import pytest

from edgeslm.core.sampling import Sampler, SamplingParams, candidates, draw, nucleus, penalize

VOCAB = 1000


def logits_for(probs: dict[int, float], vocab: int = VOCAB) -> np.ndarray:
    """Logits whose softmax puts `probs` on the given ids and spreads the rest evenly."""
    rest = (1.0 - sum(probs.values())) / (vocab - len(probs))
    p = np.full(vocab, rest)
    for i, v in probs.items():
        p[i] = v
    return np.log(p).astype(np.float32)


def draws(params: SamplingParams, logits: np.ndarray, n: int) -> np.ndarray:
    sampler = Sampler(params, len(logits))
    return np.array([sampler.pick(logits) for _ in range(n)])


def test_greedy_takes_the_argmax_whatever_the_seed():
    logits = logits_for({7: 0.4, 3: 0.35})
    assert set(draws(SamplingParams(temperature=0, seed=1), logits, 20)) == {7}
    assert set(draws(SamplingParams(temperature=0.9, top_k=1, seed=2), logits, 20)) == {7}


def test_temperature_one_follows_the_softmax():
    logits = logits_for({1: 0.5, 2: 0.3, 3: 0.2 - 1e-9 * (VOCAB - 3)})
    picks = draws(SamplingParams(temperature=1.0, seed=123), logits, 4000)
    freq = np.bincount(picks, minlength=4)[1:4] / len(picks)
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.2], atol=0.03)


def test_low_temperature_sharpens():
    logits = logits_for({1: 0.5, 2: 0.4})
    picks = draws(SamplingParams(temperature=0.2, seed=5), logits, 1000)
    assert np.mean(picks == 1) > 0.7


def test_top_k_keeps_only_the_k_best():
    logits = logits_for({10: 0.3, 20: 0.25, 30: 0.2, 40: 0.1})
    picks = draws(SamplingParams(top_k=3, seed=9), logits, 2000)
    assert set(picks) == {10, 20, 30}
    np.testing.assert_allclose(np.mean(picks == 10), 0.3 / 0.75, atol=0.04)


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = logits_for({10: 0.5, 20: 0.3, 30: 0.15})
    ids, logprobs = candidates(logits.astype(np.float64), 0, 0.8)
    assert ids.tolist() == [10, 20]  # 0.5 + 0.3 reaches 0.8
    np.testing.assert_allclose(np.exp(logprobs), [0.5, 0.3], rtol=1e-6)
    assert set(draws(SamplingParams(top_p=0.8, seed=3), logits, 500)) == {10, 20}


def test_top_p_on_a_flat_row_keeps_that_share_of_it():
    flat = np.zeros(VOCAB, np.float32)  # uniform: 0.9 of the mass needs 900 tokens
    ids, _ = candidates(flat.astype(np.float64), 0, 0.9)
    assert len(ids) == 900 and len(set(ids.tolist())) == 900


def test_a_nucleus_in_a_long_tail_is_found_past_the_first_cut():
    # One token holds half; the other half is spread thin, each far below 1% of the best: 0.9 needs 801 tokens.
    weights = np.full(VOCAB, 0.5 / (VOCAB - 1))
    weights[17] = 0.5
    kept = nucleus(weights / weights.max(), 0.9)
    assert kept[0] == 17 and len(kept) == 1 + int(np.ceil(0.4 / (0.5 / (VOCAB - 1))))
    assert len(nucleus(weights / weights.max(), 0.5)) == 1  # the best alone holds enough


def test_draw_follows_the_weights_over_blocks_and_never_picks_a_zero_weight():
    rng = np.random.default_rng(7)
    weights = np.zeros(1000)
    weights[[3, 300, 700, 999]] = [1.0, 2.0, 3.0, 4.0]  # four blocks of 256, with zeros around
    picks = np.array([draw(weights, rng.random()) for _ in range(5000)])
    assert set(picks.tolist()) == {3, 300, 700, 999}
    np.testing.assert_allclose([np.mean(picks == i) for i in (3, 300, 700, 999)], [0.1, 0.2, 0.3, 0.4], atol=0.02)
    assert draw(weights, 0.0) == 3 and draw(weights, np.nextafter(1.0, 0.0)) == 999


def test_repetition_penalty_discourages_seen_tokens():
    logits = np.array([2.0, -1.0, 1.9, 0.5], np.float32)
    seen = np.array([True, True, False, False])
    out = penalize(logits, seen, 2.0)
    np.testing.assert_allclose(out, [1.0, -2.0, 1.9, 0.5])
    sampler = Sampler(SamplingParams(temperature=0, repetition_penalty=2.0), 4)
    sampler.observe([0])
    assert sampler.pick(logits) == 2


def test_same_seed_same_tokens_and_different_seeds_differ():
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((50, VOCAB)).astype(np.float32)
    params = SamplingParams(temperature=1.0, top_p=0.95, top_k=50, seed=42)
    a, b = Sampler(params, VOCAB), Sampler(params, VOCAB)
    first = [a.pick(r) for r in rows]
    assert first == [b.pick(r) for r in rows]
    other = Sampler(SamplingParams(temperature=1.0, top_p=0.95, top_k=50, seed=43), VOCAB)
    assert first != [other.pick(r) for r in rows]


@pytest.mark.parametrize("bad", [{"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"top_k": -2},
                                 {"repetition_penalty": 0}])
def test_invalid_parameters_are_refused(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)
