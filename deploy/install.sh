#!/usr/bin/env bash
# Install edgeslm as a systemd service on one Raspberry Pi (Raspberry Pi OS Bookworm, aarch64).
# Safe to run again: each step checks before it changes anything, and says which it did.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: sudo deploy/install.sh [options]
       sudo deploy/install.sh --uninstall [--purge]

Sets up edgeslm on this machine: the edgeslm user (groups gpio, audio), a virtualenv in
/opt/edgeslm/venv with the package and the GPIO library for the board (lgpio on a Pi 5,
RPi.GPIO on older Pis), the systemd units, a default /etc/edgeslm/edgeslm.toml (an existing
one is kept), and enables edgeslm.socket, so the first request starts the daemon.

options:
  --board auto|pi5|pi|other   board to install GPIO support for (default auto: /proc/device-tree/model);
                              pi means any Pi before the 5 (pi4, pi3, zero2 are accepted too)
  --source PATH               an edgeslm wheel or source folder (default: the checkout holding this script)
  --wheels DIR                install offline from this folder of wheels (pip --no-index --find-links)
  --no-start                  install and enable, but do not start the socket now
  --detect                    print the board and the GPIO library it would install, and exit
  --uninstall                 stop and remove the units and /opt/edgeslm (config, models, logs and user stay)
  --purge                     with --uninstall: also remove /etc/edgeslm, /var/lib/edgeslm, /var/log/edgeslm
                              and the edgeslm user and group
  -h, --help                  this help

examples:
  sudo deploy/install.sh
  sudo deploy/install.sh --board pi5 --wheels /media/usb/wheels --source /media/usb/edgeslm-0.1.0-py3-none-any.whl
  sudo deploy/install.sh --uninstall --purge
EOF
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
prefix=/opt/edgeslm
etc=/etc/edgeslm
unit_dir=/etc/systemd/system
dt_model=${EDGESLM_DT_MODEL:-/proc/device-tree/model}  # a test points this at a fixture file
board=auto source=$repo wheels="" start=1 action=install purge=0

while [ $# -gt 0 ]; do
    case $1 in
        --board) board=${2:?--board needs a value}; shift ;;
        --source) source=${2:?--source needs a path}; shift ;;
        --wheels) wheels=${2:?--wheels needs a folder}; shift ;;
        --no-start) start=0 ;;
        --uninstall) action=uninstall ;;
        --purge) purge=1 ;;
        --detect) action=detect ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 64 ;;
    esac
    shift
done

done_() { printf '  ok    %s\n' "$*"; }
changed() { printf '  +     %s\n' "$*"; }
fail() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }
systemd_running() { [ -d /run/systemd/system ]; }


detect_board() {
    # Pi 5 boards say "Raspberry Pi 5 Model B Rev 1.0" (and the CM5 "Raspberry Pi Compute Module 5").
    local model=""
    [ -r "$dt_model" ] && model=$(tr -d '\0' < "$dt_model")
    case $model in
        *"Raspberry Pi 5"*|*"Raspberry Pi Compute Module 5"*) echo pi5 ;;
        *"Raspberry Pi"*) echo pi ;;
        *) echo other ;;
    esac
}

gpio_package() {
    case $1 in
        pi5) echo "lgpio>=0.2" ;;        # the Pi 5's RP1 is only reachable through /dev/gpiochip*
        pi) echo "RPi.GPIO>=0.7" ;;
        other) echo "" ;;
        *) fail "--board $1: use auto, pi5, pi or other" ;;
    esac
}

pip_install() {
    local pip=("$prefix/venv/bin/pip" --disable-pip-version-check -q install)
    [ -n "$wheels" ] && pip+=(--no-index --find-links "$wheels")
    "${pip[@]}" "$@"
}

ensure_group() {
    if getent group "$1" >/dev/null; then done_ "group $1"; else groupadd --system "$1"; changed "created group $1"; fi
}

install_file() {  # install_file SRC DEST MODE: copy only when different; returns 0 if it changed
    if [ -f "$2" ] && cmp -s "$1" "$2"; then return 1; fi
    install -D -m "$3" "$1" "$2"
}

do_detect() {
    [ "$board" = auto ] && board=$(detect_board)
    echo "board: $board"
    echo "gpio: $(gpio_package "$board")"
}

