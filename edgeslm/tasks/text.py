"""Text to token tensors with the HF `tokenizers` library, resolved once per model."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer, normalizers

from edgeslm.core.tensors import pad_rows
from edgeslm.errors import BadInputError, ModelLoadError
from edgeslm.tasks.tensors import TokenInput

TRUNCATE_FIX = 'send "truncate": true'  # the fix for an over-long text, as HTTP clients word it (the CLI rewords it)
# Past this many characters a text is tokenised by tokenizers' batch call, which lets the GIL go (its one-text
# call keeps it: 1 MB held every other thread, the event loop too, for ~0.6 s), and the server runs the work
# on a thread. Shorter texts, voice commands among them, keep the one-text call and stay on the loop.
LONG_TEXT_CHARS = 16 * 1024


def token_ids(tokenizer: Tokenizer, text: str, *, add_special_tokens: bool = True) -> list[int]:
    """`text`'s ids; a long text through the batch call (see LONG_TEXT_CHARS)."""
    if len(text) <= LONG_TEXT_CHARS:
        return tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
    return tokenizer.encode_batch_fast([text], add_special_tokens=add_special_tokens)[0].ids


@dataclass(frozen=True, slots=True)
class Encoded:
    """A request's texts as model feeds. feeds: name -> [n, L]; mask: [n, L] int; lengths, truncated: [n];
    tokens: the sum of lengths. Arrays may be read-only views of shared constants: never write into them."""

    feeds: dict[str, np.ndarray]
    mask: np.ndarray
    lengths: np.ndarray
    truncated: np.ndarray
    tokens: int

    @property
    def rows(self) -> int:
        return int(self.lengths.shape[0])


