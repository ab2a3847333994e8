"""Text encoding: the ASCII fast path of a BERT-style tokenizer gives the ids of the full one."""

from __future__ import annotations

import random
import tomllib
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, normalizers

from edgeslm.tasks.text import TextEncoder, ascii_variant

INTENTS = Path(__file__).resolve().parents[2] / "models" / "intents"


def phrases() -> list[str]:
    data = tomllib.loads((INTENTS / "phrases.toml").read_text())
    return [p for intent in data["intents"].values() for group in intent.values() if isinstance(group, list)
            for p in group if isinstance(p, str)]


def test_the_ascii_variant_gives_the_same_ids_on_ascii_text():
    full = Tokenizer.from_file(str(INTENTS / "tokenizer.json"))
    full.enable_truncation(max_length=16)
    fast = ascii_variant(full)
    assert fast is not None
    rng = random.Random(7)
    texts = phrases() + [s.upper() for s in phrases()[:50]] + [
        "".join(rng.choice([chr(c) for c in range(128)]) for _ in range(rng.randint(1, 90))) for _ in range(2000)]
    assert len(texts) > 2300
    for text in texts:
        a, b = full.encode(text), fast.encode(text)
        assert (a.ids, bool(a.overflowing)) == (b.ids, bool(b.overflowing)), repr(text)


def test_the_encoder_takes_the_full_tokenizer_for_any_text_that_is_not_ascii():
    encoder = TextEncoder(INTENTS / "tokenizer.json", max_len=32, pad_id=0, model_name="intents",
                          ids_name="input_ids", mask_name="attention_mask",
                          dtypes={"input_ids": np.dtype(np.int64), "attention_mask": np.dtype(np.int64)})
    full = Tokenizer.from_file(str(INTENTS / "tokenizer.json"))
    fast = ascii_variant(full)
    assert fast is not None
    text = "Allume la lumière du café"  # accents: the full normalizer strips them, the ASCII one would not
    assert full.encode(text).ids != fast.encode(text).ids
    assert encoder.encode([text]).feeds["input_ids"][0].tolist() == full.encode(text).ids
    mixed = encoder.encode(["turn on the light", text]).feeds["input_ids"]  # one non-ASCII text: all take the full
    assert mixed[1][: len(full.encode(text).ids)].tolist() == full.encode(text).ids


def test_no_variant_for_a_tokenizer_without_a_bert_normalizer():
    full = Tokenizer.from_file(str(INTENTS / "tokenizer.json"))
    full.normalizer = normalizers.Lowercase()
    assert ascii_variant(full) is None


def test_one_text_encodes_as_the_same_text_does_in_a_batch_and_its_shared_arrays_are_read_only():
    encoder = TextEncoder(INTENTS / "tokenizer.json", max_len=8, pad_id=0, model_name="intents",
                          ids_name="input_ids", mask_name="attention_mask", type_ids_name="token_type_ids",
                          dtypes={"input_ids": np.dtype(np.int64), "attention_mask": np.dtype(np.int32),
                                  "token_type_ids": np.dtype(np.int64)})
    long = "please turn on every single light in the whole kitchen right now"
    for text in ("turn on the light", long):
        one = encoder.encode([text])
        pair = encoder.encode([text, long])  # the same length (long is cut to max_len): no padding in row 0
        n = one.tokens
        assert one.rows == 1 and n == int(one.lengths[0]) and pair.tokens == n + int(pair.lengths[1])
        for name, array in one.feeds.items():
            assert array.dtype == pair.feeds[name].dtype, name
            assert array[0].tolist() == pair.feeds[name][0, :n].tolist(), name
        assert one.mask.tolist() == [[1] * n] and one.truncated.tolist() == [text == long]
        for array in (*one.feeds.values(), one.mask, one.lengths, one.truncated):
            if array is not one.feeds["input_ids"]:
                assert not array.flags.writeable  # views of the encoder's constants
    assert encoder.encode([long]).truncated.tolist() == [True] and encoder.encode([long]).tokens == 8
