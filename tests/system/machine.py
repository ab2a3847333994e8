"""Root file systems for the system tier: a cached debootstrap per architecture, wheels, nspawn and chroot runs."""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Debian trees and wheels, kept between runs (gitignored); CI points this outside its fresh clone.
CACHE = Path(os.environ.get("EDGESLM_SYSTEM_CACHE") or ROOT / ".cache" / "system")
ROOTFS_SCRIPT = Path(__file__).with_name("rootfs.sh")
DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
PIP_PLATFORMS = {  # manylinux tags a Debian bookworm (glibc 2.36) machine accepts, newest first
    "arm64": [f"manylinux_2_{v}_aarch64" for v in range(36, 16, -1)] + ["manylinux2014_aarch64", "linux_aarch64"],
}


def run(*args: str | Path, timeout_s: float = 1800, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout_s, **kwargs)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {result.returncode}:\n"
                             f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def missing_tools(*names: str) -> list[str]:
    return [name for name in names if shutil.which(name) is None]


def rootfs_tarball(arch: str, packages: str | None = None, name: str = "") -> Path:
    """The cached bookworm tarball for `arch`, built by rootfs.sh the first time (minutes, then seconds)."""
    # The script and package list are part of the name, so changing either builds a new tree.
    recipe = hashlib.sha256(ROOTFS_SCRIPT.read_bytes() + (packages or "").encode()).hexdigest()[:8]
    out = CACHE / f"bookworm-{arch}{'-' + name if name else ''}-{recipe}.tar.gz"
    run("bash", ROOTFS_SCRIPT, arch, out, *([packages] if packages else []), timeout_s=3600)
    return out


def build_wheel() -> Path:
    """A wheel of this checkout, as users would install it."""
    dist = CACHE / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, ROOT,
        timeout_s=600)
    return next(dist.glob("edgeslm-*.whl"))


def wheelhouse(arch: str, wheel: Path, extra: tuple[str, ...] = ()) -> Path:
    """Every dependency of `wheel` (+ extras) for Python 3.11 on `arch`, downloaded once per requirement set."""
    requirements = sorted(line.split(":", 1)[1].strip() for line in _metadata(wheel).splitlines()
                          if line.startswith("Requires-Dist:"))
    key = hashlib.sha256("\n".join([arch, *requirements, *extra]).encode()).hexdigest()[:12]
    folder = CACHE / f"wheels-{arch}-{key}"
    if not (folder / ".complete").exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        args = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", folder,
                f"edgeslm[tflite] @ {wheel.as_uri()}", *extra]
        if DEB_ARCH.get(platform.machine()) != arch:
            args += ["--python-version", "3.11", "--implementation", "cp"]
            for tag in PIP_PLATFORMS[arch]:
                args += ["--platform", tag]
        run(*args, timeout_s=1800)
        (folder / ".complete").touch()
    for old in folder.glob("edgeslm-*.whl"):
        old.unlink()
    shutil.copy2(wheel, folder)
    return folder


def add_wheel(folder: Path, arch: str, requirement: str) -> None:
    """One more wheel (no dependencies) for `arch` into a wheelhouse, e.g. an older version to fall back to."""
    args = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", folder,
            requirement]
    if DEB_ARCH.get(platform.machine()) != arch:
        args += ["--python-version", "3.11", "--implementation", "cp"]
        for tag in PIP_PLATFORMS[arch]:
            args += ["--platform", tag]
    run(*args, timeout_s=600)


def _metadata(wheel: Path) -> str:
    import zipfile

    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return archive.read(name).decode()


def unpack(tarball: Path, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball) as archive:
        archive.extractall(into, numeric_owner=True, filter="fully_trusted")
    return into


def remove_tree(path: Path) -> None:
    """rm -rf that refuses to cross into anything still mounted inside (a leftover /proc, say)."""
    mounted = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
               if line.split()[1].startswith(str(path) + "/")]
    for point in sorted(mounted, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


class Container:
    """A Debian tree run with systemd-nspawn: one-off commands, or booted with systemd as PID 1."""

    def __init__(self, root: Path, binds: dict[Path, str]):
        self.root, self.binds = root, binds

    def _base(self) -> list[str]:
        args = ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "-D", str(self.root)]
        for host, inside in self.binds.items():
            args.append(f"--bind-ro={host}:{inside}")
        return args

    def run(self, *command: str, timeout_s: float = 1800) -> subprocess.CompletedProcess:
        return run(*self._base(), "--pipe", *command, timeout_s=timeout_s)

    def boot(self, log: Path, timeout_s: float = 900) -> int:
        """Boot, let the units inside run until one calls `systemctl exit N`; returns N. Console output -> log."""
        with open(log, "wb") as out:
            process = subprocess.Popen([*self._base(), "--boot", "--console=pipe"], stdout=out,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            try:
                return process.wait(timeout_s)
            finally:
                if process.poll() is None:
                    process.terminate()  # nspawn then asks the container's systemd to power off
                    try:
                        process.wait(30)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()
