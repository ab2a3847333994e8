"""JSONL record files: appended in chunks, rotated by size, kept within a disk budget, read back torn-line-tolerant."""

from __future__ import annotations

import gzip
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import orjson

from edgeslm.errors import EdgeslmError

log = logging.getLogger(__name__)

# metrics-000042-20250101T120000Z.jsonl[.gz]: the sequence number orders files, the stamp is for people.
FILE_NAME = re.compile(r"^metrics-(\d{6,})-\d{8}T\d{6}Z\.jsonl(\.gz)?$")


def record_files(folder: Path) -> list[Path]:
    """Record files in `folder`, oldest first; [] if there is no such folder (other OSErrors propagate)."""
    try:
        found = [(int(m.group(1)), p) for p in Path(folder).iterdir() if (m := FILE_NAME.match(p.name))]
    except FileNotFoundError:
        return []
    return [p for _, p in sorted(found)]


def _denied(path: Path) -> EdgeslmError:
    return EdgeslmError(f"cannot read {path}: permission denied; run as the daemon's user, with sudo, or join the "
                        "group that owns the folder", code="permission_denied")


def readable_record_files(folder: Path) -> list[Path]:
    """record_files for readers: a folder they may not list is an EdgeslmError that says what to do."""
    try:
        return record_files(folder)
    except PermissionError:
        raise _denied(folder) from None
    except OSError as exc:
        raise EdgeslmError(f"cannot list {folder}: {exc.strerror or exc}", code="unreadable") from None


