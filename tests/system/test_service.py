"""edgeslm under a real systemd: install.sh into a debootstrapped bookworm, boot it with systemd-nspawn,
and let tests/system/inside/service_checks.py drive the service from inside."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.system.machine import (
    DEB_ARCH,
    ROOT,
    Container,
    build_wheel,
    missing_tools,
    remove_tree,
    rootfs_tarball,
    unpack,
    wheelhouse,
)

ARCH = DEB_ARCH.get(platform.machine(), "")
SITE = "/opt/edgeslm/venv/lib/python3.11/site-packages/edgeslm/bundled/intents"
TEST_CONFIG = f"""# written by tests/system/test_service.py
[server]
socket_path = "/run/edgeslm/edgeslm.sock"
shutdown_timeout_s = 10

[[models]]
name = "intents"
path = "{SITE}"
runtime = "onnx"

[[models]]
name = "slow"
path = "{SITE}"
runtime = "onnx"

[models.batching]
max_delay_ms = 700   # each request waits here for batch-mates: in flight long enough to see a drain
inline_max_ms = 0
max_batch = 64

[metrics]
flush_interval_s = 3600   # records reach /var/log/edgeslm only through the flush at stop
"""
# Faster than production so the watchdog check takes seconds; still 2.5 s between pings.
TEST_DROPIN = "[Service]\nWatchdogSec=5s\nRestartSec=1s\n"
DRIVER_UNIT = """[Unit]
Description=edgeslm system checks
After=multi-user.target

[Service]
Type=simple
ExecStart=/usr/bin/python3 /src/tests/system/inside/service_checks.py

[Install]
WantedBy=multi-user.target
"""


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "systemd-nspawn needs root"
    tools = missing_tools("systemd-nspawn", "debootstrap")
    if tools:
        return f"{', '.join(tools)} not installed (apt-get install systemd-container debootstrap; .ci/run does it)"
    if not ARCH:
        return f"no Debian architecture for {platform.machine()}"
    if not Path("/proc/self/ns/pid").exists():
        return "no PID namespaces here, so systemd-nspawn cannot boot a container"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A booted-ready tree: bookworm + install.sh (run twice) + the test config and driver."""
    started = time.monotonic()
    tarball = rootfs_tarball(ARCH)
    wheel = build_wheel()
    wheels = wheelhouse(ARCH, wheel, extra=("ansible-core", "lgpio>=0.2"))
    prepared = time.monotonic()
    root = unpack(tarball, tmp_path_factory.mktemp("nspawn") / "root")
    container = Container(root, {ROOT: "/src", wheels: "/wheels"})
    # The board is detected from a fixture device-tree model: this tree plays a Pi 5.
    (root / "var/tmp/model").write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\0")
    install = ["/usr/bin/env", "EDGESLM_DT_MODEL=/var/tmp/model", "/bin/bash", "/src/deploy/install.sh",
               "--source", f"/wheels/{wheel.name}", "--wheels", "/wheels"]
    first = container.run(*install).stdout
    second = container.run(*install).stdout
    container.run("/usr/bin/python3", "-m", "venv", "/opt/ansible")
    container.run("/opt/ansible/bin/pip", "install", "-q", "--no-index", "--find-links", "/wheels", "ansible-core")
    (root / "etc/edgeslm/edgeslm.toml").write_text(TEST_CONFIG)
    (root / "var/log/journal").mkdir(parents=True, exist_ok=True)  # keep the journal for the host to read
    dropin = root / "etc/systemd/system/edgeslm.service.d/test.conf"
    dropin.parent.mkdir(parents=True, exist_ok=True)
    dropin.write_text(TEST_DROPIN)
    (root / "etc/systemd/system/edgeslm-systemtest.service").write_text(DRIVER_UNIT)
    wants = root / "etc/systemd/system/multi-user.target.wants/edgeslm-systemtest.service"
    wants.parent.mkdir(parents=True, exist_ok=True)
    wants.symlink_to("/etc/systemd/system/edgeslm-systemtest.service")
    timings = {"rootfs, wheel and wheels": prepared - started,
               "unpack and install.sh twice": time.monotonic() - prepared}
    yield container, first, second, timings
    remove_tree(root.parent)


