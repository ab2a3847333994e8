#!/usr/bin/env bash
# Fetch (once) a newer static qemu-aarch64 from Debian bookworm-backports: qemu-user.sh OUT_DIR
# Bookworm's own qemu-user 7.2 crashes on current onnxruntime and LiteRT wheels; 10.x runs them.
# apt runs with private lists and cache, so the machine's apt configuration is left as it is.
set -euo pipefail
out=$1
[ -x "$out/qemu-aarch64" ] && { echo "qemu-user: $("$out/qemu-aarch64" --version | head -n1) (cached in $out)"; exit 0; }
mirror=${DEBIAN_MIRROR:-$(grep -rhoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
         | grep -oE 'https?://[^ ]+' | head -n1 || true)}
mirror=${mirror:-http://deb.debian.org/debian}
work=$(mktemp -d "${TMPDIR:-/tmp}/edgeslm-qemu.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
echo "deb $mirror bookworm-backports main" > "$work/sources.list"
apt_opts=(-q -o Dir::Etc::SourceList="$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o Dir::State::Lists="$work/lists" -o Dir::Cache="$work/cache" -o APT::Sandbox::User=root)
apt-get "${apt_opts[@]}" update >/dev/null
(cd "$work" && apt-get "${apt_opts[@]}" download qemu-user/bookworm-backports >/dev/null)
dpkg-deb -x "$work"/qemu-user_*.deb "$work/x"
mkdir -p "$out"
install -m 0755 "$work/x/usr/bin/qemu-aarch64" "$out/qemu-aarch64"
echo "qemu-user: $("$out/qemu-aarch64" --version | head -n1) in $out"
