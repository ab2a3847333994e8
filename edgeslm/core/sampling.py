"""Next-token choice from logits: greedy, temperature, top-k, top-p, repetition penalty, seeded randomness."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# Sampling touches the whole vocabulary (49k entries for SmolLM2) once per token, so every pass counts: no sort
# of the vocabulary, no temporaries the size of it (here a fresh 400 KB array costs ~0.3 ms in page faults).
DRAW_BLOCK = 256  # a draw sums the weights in blocks of this many, then walks one block
NUCLEUS_CUTS = (1e-2, 1e-4, 1e-8, 0.0)  # top-k and top-p look at tokens this likely next to the best, until enough


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


def penalize(logits: np.ndarray, seen: np.ndarray, penalty: float, *, in_place: bool = False) -> np.ndarray:
    """Logits with every seen token made less likely: positive logits divided by `penalty`, negative multiplied.

    logits float [V], seen bool [V] -> `logits` itself when `in_place`, else a new float32 [V]."""
    out = logits if in_place else np.array(logits, dtype=np.float32)
    picked = out[seen]
    out[seen] = np.where(picked > 0, picked / penalty, picked * penalty)
    return out


def draw(weights: np.ndarray, u: float) -> int:
    """Index i with probability weights[i] / sum(weights), for weights >= 0 [n] and u uniform in [0, 1).

    The inverse of the cumulative sum, found a block at a time: sums of DRAW_BLOCK weights, then the
    chosen block's own running sum (a cumulative sum over the whole vocabulary is a slow scalar loop)."""
    starts = np.arange(0, len(weights), DRAW_BLOCK)
    running = np.cumsum(np.add.reduceat(weights, starts))
    target = u * running[-1]
    block = min(int(np.searchsorted(running, target, "right")), len(starts) - 1)
    inside = weights[starts[block]:starts[block] + DRAW_BLOCK]
    within = np.cumsum(inside)
    i = int(np.searchsorted(within, target - (running[block - 1] if block else 0.0), "right"))
    if i >= len(inside) or inside[i] == 0:  # rounding at the block's end: its last token that can be drawn
        i = int(np.flatnonzero(inside)[-1])
    return int(starts[block]) + i


def _above(weights: np.ndarray, enough: Callable[[np.ndarray], bool]) -> np.ndarray:
    """Indices of the weights (the best is 1) at or above the highest of NUCLEUS_CUTS whose set is `enough`."""
    for cut in NUCLEUS_CUTS[:-1]:
        inside = np.flatnonzero(weights >= cut)
        if enough(inside):
            return inside
    return np.arange(len(weights))


def top_k(weights: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest weights (the best is 1), in no particular order."""
    inside = _above(weights, lambda ids: len(ids) >= k)
    return inside if len(inside) <= k else inside[np.argpartition(weights[inside], -k)[-k:]]


def nucleus(weights: np.ndarray, top_p: float) -> np.ndarray:
    """Indices of the smallest best-first set of `weights` (>= 0, the best 1) holding top_p of their sum, best
    first (at least one). Only the weights above a cut that holds enough are sorted."""
    need = top_p * weights.sum() * (1 - 1e-12)
    inside = _above(weights, lambda ids: weights[ids].sum() >= need)
    order = inside[np.argsort(-weights[inside], kind="stable")]
    return order[:min(int(np.searchsorted(np.cumsum(weights[order]), need)) + 1, len(order))]


def _filtered(weights: np.ndarray, k: int, top_p: float) -> tuple[np.ndarray, np.ndarray | None]:
    """(ids top-k then top-p allow, the top-k set or None for all) for softmax numerators `weights`."""
    kept = top_k(weights, k) if 0 < k < len(weights) else None
    if top_p >= 1:
        return (np.arange(len(weights)) if kept is None else kept), kept
    if kept is None:
        return nucleus(weights, top_p), None
    return kept[nucleus(weights[kept], top_p)], kept


def allowed(weights: np.ndarray, k: int, top_p: float) -> np.ndarray:
    """Indices into `weights` (softmax numerators, the best 1) that top-k then top-p allow: best first when
    top-p cuts the set, otherwise in no particular order (a draw does not need them sorted)."""
    return _filtered(weights, k, top_p)[0]


def candidates(logits: np.ndarray, k: int, top_p: float) -> tuple[np.ndarray, np.ndarray]:
    """Token ids allowed by top-k then top-p, and their log-probabilities (over the top-k set).

    logits float [V] (already penalised and divided by the temperature) -> (ids int [n], logprobs float64 [n])."""
    weights = np.exp(logits.astype(np.float64) - logits.max())
    ids, kept = _filtered(weights, k, top_p)
    return ids, np.log(weights[ids] / (weights.sum() if kept is None else weights[kept].sum()))


class Sampler:
    """Picks the tokens of one sequence. With a seed, the same logits give the same choices."""

    def __init__(self, params: SamplingParams, vocab_size: int):
        self.params = params
        self.rng = np.random.default_rng(params.seed)
        self.seen = np.zeros(vocab_size, dtype=bool) if params.repetition_penalty != 1 else None
        self._scores = np.empty(vocab_size, np.float64)  # reused for every token: see DRAW_BLOCK's comment

    def observe(self, tokens: np.ndarray | list[int]) -> None:
        """Note tokens the repetition penalty should discourage (the prompt, then each pick)."""
        if self.seen is not None:
            self.seen[np.asarray(tokens, dtype=np.int64)] = True

    def pick(self, logits: np.ndarray) -> int:
        """The next token id from logits float [V]."""
        p = self.params
        if p.greedy and self.seen is None:
            token = int(np.argmax(logits))
        else:
            scores = self._scores
            np.copyto(scores, logits)
            if self.seen is not None:
                penalize(scores, self.seen, p.repetition_penalty, in_place=True)
            if p.greedy:
                token = int(np.argmax(scores))
            else:  # softmax numerators in place, the best 1; then top-k, top-p and one draw
                scores *= 1 / p.temperature
                scores -= scores.max()
                np.exp(scores, out=scores)
                if p.top_k or p.top_p < 1:
                    ids = allowed(scores, p.top_k, p.top_p)
                    token = int(ids[draw(scores[ids], self.rng.random())])
                else:
                    token = draw(scores, self.rng.random())
        self.observe([token])
        return token
