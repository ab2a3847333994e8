"""Just enough TOML writing for model cards: tables of strings, numbers, booleans and flat lists."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any


def value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"TOML cannot hold {v}")
        return repr(v)
    if isinstance(v, str):
        # JSON string escapes (\n, \", \\, \uXXXX) are valid TOML basic-string escapes.
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def dumps(doc: Mapping[str, Any]) -> str:
    """TOML text for a mapping whose values are scalars, lists, or (nested) mappings written as tables."""
    lines: list[str] = []

    def table(path: list[str], body: Mapping[str, Any]) -> None:
        scalars = {k: v for k, v in body.items() if not isinstance(v, Mapping)}
        if path and (scalars or not body):
            lines.append(f"\n[{'.'.join(_key(p) for p in path)}]")
        for k, v in scalars.items():
            if v is not None:
                lines.append(f"{_key(k)} = {value(v)}")
        for k, v in body.items():
            if isinstance(v, Mapping):
                table([*path, k], v)

    table([], doc)
    return "\n".join(lines).lstrip("\n") + "\n"
