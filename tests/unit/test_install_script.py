"""deploy/install.sh picks the GPIO library from the device-tree model (fixture files stand in for the Pi)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "install.sh"


def detect(tmp_path: Path, model: bytes | None, *flags: str) -> subprocess.CompletedProcess:
    path = tmp_path / "model"
    if model is not None:
        path.write_bytes(model)
    env = dict(os.environ, EDGESLM_DT_MODEL=str(path))
    return subprocess.run(["bash", str(SCRIPT), "--detect", *flags], capture_output=True, text=True, env=env)


@pytest.mark.parametrize("model, board, gpio", [
    (b"Raspberry Pi 5 Model B Rev 1.0\0", "pi5", "lgpio>=0.2"),
    (b"Raspberry Pi Compute Module 5 Rev 1.0\0", "pi5", "lgpio>=0.2"),
    (b"Raspberry Pi 4 Model B Rev 1.4\0", "pi", "RPi.GPIO>=0.7"),
    (b"Raspberry Pi Zero 2 W Rev 1.0\0", "pi", "RPi.GPIO>=0.7"),
    (None, "other", ""),
])
def test_board_detection(tmp_path, model, board, gpio):
    result = detect(tmp_path, model)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"board: {board}", f"gpio: {gpio}"]


def test_board_override_and_a_wrong_board(tmp_path):
    assert detect(tmp_path, b"Raspberry Pi 5 Model B\0", "--board", "pi4").stdout.startswith("board: pi\n")
    wrong = detect(tmp_path, None, "--board", "pi6")
    assert wrong.returncode == 1 and "--board pi6" in wrong.stderr


def test_unknown_option_and_help(tmp_path):
    assert subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True).returncode == 64
    usage = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True)
    assert usage.returncode == 0 and "--uninstall" in usage.stdout and "examples:" in usage.stdout
