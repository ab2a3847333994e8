"""Progress of long work (fetch, convert, check) as stages with totals: tqdm bars, a recorder, or nothing."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO, runtime_checkable


@runtime_checkable
class Progress(Protocol):
    """What a pull reports while it works.

    `stage` starts a named step (closing the one before); `total` is how many units it has,
    None when unknown. `advance` moves the current stage on; `note` reports a finished fact
    ("onnx int8: min cosine 0.998"); `close` ends the last stage. Callers may call
    `advance` past `total` or `close` twice; implementations must tolerate both.
    """

    def stage(self, name: str, total: float | None = None, unit: str = "step") -> None: ...

    def advance(self, amount: float = 1.0) -> None: ...

    def note(self, message: str) -> None: ...

    def close(self) -> None: ...


class NullProgress:
    """Reports nothing (library use, the daemon)."""

    def stage(self, name: str, total: float | None = None, unit: str = "step") -> None:
        pass

    def advance(self, amount: float = 1.0) -> None:
        pass

    def note(self, message: str) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class RecordingProgress:
    """Keeps every call, for tests: `stages` in order, `done[stage]` units advanced, `notes`."""

    stages: list[str] = field(default_factory=list)
    totals: dict[str, float | None] = field(default_factory=dict)
    done: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    closed: int = 0

    def stage(self, name: str, total: float | None = None, unit: str = "step") -> None:
        self.stages.append(name)
        self.totals[name] = total
        self.done[name] = 0.0

    def advance(self, amount: float = 1.0) -> None:
        if self.stages:
            self.done[self.stages[-1]] += amount

    def note(self, message: str) -> None:
        self.notes.append(message)

    def close(self) -> None:
        self.closed += 1


class TqdmProgress:
    """One tqdm bar per stage on stderr; notes are printed between bars."""

    def __init__(self, stream: TextIO | None = None, *, disable: bool | None = None):
        from tqdm import tqdm

        self._tqdm = tqdm
        self._stream = stream or sys.stderr
        self._disable = disable
        # Off a terminal tqdm draws nothing (disable=None); stage names are then printed as lines instead.
        self._lines = disable is None and not self._stream.isatty()
        self._bar: Any = None

    def stage(self, name: str, total: float | None = None, unit: str = "step") -> None:
        self.close()
        if self._lines:
            print(f"{name} ...", file=self._stream, flush=True)
        scale = unit in ("B", "byte", "bytes")
        self._bar = self._tqdm(
            total=total, desc=name, unit="B" if scale else unit, unit_scale=scale, unit_divisor=1024 if scale else 1000,
            file=self._stream, disable=self._disable, leave=True, dynamic_ncols=True,
            bar_format=None if total else "{desc}: {elapsed}{postfix}",
        )

    def advance(self, amount: float = 1.0) -> None:
        if self._bar is not None:
            self._bar.update(int(amount) if float(amount).is_integer() else amount)

    def note(self, message: str) -> None:
        self._tqdm.write(f"  {message}", file=self._stream)

    def close(self) -> None:
        if self._bar is not None:
            if self._bar.total and self._bar.n < self._bar.total:
                self._bar.update(self._bar.total - self._bar.n)
            self._bar.close()
            self._bar = None
