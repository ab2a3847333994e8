"""The unit files pass `systemd-analyze verify` and rate exposure <= 3.0 in `systemd-analyze security`."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
MAX_EXPOSURE = 3.0

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze is not installed (apt-get install systemd)")


def _tree_with_units(tmp_path: Path) -> Path:
    """A root holding the system's units, ours, and an executable where ExecStart points."""
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in UNITS.glob("edgeslm.*"):
        shutil.copy(unit, root / "etc/systemd/system" / unit.name)
    binary = root / "opt/edgeslm/venv/bin/edgeslm"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    return root


def test_units_verify(tmp_path, proved):
    root = _tree_with_units(tmp_path)
    units = [str(root / "etc/systemd/system" / name) for name in ("edgeslm.socket", "edgeslm.service")]
    result = subprocess.run(["systemd-analyze", "verify", f"--root={root}", *units], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "edgeslm" not in result.stderr, result.stderr  # warnings about our units count as failures
    proved("systemd-analyze verify passes on edgeslm.socket and edgeslm.service")


def test_service_exposure(tmp_path, proved):
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
                             str(UNITS / "edgeslm.service")], capture_output=True, text=True)
    match = re.search(r"Overall exposure level for edgeslm\.service: ([\d.]+) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    score = float(match.group(1))
    print(f"systemd-analyze security --offline=yes edgeslm.service: exposure {score} {match.group(2)}")
    assert score <= MAX_EXPOSURE, result.stdout
    proved(f"edgeslm.service exposure {score} {match.group(2)} (limit {MAX_EXPOSURE}) with /dev/gpiochip*, "
           "/dev/snd and /dev/vcio still allowed")


def test_hardening_keeps_the_devices_the_daemon_needs():
    text = (UNITS / "edgeslm.service").read_text()
    allowed = set(re.findall(r"^DeviceAllow=(\S+)", text, re.M))
    assert {"char-gpiochip", "char-alsa", "/dev/vcio"} <= allowed
    assert "PrivateDevices=yes" not in text  # it would hide every one of them
    assert re.search(r"^SupplementaryGroups=gpio audio$", text, re.M)
    assert re.search(r"^RuntimeDirectoryPreserve=yes$", text, re.M)
    socket = (UNITS / "edgeslm.socket").read_text()
    assert "SocketMode=0660" in socket and "SocketGroup=edgeslm" in socket