class JsonlWriter:
    """Appends chunks of JSON lines to the newest file of a folder; never raises on a write.

    A chunk is one os.write on an O_APPEND file (no fsync: the kernel's writeback batches
    it, which spares SD cards). When a chunk would take the file past `rotate_bytes` a new
    file is started, and the oldest files are deleted until all of them, with room for the
    new one to fill, fit in `budget_bytes`. If the folder cannot be created or written (disk
    full, read-only, quota, file-size limit), the chunk's records are dropped and counted,
    a warning is logged (once: later outages only at debug level), and the next chunk tries again.
    """

    def __init__(self, folder: Path, *, rotate_bytes: int = 4 << 20, budget_bytes: int = 64 << 20,
                 compress: bool = False, wall_clock: Callable[[], float] = time.time):
        self.folder = Path(folder)
        self.rotate_bytes = rotate_bytes
        self.budget_bytes = budget_bytes
        self.compress = compress
        self.wall_clock = wall_clock
        self.dropped = 0
        self.written_bytes = 0
        self.written_records = 0
        self.files_deleted = 0
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0
        self._failing: str | None = None
        self._outages = 0  # a disk that fills up flaps between full and not: only the first outage warns

    @property
    def path(self) -> Path | None:
        return self._path

    def write(self, lines: Sequence[bytes]) -> bool:
        """Append records (each a JSON document without its newline); False if they were dropped."""
        return self.write_lines([line + b"\n" for line in lines]) == len(lines)

    def write_lines(self, lines: Sequence[bytes]) -> int:
        """Append serialised records (each ending in a newline) in chunks that each fit a file; returns how many
        were written. One flush of a busy daemon (5 s at ~3000 requests/s, ~4 MB) can be bigger than
        `rotate_bytes`: as one chunk it went into one file past that size, and the folder past its budget."""
        written = 0
        start, size = 0, 0
        for end, line in enumerate(lines):
            if size and size + len(line) > self.rotate_bytes:
                written += self._chunk_of(lines[start:end])
                start, size = end, 0
            size += len(line)
        return written + self._chunk_of(lines[start:])

    def _chunk_of(self, lines: Sequence[bytes]) -> int:
        return len(lines) if self.write_chunk(b"".join(lines), len(lines)) else 0

    def write_chunk(self, chunk: bytes, records: int) -> bool:
        """Append `records` whole lines, each ending in a newline; False if they were dropped."""
        if not records:
            return True
        try:
            if self._fd is None or (self._size and self._size + len(chunk) > self.rotate_bytes):
                self._rotate()
            assert self._fd is not None
            self._append(chunk)
        except OSError as exc:
            self._drop(records, exc)
            return False
        self._size += len(chunk)
        self.written_bytes += len(chunk)
        self.written_records += records
        if self._failing is not None:
            log.log(logging.INFO if self._outages == 1 else logging.DEBUG,
                    "metrics records are being written again to %s (%d dropped so far)", self.folder, self.dropped)
            self._failing = None
        return True

    def _append(self, chunk: bytes) -> None:
        assert self._fd is not None
        written = 0
        try:
            while written < len(chunk):
                written += os.write(self._fd, chunk[written:])
        except OSError:
            if written:
                # Half a chunk would glue a torn line to the next record; take it back if the disk lets us.
                try:
                    os.ftruncate(self._fd, self._size)
                except OSError:
                    self._size += written
                    self._close_fd()  # the next chunk starts a fresh file, leaving the torn tail last
            raise

    def _drop(self, count: int, exc: OSError) -> None:
        self.dropped += count
        reason = f"{exc.strerror or exc} ({type(exc).__name__}, errno {exc.errno})"
        if self._failing is None:
            self._outages += 1
            level = logging.WARNING if self._outages == 1 else logging.DEBUG
            log.log(level, "cannot write metrics records to %s: %s; dropping records (counted in /metrics as "
                    "edgeslm_metrics_dropped_records_total), inference goes on. Free space or change "
                    "metrics.dir / metrics.disk_budget_bytes", self.folder, reason)
        self._failing = reason

    def _rotate(self) -> None:
        self._close_fd()
        self.folder.mkdir(parents=True, exist_ok=True)
        existing = record_files(self.folder)
        if self.compress:
            existing = [self._gzip(p) for p in existing]
        last = int(FILE_NAME.match(existing[-1].name).group(1)) if existing else 0  # type: ignore[union-attr]
        self._enforce_budget(existing)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.wall_clock()))
        path = self.folder / f"metrics-{last + 1:06d}-{stamp}.jsonl"
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._path, self._size = path, 0

    def _gzip(self, path: Path) -> Path:
        if path.suffix == ".gz":
            return path
        target = path.with_name(path.name + ".gz")
        try:
            with open(path, "rb") as src, gzip.open(target, "wb", compresslevel=6) as dst:
                shutil.copyfileobj(src, dst)
            path.unlink()
        except OSError as exc:
            target.unlink(missing_ok=True)
            log.warning("cannot compress %s: %s; kept as is", path, exc.strerror or exc)
            return path
        return target

    def _enforce_budget(self, files: list[Path]) -> None:
        sizes = []
        for path in files:
            try:
                sizes.append((path, path.stat().st_size))
            except OSError:
                continue
        total = sum(size for _, size in sizes)
        room = self.budget_bytes - self.rotate_bytes  # the new file may grow to rotate_bytes
        for path, size in sizes:
            if total <= room:
                break
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            total -= size
            self.files_deleted += 1
            log.info("metrics disk budget (%d bytes): deleted the oldest file %s", self.budget_bytes, path.name)

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass

    def close(self) -> None:
        self._close_fd()


def read_lines(path: Path) -> Iterator[bytes]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            yield from fh
    except PermissionError:
        raise _denied(path) from None
    except (OSError, EOFError) as exc:  # a gzip cut short by a full disk still yields what it had
        log.warning("stopped reading %s early: %s", path, exc)


def read_records(folder: Path, *, since_wall: float | None = None, kinds: Sequence[str] | None = None,
                 stats: dict[str, int] | None = None) -> Iterator[dict]:
    """Every record in the folder's files, oldest first; torn or garbled lines are skipped and counted
    in `stats["bad_lines"]`. With `since_wall` (unix seconds), files last written before it are skipped."""
    counts = stats if stats is not None else {}
    counts.setdefault("bad_lines", 0)
    counts.setdefault("files", 0)
    for path in readable_record_files(folder):
        try:
            if since_wall is not None and path.stat().st_mtime < since_wall:
                continue
        except OSError:
            continue
        counts["files"] += 1
        for line in read_lines(path):
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                if line.strip():
                    counts["bad_lines"] += 1
                continue
            if not isinstance(record, dict) or (kinds is not None and record.get("kind") not in kinds):
                continue
            yield record
