"""Token ids to streamed text: incremental byte-level decoding and stop sequences that may span tokens."""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream


class StopMatcher:
    """Finds the first stop string in streamed text, holding back any tail that could still start one."""

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(s for s in stops if s)
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to emit now, whether a stop string was reached). After a stop, feed no more."""
        if not self.stops:
            return text, False
        buffer = self._held + text
        hits = [i for i in (buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            self._held = ""
            return buffer[: min(hits)], True
        keep = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(buffer)), keep, -1):
                if buffer.endswith(stop[:n]):
                    keep = n
                    break
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep], False

    def flush(self) -> str:
        """Text held back when the sequence ends for another reason (it was not a stop after all)."""
        held, self._held = self._held, ""
        return held


class TextStream:
    """Decodes a sequence's tokens one at a time into text deltas (a token may end mid-character)."""

    def __init__(self, tokenizer: Tokenizer, stops: Sequence[str] = ()):
        self._tokenizer = tokenizer
        self._stream = DecodeStream(skip_special_tokens=True)
        self.stops = StopMatcher(stops)
        self.text = ""

    def push(self, token: int) -> tuple[str, bool]:
        """The text this token completes (possibly ""), and whether it reached a stop string."""
        piece = self._stream.step(self._tokenizer, token) or ""
        out, stopped = self.stops.feed(piece)
        self.text += out
        return out, stopped

    def close(self) -> str:
        out = self.stops.flush()
        self.text += out
        return out
