"""Next-token choice from logits: greedy, temperature, top-k, top-p, repetition penalty, seeded randomness."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# top-p first looks among this many best tokens; only if they hold less than top_p of the mass is the row sorted.
NUCLEUS_FIRST_LOOK = 256


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How one sequence picks its tokens. temperature 0 is greedy; top_k 0 and top_p 1 disable those filters;
    repetition_penalty > 1 discourages tokens already in the prompt or the output (1 disables it)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1 or self.repetition_penalty <= 0:
            raise ValueError(f"invalid sampling parameters {self}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


def penalize(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """Logits with every seen token made less likely: positive logits divided by `penalty`, negative multiplied.

    logits float [V], seen bool [V] -> new float32 [V]."""
    out = np.array(logits, dtype=np.float32)
    picked = out[seen]
    out[seen] = np.where(picked > 0, picked / penalty, picked * penalty)
    return out


def _log_softmax_of(values: np.ndarray, normalizer_from: np.ndarray) -> np.ndarray:
    top = normalizer_from.max()
    return values - (top + np.log(np.exp(normalizer_from - top).sum()))


def candidates(logits: np.ndarray, top_k: int, top_p: float) -> tuple[np.ndarray, np.ndarray]:
    """Token ids allowed by top-k then top-p, best first, and their log-probabilities (over the top-k set).

    logits float [V] (already penalised and divided by the temperature) -> (ids int [n], logprobs float64 [n])."""
    logits = logits.astype(np.float64, copy=False)
    pool = logits
    pool_ids: np.ndarray | None = None
    if 0 < top_k < len(logits):
        pool_ids = np.argpartition(-logits, top_k - 1)[:top_k]
        pool = logits[pool_ids]
    look = len(pool) if top_p >= 1 else min(len(pool), NUCLEUS_FIRST_LOOK)
    while True:
        part = np.arange(len(pool)) if look >= len(pool) else np.argpartition(-pool, look - 1)[:look]
        order = part[np.argsort(-pool[part], kind="stable")]
        logprobs = _log_softmax_of(pool[order], pool)
        if top_p >= 1:
            keep = len(order)
            break
        mass = np.cumsum(np.exp(logprobs))
        # Keep the smallest best-first prefix whose mass reaches top_p (at least one token).
        reached = np.flatnonzero(mass >= top_p - 1e-12)
        if len(reached) or look >= len(pool):
            keep = int(reached[0]) + 1 if len(reached) else len(order)
            break
        look = len(pool)
    ids = order[:keep] if pool_ids is None else pool_ids[order[:keep]]
    return ids, logprobs[:keep]


class Sampler:
    """Picks the tokens of one sequence. With a seed, the same logits give the same choices."""

    def __init__(self, params: SamplingParams, vocab_size: int):
        self.params = params
        self.rng = np.random.default_rng(params.seed)
        self.seen = np.zeros(vocab_size, dtype=bool) if params.repetition_penalty != 1 else None

    def observe(self, tokens: np.ndarray | list[int]) -> None:
        """Note tokens the repetition penalty should discourage (the prompt, then each pick)."""
        if self.seen is not None:
            self.seen[np.asarray(tokens, dtype=np.int64)] = True

    def pick(self, logits: np.ndarray) -> int:
        """The next token id from logits float [V]."""
        p = self.params
        if self.seen is not None:
            logits = penalize(logits, self.seen, p.repetition_penalty)
        if p.greedy:
            token = int(np.argmax(logits))
        else:
            ids, logprobs = candidates(np.asarray(logits, dtype=np.float64) / p.temperature, p.top_k, p.top_p)
            probs = np.exp(logprobs - logprobs.max())
            cumulative = np.cumsum(probs)
            token = int(ids[min(int(np.searchsorted(cumulative, self.rng.random() * cumulative[-1], "right")),
                                len(ids) - 1)])
        self.observe([token])
        return token
