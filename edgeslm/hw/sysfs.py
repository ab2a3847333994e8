"""Reading sysfs and /proc attribute files under an injectable root, with errors that name the file."""

from __future__ import annotations

import math
from pathlib import Path

from edgeslm.errors import SensorError


def under(root: Path, path: str) -> Path:
    """`path` (absolute, as on a real system) inside `root` (a fixture tree in tests, / otherwise)."""
    return Path(root) / path.lstrip("/")


def read_text(path: Path) -> str:
    """The attribute's text, stripped (device-tree strings end in NUL)."""
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip().rstrip("\x00")
    except FileNotFoundError:
        raise SensorError(f"{path} is missing") from None
    except OSError as exc:
        raise SensorError(f"cannot read {path}: {exc.strerror or exc}") from None


def read_number(path: Path) -> float:
    """The attribute as a finite number; SensorError names the file and the bad text."""
    text = read_text(path)
    try:
        value = float(text)
    except ValueError:
        raise SensorError(f"{path} holds {text[:40]!r}, not a number") from None
    if not math.isfinite(value):
        raise SensorError(f"{path} holds {text[:40]!r}, not a finite number")
    return value


def read_optional(path: Path) -> str | None:
    """The attribute's text, or None when the file is absent or unreadable."""
    try:
        return read_text(path)
    except SensorError:
        return None
