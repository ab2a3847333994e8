"""The package on arm64 (the Pi's architecture): an arm64 bookworm run through qemu-user (binfmt), installing
the wheel with its aarch64 dependencies and running the foundation's smoke test there."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.system.machine import (
    CACHE,
    ROOT,
    add_wheel,
    build_wheel,
    missing_tools,
    remove_tree,
    rootfs_tarball,
    run,
    unpack,
    wheelhouse,
)

BINFMT = Path("/proc/sys/fs/binfmt_misc")
ENTRY = BINFMT / "qemu-aarch64"
PACKAGES = "python3,python3-venv,ca-certificates"
QEMU_FETCH = Path(__file__).with_name("qemu-user.sh")
QEMU_CRASH = "qemu: uncaught target signal"
# Bookworm's qemu-user 7.2 crashes (then hangs) on onnxruntime >= 1.28 and ai-edge-litert >= 2.2; these run on it.
# They are used only if bookworm-backports' qemu 10, which runs the current wheels, cannot be fetched.
OLD_QEMU_PINS = ("onnxruntime<1.28", "ai-edge-litert<2.2")


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


def newer_qemu() -> tuple[Path | None, str]:
    """bookworm-backports' static qemu-aarch64 (cached), or None and why not."""
    folder = CACHE / "qemu-user"
    result = subprocess.run(["bash", str(QEMU_FETCH), str(folder)], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        return None, (result.stderr or result.stdout).strip()[-300:]
    return folder / "qemu-aarch64", result.stdout.strip()


def kill_tree(pid: int) -> None:
    """SIGKILL a process and everything under it (killing only nspawn would orphan a hung emulator)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, found = [pid], []
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    for victim in reversed(found):
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)


def run_emulated(command: list[str], timeout_s: float = 1800) -> str:
    """Run under emulation; fail at once if qemu reports a crash (it then hangs instead of exiting)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    lines, deadline = [], time.monotonic() + timeout_s
    for line in process.stdout:
        lines.append(line.rstrip())
        if QEMU_CRASH in line or time.monotonic() > deadline:
            kill_tree(process.pid)
            process.wait()
            raise AssertionError(f"the emulator crashed or timed out: {line.strip()}\n" + "\n".join(lines[-20:]))
    assert process.wait() == 0, "\n".join(lines[-30:])
    return "\n".join(lines)


def test_smoke_on_arm64_under_qemu(tmp_path, proved):
    problem = binfmt_problem()
    if problem:
        pytest.skip(f"arm64 check skipped: {problem}")
    started = time.monotonic()
    tarball = rootfs_tarball("arm64", packages=PACKAGES, name="python")
    wheel = build_wheel()
    wheels = wheelhouse("arm64", wheel)
    emulator, emulator_note = newer_qemu()
    pins: tuple[str, ...] = ()
    if emulator is None:
        pins = OLD_QEMU_PINS
        for pin in pins:
            add_wheel(wheels, "arm64", pin)
        emulator_note = (f"bookworm-backports' qemu could not be fetched ({emulator_note}); ran on bookworm's "
                         f"qemu 7.2 with {', '.join(pins)}")
    print(emulator_note)
    root = unpack(tarball, tmp_path / "arm64")
    prepared = time.monotonic()
    try:
        base = ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--pipe", "-D", str(root),
                f"--bind-ro={wheels}:/wheels", f"--bind-ro={ROOT / 'tests/system/inside'}:/checks"]
        assert run(*base, "uname", "-m").stdout.strip() == "aarch64"
        run(*base, "/usr/bin/python3", "-m", "venv", "/opt/edgeslm/venv")
        run(*base, "/opt/edgeslm/venv/bin/pip", "install", "-q", "--disable-pip-version-check", "--no-index",
            "--find-links", "/wheels", f"edgeslm[tflite] @ file:///wheels/{wheel.name}", *pins, timeout_s=3600)
        interpreter: list[str] = []
        if emulator is not None:  # an x86 static binary: runs natively in the tree and emulates what it is given
            shutil.copy2(emulator, root / "usr/local/bin/qemu-aarch64")
            interpreter = ["/usr/local/bin/qemu-aarch64"]
        installed = time.monotonic()
        output = run_emulated([*base, *interpreter, "/opt/edgeslm/venv/bin/python", "/checks/smoke.py"])
        done = time.monotonic()
    finally:
        remove_tree(root)
    result = json.loads(next(line for line in reversed(output.splitlines()) if line.startswith("{")))
    print(json.dumps(result, indent=2))
    assert result["machine"] == "aarch64"
    for name in ("onnx", "tflite"):
        model = result["models"][name]
        assert model["label"] == "lights_on" and model["selfcheck"]["passed"], model
    proved(f"arm64 (Debian bookworm, Python {result['python']}, {emulator_note.removeprefix('qemu-user: ')}): "
           f"the wheel installs with aarch64 wheels of its dependencies; {result['models']['onnx']['runtime']} and "
           f"{result['models']['tflite']['runtime']} load the bundled models (sha256 + self-check passed) and both "
           f"classify the phrase as lights_on (rootfs+wheels {prepared - started:.0f} s, install "
           f"{installed - prepared:.0f} s, smoke {done - installed:.0f} s)")