def _constant(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def ascii_variant(tokenizer: Tokenizer) -> Tokenizer | None:
    """A copy of a BERT-style tokenizer for texts that are all ASCII, or None when it would gain nothing.

    BertNormalizer decomposes every text to strip accents and scans it for CJK characters;
    neither changes an ASCII text, and skipping both takes a quarter off a voice command's
    tokenising (about 20 -> 15 us here). Cleaning and lowercasing stay as they are. Tested
    to give the same ids on every phrase of the intents set and on random ASCII."""
    serialised = tokenizer.to_str()
    config = json.loads(serialised).get("normalizer") or {}
    if config.get("type") != "BertNormalizer" or not (
            config.get("handle_chinese_chars", True) or config.get("strip_accents") is not False):
        return None
    fast = Tokenizer.from_str(serialised)
    fast.normalizer = normalizers.BertNormalizer(clean_text=config.get("clean_text", True),
                                                 handle_chinese_chars=False, strip_accents=False,
                                                 lowercase=config.get("lowercase", True))
    return fast


class TextEncoder:
    """Tokenises texts into padded id / mask / type-id arrays of the dtypes the engine expects."""

    def __init__(self, tokenizer_path: Path, *, max_len: int, pad_id: int, model_name: str,
                 ids_name: str, dtypes: Mapping[str, np.dtype],
                 mask_name: str | None = None, type_ids_name: str | None = None):
        try:
            self._tokenizer = Tokenizer.from_file(str(tokenizer_path))
        except Exception as exc:  # tokenizers raises a bare Exception for unreadable files
            raise ModelLoadError(f"cannot read tokenizer {tokenizer_path}: {exc}") from None
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=max_len)
        self._ascii = ascii_variant(self._tokenizer)
        self._path = tokenizer_path
        self._untruncated: Tokenizer | None = None
        self.max_len = max_len
        self.pad_id = pad_id
        self.model_name = model_name
        self.ids_name, self.mask_name, self.type_ids_name = ids_name, mask_name, type_ids_name
        self._dtypes = dict(dtypes)
        self._positions = np.arange(max_len)[None, :]
        for name in (ids_name, mask_name, type_ids_name):
            if name is not None and name not in self._dtypes:
                raise ModelLoadError(
                    f"model card names input {name!r}, but the model's inputs are {', '.join(self._dtypes)}"
                )
        # One text (the usual voice command) takes its mask, type ids, length and flag as views of these
        # constants, made here once: slicing them instead of making four small arrays took encoding one text
        # (with its token count) from 27 to 18 us here, the tokenizer's own 11 us included.
        self._ones = _constant(np.ones((1, max_len), dtype=np.int64))
        self._one_text_feeds: dict[str, np.ndarray] = {}  # input name -> [1, max_len], sliced per text
        if mask_name is not None:
            self._one_text_feeds[mask_name] = _constant(np.ones((1, max_len), dtype=self._dtypes[mask_name]))
        if type_ids_name is not None:
            zeros = np.zeros((1, max_len), dtype=self._dtypes[type_ids_name])
            self._one_text_feeds[type_ids_name] = _constant(zeros)
        self._one_length = [_constant(np.array([n], dtype=np.int64)) for n in range(max_len + 1)]
        self._one_flag = (_constant(np.array([False])), _constant(np.array([True])))

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    def token_inputs(self) -> dict[str, TokenInput]:
        """What raw tensors for this model's token inputs may hold (checked on /v2 infer)."""
        limits = {self.ids_name: TokenInput(self.max_len, 0, self._tokenizer.get_vocab_size(), "token ids")}
        if self.mask_name is not None:
            limits[self.mask_name] = TokenInput(self.max_len, 0, 2, "mask values")
        if self.type_ids_name is not None:
            limits[self.type_ids_name] = TokenInput(self.max_len, 0, 2, "token type ids")
        return limits

    def _full_length(self, text: str) -> int:
        if self._untruncated is None:  # built at the first refused text, then kept
            self._untruncated = Tokenizer.from_file(str(self._path))
            self._untruncated.no_truncation()
        return len(self._untruncated.encode(text).ids)

    def encode(self, texts: Sequence[str], *, truncate: bool = True, param: str = "input") -> Encoded:
        """Encode texts; too-long ones are cut to `max_len` and flagged, or refused when truncate is False."""
        # One text: `encode` keeps the GIL, where a batch call lets it go and the batch worker, waiting for
        # it, takes it: two thread switches per request, a fifth of the throughput at 32 clients (measured).
        # Several: the batch call without character offsets (nothing here reads them), 10 us a text.
        tokenizer = self._tokenizer
        if self._ascii is not None and all(text.isascii() for text in texts):
            tokenizer = self._ascii
        if len(texts) == 1 and len(texts[0]) <= LONG_TEXT_CHARS:
            return self._encode_one(tokenizer.encode(texts[0]), texts[0], truncate, param)
        encodings = tokenizer.encode_batch_fast(list(texts))
        rows = [enc.ids for enc in encodings]
        flags = [self._check(i, ids, enc, texts[i], truncate, param)
                 for i, (ids, enc) in enumerate(zip(rows, encodings))]
        sizes = [len(r) for r in rows]
        lengths = np.array(sizes, dtype=np.int64)
        ids = pad_rows(rows, self.pad_id, self._dtypes[self.ids_name])
        mask = (self._positions[:, : ids.shape[1]] < lengths[:, None]).astype(np.int64)
        feeds = {self.ids_name: ids}
        if self.mask_name is not None:
            feeds[self.mask_name] = mask.astype(self._dtypes[self.mask_name], copy=False)
        if self.type_ids_name is not None:
            feeds[self.type_ids_name] = np.zeros(ids.shape, dtype=self._dtypes[self.type_ids_name])
        truncated = np.array(flags, dtype=bool)
        return Encoded(feeds, mask, lengths, truncated, sum(sizes))

    def _check(self, i: int, ids: list[int], enc: Encoding, text: str, truncate: bool, param: str) -> bool:
        """Whether text i (`ids`, its `enc`) was cut to max_len; refuses an empty one, and a cut one when
        truncate is False."""
        if not ids:
            raise BadInputError(f"{param}[{i}] has no tokens (empty or only spaces); send some text",
                                param=f"{param}[{i}]")
        cut = bool(enc.overflowing)
        if cut and not truncate:
            raise BadInputError(
                f"{param}[{i}] is {self._full_length(text)} tokens; model {self.model_name!r} takes "
                f"at most {self.max_len}: shorten it or {TRUNCATE_FIX}",
                param=f"{param}[{i}]",
            )
        return cut

    def _encode_one(self, enc: Encoding, text: str, truncate: bool, param: str) -> Encoded:
        ids = enc.ids
        cut = self._check(0, ids, enc, text, truncate, param)
        n = len(ids)
        feeds = {self.ids_name: np.array([ids], dtype=self._dtypes[self.ids_name])}
        for name, constant in self._one_text_feeds.items():
            feeds[name] = constant[:, :n]
        return Encoded(feeds, self._ones[:, :n], self._one_length[n], self._one_flag[cut], n)
