"""The generation worker on a fake decoder: streaming, stops, lengths, continuous batching, cancellation, errors."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import pytest

from edgeslm.convert.gguf_llama import GgufVocab
from edgeslm.convert.gguf_tokenizer import build_tokenizer
from edgeslm.core.sampling import SamplingParams
from edgeslm.errors import BadInputError
from edgeslm.tasks.generate import GenerationEvent, GenerationRequest, Generator
from tests.tinyllama import vocabulary

END = 2  # <|im_end|>


def byte_id(ch: str) -> int:
    return 3 + ord(ch)  # the tiny vocabulary: 3 specials, then the 256 bytes


@dataclass
class Layout:
    vocab: int


class FakeDecoder:
    """Next token = previous + 1 ('a' -> 'b' ...), and <|im_end|> after 'z'. Records every call; `gate` pauses."""

    def __init__(self, slots: int = 2, context: int = 64, vocab: int = 300):
        self.slots, self.context, self.layout = slots, context, Layout(vocab)
        self.calls: list[tuple] = []
        self.gate = threading.Semaphore(1000)
        self.fail = False

    def _next(self, token: int) -> np.ndarray:
        row = np.zeros(self.layout.vocab, np.float32)
        row[END if token == byte_id("z") else token + 1] = 10.0
        return row

    def prefill(self, slot, tokens, start, *, all_logits=False):
        self.gate.acquire()
        self.calls.append(("prefill", slot, start, len(tokens)))
        if self.fail:
            raise RuntimeError("engine exploded")
        return self._next(int(tokens[-1]))

    def decode(self, tokens, positions):
        self.gate.acquire()
        self.calls.append(("decode", len(tokens), tuple(int(p) for p in positions)))
        if self.fail:
            raise RuntimeError("engine exploded")
        return np.stack([self._next(int(t)) for t in tokens])


@pytest.fixture(scope="module")
def tokenizer():
    tokens, types, merges = vocabulary()
    vocab = GgufVocab("gpt2", "smollm", tokens, types, merges, 1, 2, 2, None, False, None)
    return build_tokenizer(vocab)


class Events:
    def __init__(self) -> None:
        self.items: list[GenerationEvent] = []
        self.done = threading.Event()

    def __call__(self, event: GenerationEvent) -> None:
        self.items.append(event)
        if event.finish_reason is not None:
            self.done.set()

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.items)

    @property
    def last(self) -> GenerationEvent:
        assert self.done.wait(10), "generation did not finish"
        return self.items[-1]


def make(tokenizer, decoder=None, **kwargs) -> Generator:
    gen = Generator(decoder or FakeDecoder(), tokenizer, stop_token_ids=[END], max_queue=kwargs.pop("max_queue", 8),
                    prefill_chunk=kwargs.pop("prefill_chunk", 16))
    gen.start()
    return gen


def request(text: str, max_tokens: int = 10, stop: tuple[str, ...] = ()) -> GenerationRequest:
    return GenerationRequest(np.array([byte_id(c) for c in text]), max_tokens, SamplingParams(temperature=0), stop)


def test_streams_text_until_max_tokens(tokenizer):
    gen = make(tokenizer)
    events = Events()
    gen.submit(request("a", max_tokens=5), events)
    last = events.last
    assert events.text == "bcdef" and last.finish_reason == "length"
    assert last.completion_tokens == 5 and last.prompt_tokens == 1
    assert sum(e.finish_reason is not None for e in events.items) == 1
    gen.stop(timeout_s=5)


def test_stop_token_and_stop_strings_end_with_stop(tokenizer):
    gen = make(tokenizer)
    at_end, at_string = Events(), Events()
    gen.submit(request("w", max_tokens=20), at_end)  # x y z then <|im_end|>
    gen.submit(request("a", max_tokens=20, stop=("ef", "zz")), at_string)
    assert at_end.last.finish_reason == "stop" and at_end.text == "xyz"
    assert at_string.last.finish_reason == "stop" and at_string.text == "bcd"  # "e" was held back, then cut
    gen.stop(timeout_s=5)


def test_a_request_joins_the_running_batch_at_the_next_step(tokenizer):
    decoder = FakeDecoder(slots=2)
    decoder.gate = threading.Semaphore(0)
    gen = make(tokenizer, decoder)
    first, second = Events(), Events()
    gen.submit(request("a", max_tokens=6), first)
    decoder.gate.release(3)  # prefill + 2 decode steps of the first
    while len(decoder.calls) < 3:
        threading.Event().wait(0.01)
    gen.submit(request("k", max_tokens=3), second)
    decoder.gate.release(100)
    assert first.last.finish_reason == "length" and second.last.finish_reason == "length"
    kinds = [c[0] for c in decoder.calls]
    joined = decoder.calls.index(("prefill", 1, 0, 1))
    # Prefilled between two decode steps of the first, then decoded together in the next step (width 2).
    assert kinds[joined - 1] == "decode" and decoder.calls[joined + 1][:2] == ("decode", 2)
    assert first.text == "bcdefg" and second.text == "lmn"
    gen.stop(timeout_s=5)


def test_a_finished_sequence_frees_its_slot_for_a_waiting_one(tokenizer):
    decoder = FakeDecoder(slots=1)
    gen = make(tokenizer, decoder)
    a, b = Events(), Events()
    gen.submit(request("a", max_tokens=2), a)
    gen.submit(request("p", max_tokens=2), b)
    assert a.last.finish_reason == b.last.finish_reason == "length"
    assert b.text == "qr"
    assert all(c[1] == 0 for c in decoder.calls if c[0] == "prefill")  # both used slot 0
    gen.stop(timeout_s=5)


def test_cancel_frees_the_slot_and_sends_cancelled(tokenizer):
    decoder = FakeDecoder(slots=1)
    decoder.gate = threading.Semaphore(2)
    gen = make(tokenizer, decoder)
    long, waiting = Events(), Events()
    handle = gen.submit(request("a", max_tokens=50), long)
    gen.submit(request("k", max_tokens=2), waiting)
    while len(decoder.calls) < 2:
        threading.Event().wait(0.01)
    handle.cancel()
    decoder.gate.release(100)
    assert long.last.finish_reason == "cancelled"
    assert waiting.last.finish_reason == "length" and waiting.text == "lm"
    gen.stop(timeout_s=5)


def test_prompt_longer_than_the_context_is_refused_naming_max_tokens(tokenizer):
    gen = make(tokenizer, FakeDecoder(context=8))
    with pytest.raises(BadInputError) as err:
        gen.submit(request("abcdef", max_tokens=3), Events())
    assert err.value.param == "max_tokens"
    gen.stop(timeout_s=5)


def test_an_engine_failure_fails_its_sequences_and_the_worker_goes_on(tokenizer):
    decoder = FakeDecoder()
    gen = make(tokenizer, decoder)
    decoder.fail = True
    broken = Events()
    gen.submit(request("a"), broken)
    assert broken.last.finish_reason == "error" and broken.last.error is not None
    decoder.fail = False
    fine = Events()
    gen.submit(request("a", max_tokens=2), fine)
    assert fine.last.finish_reason == "length"
    gen.stop(timeout_s=5)


def test_stop_drains_running_and_cancels_waiting(tokenizer):
    decoder = FakeDecoder(slots=1)
    decoder.gate = threading.Semaphore(1)
    gen = make(tokenizer, decoder)
    running, queued = Events(), Events()
    gen.submit(request("a", max_tokens=3), running)
    gen.submit(request("k", max_tokens=3), queued)
    while not decoder.calls:
        threading.Event().wait(0.01)
    stopper = threading.Thread(target=gen.stop, kwargs={"timeout_s": 5})
    stopper.start()
    decoder.gate.release(100)
    stopper.join(10)
    assert running.last.finish_reason == "length"
    assert queued.last.finish_reason == "cancelled"
