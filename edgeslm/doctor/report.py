"""What a doctor check found, the context checks read the machine through, and the printed report."""

from __future__ import annotations

import grp
import importlib
import os
import pwd
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, TextIO

Status = Literal["ok", "warn", "fail"]
MARK = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}


@dataclass(frozen=True)
class Finding:
    """One check's verdict: a one-line summary, what it means in plain words, and a fix when it is not ok."""

    check: str
    status: Status
    summary: str
    explanation: str = ""
    fix: str = ""


@dataclass(frozen=True)
class Identity:
    """The user the daemon runs as, for permission checks on device nodes and directories."""

    name: str
    uid: int
    gids: frozenset[int]

    @classmethod
    def of(cls, name: str | None) -> Identity:
        """`name` if that user exists (the service's 'edgeslm'), else whoever runs the doctor."""
        try:
            return cls.named(name) if name else cls._from(pwd.getpwuid(os.geteuid()))
        except KeyError:
            return cls._from(pwd.getpwuid(os.geteuid()))

    @classmethod
    def named(cls, name: str) -> Identity:
        """The user called `name` (or with that numeric uid); KeyError when there is none."""
        return cls._from(pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name))

    @classmethod
    def _from(cls, entry: pwd.struct_passwd) -> Identity:
        gids = {entry.pw_gid} | {g.gr_gid for g in grp.getgrall() if entry.pw_name in g.gr_mem}
        return cls(entry.pw_name, entry.pw_uid, frozenset(gids))

    def can(self, path: Path, want: int) -> bool:
        """Would this user get `want` (os.R_OK | os.W_OK ...) on `path` by its mode bits?"""
        try:
            st = path.stat()
        except OSError:
            return False
        if self.uid == 0:
            return True
        shift = 6 if st.st_uid == self.uid else 3 if st.st_gid in self.gids else 0
        return (st.st_mode >> shift) & want == want


@dataclass
class Context:
    """Where the checks look. Tests point `root` at a fixture tree and pass fakes for imports."""

    root: Path = Path("/")
    config_path: Path | None = None
    user: Identity = field(default_factory=lambda: Identity.of("edgeslm"))
    import_module: Callable[[str], ModuleType] = importlib.import_module
    module_present: Callable[[str], bool] = lambda name: importlib.util.find_spec(name) is not None
    open_gpio: Callable[[str], Any] | None = None  # opens a GPIO backend by name (default: edgeslm.hw.gpio)
    open_vad: Callable[[Path, int], Any] | None = None  # opens the VAD (path, threads) (default: serve's open_vad)
    run: Callable[..., str] | None = None  # runs vcgencmd for the power check (default: the real one)
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    config: Any = None  # the loaded Config, once the config check has run
    config_error: str | None = None

    def path(self, path: str | Path) -> Path:
        """An absolute path as seen under `root` (relative paths stay relative to the working directory)."""
        path = Path(path)
        if self.root == Path("/") or not path.is_absolute():
            return path
        return self.root / str(path).lstrip("/")


def render(findings: Iterable[Finding], out: TextIO) -> tuple[int, int, int]:
    """Print the report; returns (ok, warnings, failures)."""
    counts = {"ok": 0, "warn": 0, "fail": 0}
    for f in findings:
        counts[f.status] += 1
        print(f"  {MARK[f.status]}  {f.check:<9} {f.summary}", file=out)
        pad = " " * 18
        if f.explanation and f.status != "ok":
            print(f"{pad}{f.explanation}", file=out)
        if f.fix and f.status != "ok":
            print(f"{pad}fix: {f.fix}", file=out)
    print(f"{counts['fail']} failed, {counts['warn']} warning(s), {counts['ok']} ok", file=out)
    return counts["ok"], counts["warn"], counts["fail"]