do_install() {
    [ "$board" = auto ] && board=$(detect_board)
    local gpio
    gpio=$(gpio_package "$board")
    echo "edgeslm: installing for board '$board'${gpio:+ (GPIO: $gpio)}"

    if python3 -c 'import ensurepip, venv' 2>/dev/null; then
        done_ "python3 with venv"
    else
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        changed "installed python3-venv"
    fi
    if [ "$board" = pi ] && [ -z "$wheels" ] && ! command -v gcc >/dev/null; then
        # RPi.GPIO ships as source only: it is compiled on the Pi.
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc python3-dev >/dev/null
        changed "installed gcc and python3-dev to build RPi.GPIO"
    fi

    ensure_group edgeslm
    ensure_group gpio
    ensure_group audio
    if id edgeslm >/dev/null 2>&1; then
        done_ "user edgeslm"
    else
        useradd --system --gid edgeslm --home-dir /var/lib/edgeslm --no-create-home --shell /usr/sbin/nologin \
            --comment "edgeslm inference daemon" edgeslm
        changed "created user edgeslm"
    fi
    if id -nG edgeslm | tr ' ' '\n' | grep -qx gpio && id -nG edgeslm | tr ' ' '\n' | grep -qx audio; then
        done_ "edgeslm is in groups gpio, audio"
    else
        usermod -a -G gpio,audio edgeslm
        changed "added edgeslm to groups gpio, audio"
    fi

    if [ -x "$prefix/venv/bin/python" ]; then
        done_ "virtualenv $prefix/venv"
    else
        python3 -m venv "$prefix/venv"
        changed "created virtualenv $prefix/venv"
    fi
    local before after
    before=$("$prefix/venv/bin/pip" --disable-pip-version-check freeze 2>/dev/null | sha256sum)
    local spec=$source
    [ -d "$source" ] && spec="$source[tflite]" || spec="edgeslm[tflite] @ file://$(realpath "$source")"
    pip_install "$spec" ${gpio:+"$gpio"}
    after=$("$prefix/venv/bin/pip" --disable-pip-version-check freeze | sha256sum)
    local package_changed=0
    if [ "$before" = "$after" ]; then done_ "edgeslm package up to date"; else package_changed=1; changed "installed $("$prefix/venv/bin/edgeslm" --version)"; fi
    [ -f "$repo/README.md" ] && install_file "$repo/README.md" "$prefix/README.md" 0644 || true
    if [ "$(readlink /usr/local/bin/edgeslm 2>/dev/null)" = "$prefix/venv/bin/edgeslm" ]; then
        done_ "command /usr/local/bin/edgeslm"
    else
        ln -sfn "$prefix/venv/bin/edgeslm" /usr/local/bin/edgeslm
        changed "linked /usr/local/bin/edgeslm (edgeslm reload, doctor, listen, pull)"
    fi

    install -d -m 0750 -o root -g edgeslm "$etc"
    if [ -e "$etc/edgeslm.toml" ]; then
        done_ "config $etc/edgeslm.toml (kept as it is)"
    else
        install -m 0640 -o root -g edgeslm "$here/edgeslm.toml" "$etc/edgeslm.toml"
        changed "wrote default config $etc/edgeslm.toml"
    fi
    if ! "$prefix/venv/bin/edgeslm" doctor --config "$etc/edgeslm.toml" --only config >/dev/null 2>&1; then
        echo "  !     $etc/edgeslm.toml is not valid: run 'edgeslm doctor' to see why" >&2
    fi

    local units_changed=0
    for unit in edgeslm.socket edgeslm.service; do
        if install_file "$repo/systemd/$unit" "$unit_dir/$unit" 0644; then units_changed=1; changed "installed $unit_dir/$unit"
        else done_ "unit $unit"; fi
    done
    if systemd_running && [ $units_changed = 1 ]; then systemctl daemon-reload; fi

    if systemctl is-enabled --quiet edgeslm.socket 2>/dev/null; then
        done_ "edgeslm.socket enabled"
    else
        systemctl enable --quiet edgeslm.socket
        changed "enabled edgeslm.socket (starts with the system)"
    fi
    if ! systemd_running; then
        echo "edgeslm: installed; systemd is not running here, so nothing was started"
        return
    fi
    if [ $start = 1 ] && ! systemctl is-active --quiet edgeslm.socket; then
        systemctl start edgeslm.socket
        changed "started edgeslm.socket"
    fi
    if [ $((package_changed + units_changed)) -gt 0 ] && systemctl is-active --quiet edgeslm.service; then
        systemctl restart edgeslm.service
        changed "restarted edgeslm.service on the new version"
    fi
    if [ $start = 1 ] && command -v curl >/dev/null; then
        if curl -sf --max-time 300 --unix-socket /run/edgeslm/edgeslm.sock http://localhost/ready >/dev/null; then
            done_ "daemon answers: curl --unix-socket /run/edgeslm/edgeslm.sock http://localhost/ready"
        else
            echo "  !     the daemon is not ready: see 'journalctl -u edgeslm' and 'edgeslm doctor'" >&2
            exit 1
        fi
    fi
    echo "edgeslm: installed. Members of group edgeslm can use /run/edgeslm/edgeslm.sock (usermod -aG edgeslm USER)."
}

do_uninstall() {
    echo "edgeslm: uninstalling"
    if systemd_running; then
        systemctl disable --now --quiet edgeslm.socket edgeslm.service 2>/dev/null || true
    else
        systemctl disable --quiet edgeslm.socket edgeslm.service 2>/dev/null || true
    fi
    for unit in edgeslm.socket edgeslm.service; do
        if [ -e "$unit_dir/$unit" ]; then rm -f "$unit_dir/$unit"; changed "removed $unit_dir/$unit"; fi
    done
    systemd_running && systemctl daemon-reload
    if [ "$(readlink /usr/local/bin/edgeslm 2>/dev/null)" = "$prefix/venv/bin/edgeslm" ]; then
        rm -f /usr/local/bin/edgeslm; changed "removed /usr/local/bin/edgeslm"
    fi
    if [ -d "$prefix" ]; then rm -rf "$prefix"; changed "removed $prefix"; fi
    if [ $purge = 1 ]; then
        for dir in "$etc" /var/lib/edgeslm /var/log/edgeslm /var/lib/private/edgeslm; do
            if [ -e "$dir" ]; then rm -rf "$dir"; changed "removed $dir"; fi
        done
        if id edgeslm >/dev/null 2>&1; then userdel edgeslm; changed "removed user edgeslm"; fi
        if getent group edgeslm >/dev/null; then groupdel edgeslm; changed "removed group edgeslm"; fi
    else
        echo "  kept $etc, /var/lib/edgeslm, /var/log/edgeslm and the edgeslm user (--purge removes them)"
    fi
    echo "edgeslm: uninstalled"
}

[ "$action" = detect ] || [ "$(id -u)" -eq 0 ] || fail "run as root: sudo $0"
case $board in
    auto|pi5|other) ;;
    cm5) board=pi5 ;;
    pi|pi4|pi3|pi2|cm4|zero2|zero) board=pi ;;
    *) fail "--board $board: use auto, pi5, pi (pi4, pi3, zero2 ...) or other" ;;
esac
"do_$action"
