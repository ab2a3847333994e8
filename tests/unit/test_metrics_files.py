"""Record files: rotation, the disk budget, gzip, torn lines, and a full or read-only disk."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest

from edgeslm.metrics.files import JsonlWriter, read_records, record_files

ROOT = Path(__file__).resolve().parents[2]


def lines(start: int, count: int, pad: int = 60) -> list[bytes]:
    return [orjson.dumps({"kind": "request", "i": i, "pad": "x" * pad}) for i in range(start, start + count)]


def test_rotation_and_budget_keep_the_newest_records(tmp_path):
    writer = JsonlWriter(tmp_path, rotate_bytes=1000, budget_bytes=4000, wall_clock=lambda: 1.7e9)
    for i in range(0, 300, 5):
        assert writer.write(lines(i, 5))
    writer.close()
    files = record_files(tmp_path)
    sizes = [f.stat().st_size for f in files]
    assert all(size <= 1000 for size in sizes) and sum(sizes) <= 4000
    assert writer.files_deleted > 0 and len(files) >= 3
    assert files[0].name.startswith("metrics-") and files[0].name.endswith("Z.jsonl")
    numbers = [int(f.name.split("-")[1]) for f in files]
    assert numbers == sorted(numbers) and numbers[0] > 1  # the oldest files went first
    kept = [r["i"] for r in read_records(tmp_path)]
    assert kept == list(range(kept[0], 300))  # a contiguous, ordered tail ending at the newest record
    assert writer.written_records == 300 and writer.dropped == 0


def test_a_new_daemon_continues_the_sequence_and_honours_the_budget(tmp_path):
    JsonlWriter(tmp_path, rotate_bytes=1000, budget_bytes=2000).write(lines(0, 20))
    later = JsonlWriter(tmp_path, rotate_bytes=1000, budget_bytes=2000)
    later.write(lines(20, 1))
    later.close()
    files = record_files(tmp_path)
    # The first daemon's 1.8 kB went into two files of at most 1 kB; the older one leaves no room for a new
    # 1 kB file in 2 kB: it is deleted, and the new daemon's file is number 3.
    assert [f.name.split("-")[1] for f in files] == ["000002", "000003"] and later.path == files[-1]
    assert sum(f.stat().st_size for f in files) <= 2000
    kept = [r["i"] for r in read_records(tmp_path)]
    assert kept == list(range(kept[0], 21)) and kept[0] > 0


def test_rotated_files_can_be_gzipped_and_are_read_back(tmp_path):
    writer = JsonlWriter(tmp_path, rotate_bytes=600, budget_bytes=100_000, compress=True)
    for i in range(0, 40, 4):
        writer.write(lines(i, 4))
    writer.close()
    files = record_files(tmp_path)
    assert all(f.name.endswith(".jsonl.gz") for f in files[:-1]) and files[-1].name.endswith(".jsonl")
    assert [r["i"] for r in read_records(tmp_path)] == list(range(40))


def test_torn_and_garbled_lines_are_skipped_and_counted(tmp_path):
    writer = JsonlWriter(tmp_path)
    writer.write(lines(0, 3))
    writer.close()
    path = record_files(tmp_path)[0]
    with open(path, "ab") as fh:
        fh.write(b"\x00\x00garbage\n" + lines(3, 1)[0] + b"\n" + lines(4, 1)[0][:25])  # torn last line
    stats: dict[str, int] = {}
    assert [r["i"] for r in read_records(tmp_path, stats=stats)] == [0, 1, 2, 3]
    assert stats["bad_lines"] == 2
    assert list(read_records(tmp_path, kinds=("sample",))) == []


def test_since_skips_files_not_written_since(tmp_path):
    writer = JsonlWriter(tmp_path)
    writer.write(lines(0, 2))
    writer.close()
    os.utime(record_files(tmp_path)[0], (1_000_000, 1_000_000))
    assert list(read_records(tmp_path, since_wall=2_000_000)) == []
    assert len(list(read_records(tmp_path, since_wall=500_000))) == 2


def test_unwritable_folder_drops_counts_and_warns_once(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    writer = JsonlWriter(blocker / "metrics")
    with caplog.at_level(logging.WARNING):
        assert not writer.write(lines(0, 3))
        assert not writer.write(lines(3, 2))
    assert writer.dropped == 5
    assert caplog.text.count("cannot write metrics records") == 1


def test_full_tmpfs_drops_whole_chunks_never_tears_a_line_and_recovers(tiny_fs, caplog):
    filler = tiny_fs / "filler"
    filler.write_bytes(b"f" * 16384)
    writer = JsonlWriter(tiny_fs / "metrics", rotate_bytes=1 << 20, budget_bytes=4 << 20)
    results = []
    with caplog.at_level(logging.INFO):
        for i in range(0, 2000, 10):
            results.append(writer.write(lines(i, 10, pad=200)))
        assert True in results and False in results
        assert writer.dropped > 0 and writer.written_records + writer.dropped == 2000
        assert caplog.text.count("cannot write metrics records") == 1
        assert "No space left on device" in caplog.text
        stats: dict[str, int] = {}
        kept = list(read_records(tiny_fs / "metrics", stats=stats))
        assert len(kept) == writer.written_records and stats["bad_lines"] == 0
        # Space comes back: writing resumes and says so.
        filler.unlink()
        assert writer.write(lines(5000, 1))
        assert "being written again" in caplog.text
    writer.close()
    assert list(read_records(tiny_fs / "metrics"))[-1]["i"] == 5000


def test_read_only_filesystem_drops_and_counts(tiny_fs):
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
    writer = JsonlWriter(tiny_fs / "metrics")
    assert not writer.write(lines(0, 4))
    assert writer.dropped == 4


def test_file_size_limit_in_a_subprocess(tmp_path):
    """RLIMIT_FSIZE makes writes past 3000 bytes fail with EFBIG (Python ignores SIGXFSZ): records are dropped."""
    script = textwrap.dedent(f"""
        import json, resource, orjson
        from edgeslm.metrics.files import JsonlWriter
        resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))
        writer = JsonlWriter({str(tmp_path / "m")!r}, rotate_bytes=1 << 20, budget_bytes=4 << 20)
        ok = [writer.write([orjson.dumps({{"i": i * 3 + j, "pad": "y" * 90}}) for j in range(3)]) for i in range(40)]
        print(json.dumps({{"ok": ok, "dropped": writer.dropped, "written": writer.written_records}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["dropped"] > 0 and result["written"] > 0 and result["dropped"] + result["written"] == 120
    assert "File too large" in done.stderr  # the one warning
    files = record_files(tmp_path / "m")
    assert sum(f.stat().st_size for f in files) <= 3000
    stats: dict[str, int] = {}
    assert len(list(read_records(tmp_path / "m", stats=stats))) == result["written"] and stats["bad_lines"] == 0


def test_unreadable_records_say_how_to_get_access(tmp_path):
    """As an unprivileged user (setpriv), a 0600 root file is refused with advice, not skipped silently."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to read as another user")
    folder = tmp_path / "logs"
    JsonlWriter(folder).write(lines(0, 1))
    os.chmod(tmp_path, 0o755)
    os.chmod(folder, 0o755)
    script = f"from edgeslm.cli import main; raise SystemExit(main(['stats', '--dir', {str(folder)!r}]))"
    done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                           script], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "permission denied; run as the daemon's user, with sudo" in done.stderr


def test_a_flush_bigger_than_a_file_is_split_at_line_ends_and_stays_within_the_budget(tmp_path):
    # A busy daemon's 5 s flush (~4 MB at 3000 requests/s) can exceed rotate_bytes: it must not make one big file.
    writer = JsonlWriter(tmp_path, rotate_bytes=4096, budget_bytes=8192, wall_clock=lambda: 1.7e9)
    flush = [line + b"\n" for line in lines(0, 100, pad=150)]  # ~20 KB in one call
    assert writer.write_lines(flush) == 100
    assert writer.write_lines([]) == 0
    writer.close()
    files = record_files(tmp_path)
    assert len(files) >= 2
    assert all(f.stat().st_size <= 4096 for f in files)
    assert sum(f.stat().st_size for f in files) <= 8192
    kept = [r["i"] for r in read_records(tmp_path)]
    assert kept == list(range(kept[0], 100))  # the newest records, whole lines, in order
