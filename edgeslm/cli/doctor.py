"""`edgeslm doctor`: is this machine ready to run the daemon, and if not, what to do about it."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgeslm.doctor import Identity

SERVICE_USER = "edgeslm"  # the system user deploy/install.sh creates for the service


def _user(name: str | None) -> Identity:
    """--user NAME must exist; without it, the service's user when this machine has one, else the caller."""
    from edgeslm.doctor import Identity
    from edgeslm.errors import ConfigError

    if name is None:
        return Identity.of(SERVICE_USER)
    try:
        return Identity.named(name)
    except KeyError:
        raise ConfigError(f"--user {name}: no such user on this system; give the user the daemon runs as "
                          f"(the service's is {SERVICE_USER!r}), or leave --user out to check as yourself") from None


def _root(root: Path) -> Path:
    from edgeslm.errors import ConfigError

    if not root.is_dir():
        raise ConfigError(f"--root {root}: no such directory; give the root of the file system to inspect "
                          "(a mounted SD card, say), or leave --root out for /")
    return root


def cmd_doctor(args: argparse.Namespace) -> int:
    from edgeslm.doctor import CHECKS, Context, render, run_checks
    from edgeslm.errors import ConfigError

    only = [name.strip() for name in args.only.split(",")] if args.only else None
    unknown = sorted(set(only or ()) - set(CHECKS))
    if unknown:
        raise ConfigError(f"--only {','.join(unknown)}: no such check; choose from {', '.join(CHECKS)}")
    ctx = Context(root=_root(args.root), config_path=args.config, user=_user(args.user))
    findings = run_checks(ctx, only)
    if args.json:
        print(json.dumps([asdict(f) for f in findings], indent=2))
        failed = sum(f.status == "fail" for f in findings)
    else:
        print(f"edgeslm doctor (permissions checked for user {ctx.user.name})")
        failed = render(findings, sys.stdout)[2]
    return 1 if failed else 0


def register(sub: argparse._SubParsersAction) -> None:
    from edgeslm.cli import FORMATTER
    from edgeslm.doctor import CHECKS

    doctor = sub.add_parser(
        "doctor", help="check this machine and the config, and say how to fix what is wrong",
        formatter_class=FORMATTER,
        description="Checks, each explained in plain words with a fix when it fails:\n"
                    "  config    the config file is valid, and its [access] groups exist\n"
                    "  runtimes  onnxruntime / LiteRT import, and work with the installed numpy\n"
                    "  gpio      /dev/gpiochip* exist, the daemon's user may open them, a GPIO library is installed\n"
                    "  audio     a capture device (microphone) is present and readable\n"
                    "  voice     with [[voice.intents]], the VAD model is there, loads and passes its self-check\n"
                    "  power     a power sensor (Pi 5 PMIC, INA2xx/INA3221, RAPL, battery gauge) is found\n"
                    "  socket    the socket path can be created (or systemd or a daemon owns it), and\n"
                    "            server.socket_group exists\n"
                    "  models    every enabled model is present and matches its card's sha256\n"
                    "  memory    available memory fits the models (and a reload of the largest)\n"
                    "Exits 1 if any check fails; warnings (no GPIO on a PC, say) do not fail.",
        epilog="examples:\n"
               "  edgeslm doctor\n"
               "  sudo edgeslm doctor --config /etc/edgeslm/edgeslm.toml --user edgeslm\n"
               "  edgeslm doctor --only gpio,audio --json\n"
               "  edgeslm doctor --root /mnt/sdcard      # inspect another root file system",
    )
    doctor.add_argument("--config", type=Path, metavar="FILE",
                        help="config to check (default: $EDGESLM_CONFIG, /etc/edgeslm/edgeslm.toml, built-ins)")
    doctor.add_argument("--user", metavar="NAME",
                        help="user whose permissions to check; must exist (default edgeslm if it exists, else you)")
    doctor.add_argument("--only", metavar="CHECKS", help=f"comma-separated subset of: {', '.join(CHECKS)}")
    doctor.add_argument("--root", type=Path, default=Path("/"), metavar="DIR",
                        help="read /dev, /proc and /sys under DIR instead of / (default /)")
    doctor.add_argument("--json", action="store_true", help="print the findings as JSON")
    doctor.set_defaults(func=cmd_doctor)
