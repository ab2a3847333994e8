"""The slow tier's shared store: minilm-l6 and silero-vad pulled for real (pip + convert) into .cache/store."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STORE = Path(os.environ.get("EDGESLM_TEST_STORE", ROOT / ".cache" / "store"))
PULLED = ("minilm-l6", "silero-vad")


def edgeslm(*args: str, timeout_s: float = 3600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGESLM_")}
    return subprocess.run([sys.executable, "-m", "edgeslm", *args], capture_output=True, text=True, env=env,
                          timeout=timeout_s, cwd=ROOT)


@pytest.fixture(scope="session")
def store() -> Path:
    """Pull both models once per run (a cold pull on a fresh checkout, no work when .cache/store has them)."""
    for name in PULLED:
        started = time.monotonic()
        done = edgeslm("pull", name, "--store", str(STORE), "--quiet")
        seconds = time.monotonic() - started
        assert done.returncode == 0, f"edgeslm pull {name} failed:\n{done.stdout}\n{done.stderr}"
        cached = "already pulled" in done.stdout
        print(f"\n[store] edgeslm pull {name}: {'cached, no work' if cached else 'cold pull'} in {seconds:.1f} s")
        print("        " + "\n        ".join(done.stdout.strip().splitlines()))
    return STORE