def test_install_script_is_idempotent(installed, proved):
    container, first, second, timings = installed
    assert "created user edgeslm" in first and "enabled edgeslm.socket" in first, first
    assert "installing for board 'pi5' (GPIO: lgpio>=0.2)" in first, first
    container.run("/opt/edgeslm/venv/bin/python", "-c", "import lgpio")
    assert "usage: edgeslm reload" in container.run("/usr/local/bin/edgeslm", "reload", "--help").stdout  # on PATH
    changes = [line for line in second.splitlines() if line.startswith("  +")]
    assert not changes, f"the second run changed things:\n{second}"
    assert (container.root / "etc/systemd/system/sockets.target.wants/edgeslm.socket").is_symlink()
    groups = (container.root / "etc/group").read_text()
    assert re.search(r"^gpio:.*edgeslm", groups, re.M) and re.search(r"^audio:.*edgeslm", groups, re.M)
    verify = container.run("systemd-analyze", "verify", "/etc/systemd/system/edgeslm.socket",
                           "/etc/systemd/system/edgeslm.service")
    assert "edgeslm" not in verify.stderr, verify.stderr
    proved("install.sh detects a Pi 5 from the device-tree model and installs lgpio with edgeslm; "
           "it sets up user, groups, venv, /usr/local/bin/edgeslm, config and units and enables the socket; "
           "a second run changes nothing; systemd-analyze verify passes inside the installed tree "
           f"({timings['unpack and install.sh twice']:.0f} s)")


def test_service_under_real_systemd(installed, proved):
    container = installed[0]
    started = time.monotonic()
    console = container.root.parent / "console.log"
    code = container.boot(console)
    took = time.monotonic() - started
    output = console.read_text(errors="replace") + subprocess.run(
        ["journalctl", "--no-pager", "-D", str(container.root / "var/log/journal"), "-u", "edgeslm.service",
         "-u", "edgeslm.socket", "-u", "edgeslm-systemtest.service"], capture_output=True, text=True).stdout
    report_path = container.root / "var/tmp/edgeslm-system/report.json"
    assert report_path.exists(), f"the checks did not finish (nspawn exit {code}):\n{output[-6000:]}"
    report = json.loads(report_path.read_text())
    failed = [r for r in report if not r["ok"]]
    for record in report:
        print(f"{'PASS' if record['ok'] else 'FAIL'} {record['check']} ({record['seconds']} s): {record['detail']}")
    assert not failed, "\n".join(f"{r['check']}: {r['detail']}" for r in failed) + "\n" + output[-6000:]
    assert code == 0, output[-3000:]
    noisy = [line for line in output.splitlines() if "edgeslm" in line and ("WARNING" in line or "ERROR" in line)]
    print("daemon warnings and errors in the journal:", *noisy[-20:] or ["none"], sep="\n  ")
    for record in report:
        proved(f"under systemd 252 in nspawn: {record['check']} - {record['detail']}")
    proved(f"booting and running the service checks took {took:.0f} s")


def test_uninstall(installed, proved):
    container = installed[0]
    removal = ["/bin/bash", "/src/deploy/install.sh", "--uninstall", "--purge"]
    first = container.run(*removal).stdout
    again = container.run(*removal).stdout
    root = container.root
    assert not (root / "opt/edgeslm").exists() and not (root / "etc/systemd/system/edgeslm.service").exists()
    assert not (root / "usr/local/bin/edgeslm").is_symlink()
    assert not (root / "etc/systemd/system/sockets.target.wants/edgeslm.socket").exists()
    assert "edgeslm:" not in (root / "etc/passwd").read_text()
    assert "removed /opt/edgeslm" in first and not [line for line in again.splitlines() if line.startswith("  +")]
    proved("install.sh --uninstall --purge removes units, venv, config, state and the user; a second run is a no-op")
