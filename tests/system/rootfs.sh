#!/usr/bin/env bash
# Build (once) a minimal Debian bookworm root file system as a tarball: rootfs.sh ARCH OUT.tar.gz [PACKAGES]
# The mirror is the one this machine's apt uses, so it works wherever `apt-get install` does.
set -euo pipefail
arch=$1 out=$2 packages=${3:-systemd,systemd-sysv,dbus,python3,python3-venv,curl,procps,iproute2,ca-certificates,sudo}
[ -s "$out" ] && { echo "rootfs: cached $out"; exit 0; }
mirror=${DEBIAN_MIRROR:-$(grep -rhoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
         | grep -oE 'https?://[^ ]+' | head -n1 || true)}
mirror=${mirror:-http://deb.debian.org/debian}
work=$(mktemp -d "${TMPDIR:-/tmp}/edgeslm-rootfs.XXXXXX")
# debootstrap mounts /proc and /sys inside; never let rm wander into them if it stopped half-way.
trap 'umount -R "$work/root/proc" "$work/root/sys" 2>/dev/null || true; rm -rf --one-file-system "$work"' EXIT
echo "rootfs: debootstrap bookworm $arch from $mirror (one-off, a few minutes)"
debootstrap --variant=minbase --arch="$arch" --include="$packages" bookworm "$work/root" "$mirror" \
    > "$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log"; exit 1; }
rm -rf "$work/root"/var/cache/apt/archives/*.deb "$work/root"/var/lib/apt/lists/*_Packages
mkdir -p "$(dirname "$out")"
tar -C "$work/root" --numeric-owner -czf "$out.part" . && mv "$out.part" "$out"
echo "rootfs: wrote $out ($(du -h "$out" | cut -f1))"
