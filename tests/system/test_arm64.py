"""The package on arm64 (the Pi's architecture): an arm64 bookworm run through qemu-user-static (binfmt),
installing the wheel with its aarch64 dependencies and running the foundation's smoke test there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.system.machine import ROOT, build_wheel, missing_tools, remove_tree, rootfs_tarball, run, unpack, wheelhouse

BINFMT = Path("/proc/sys/fs/binfmt_misc")
ENTRY = BINFMT / "qemu-aarch64"
PACKAGES = "python3,python3-venv,ca-certificates"


def binfmt_problem() -> str | None:
    """None once aarch64 binaries run here through qemu; otherwise what stopped them."""
    if os.geteuid() != 0:
        return "registering binfmt and running systemd-nspawn need root"
    tools = missing_tools("qemu-aarch64-static", "debootstrap", "systemd-nspawn")
    if tools:
        return f"{', '.join(tools)} not installed (apt-get install qemu-user-static debootstrap systemd-container)"
    if not (BINFMT / "register").exists():
        mount = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], capture_output=True,
                               text=True)
        if mount.returncode != 0:
            return f"binfmt_misc cannot be mounted here ({mount.stderr.strip()}): the kernel or sandbox forbids it"
    if not ENTRY.exists() and shutil.which("update-binfmts"):
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], capture_output=True)
    if not ENTRY.exists():
        return "qemu-aarch64 could not be registered with binfmt_misc (update-binfmts --enable qemu-aarch64 failed)"
    text = ENTRY.read_text()
    if not text.startswith("enabled"):
        return "the qemu-aarch64 binfmt entry is disabled"
    if "F" not in next((line.split()[1] for line in text.splitlines() if line.startswith("flags:")), ""):
        return "the qemu-aarch64 binfmt entry lacks the F flag, so it cannot run inside a chroot"
    return None


def test_smoke_on_arm64_under_qemu(tmp_path, proved):
    problem = binfmt_problem()
    if problem:
        pytest.skip(f"arm64 check skipped: {problem}")
    started = time.monotonic()
    tarball = rootfs_tarball_arm64()
    wheel = build_wheel()
    wheels = wheelhouse("arm64", wheel)
    root = unpack(tarball, tmp_path / "arm64")
    prepared = time.monotonic()
    try:
        base = ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--pipe", "-D", str(root),
                f"--bind-ro={wheels}:/wheels", f"--bind-ro={ROOT / 'tests/system/inside'}:/checks"]
        assert run(*base, "uname", "-m").stdout.strip() == "aarch64"
        run(*base, "/usr/bin/python3", "-m", "venv", "/opt/edgeslm/venv")
        run(*base, "/opt/edgeslm/venv/bin/pip", "install", "-q", "--disable-pip-version-check", "--no-index",
            "--find-links", "/wheels", f"edgeslm[tflite] @ file:///wheels/{wheel.name}", timeout_s=3600)
        installed = time.monotonic()
        smoke = run(*base, "/opt/edgeslm/venv/bin/python", "/checks/smoke.py", timeout_s=1800)
        done = time.monotonic()
    finally:
        remove_tree(root)
    result = json.loads(smoke.stdout.strip().splitlines()[-1])
    print(json.dumps(result, indent=2))
    assert result["machine"] == "aarch64"
    for name in ("onnx", "tflite"):
        model = result["models"][name]
        assert model["label"] == "lights_on" and model["selfcheck"]["passed"], model
    proved(f"arm64 (qemu-user, Debian bookworm, Python {result['python']}): the wheel installs with aarch64 wheels of "
           f"its dependencies; {result['models']['onnx']['runtime']} and {result['models']['tflite']['runtime']} "
           f"load the bundled models (sha256 + self-check passed) and both classify the phrase as lights_on "
           f"(rootfs+wheels {prepared - started:.0f} s, pip install {installed - prepared:.0f} s, "
           f"smoke {done - installed:.0f} s)")


def rootfs_tarball_arm64() -> Path:
    return rootfs_tarball("arm64", packages=PACKAGES, name="python")
