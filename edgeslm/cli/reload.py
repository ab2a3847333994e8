"""`edgeslm reload`: make the running daemon re-read its config and swap changed models, and say what it did."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgeslm.errors import ConfigError, EdgeslmError


class ReloadFailedError(EdgeslmError):
    """The daemon kept its previous config because the new one (or a model in it) was bad."""

    code = "reload_failed"


def cmd_reload(args: argparse.Namespace) -> int:
    from edgeslm.client import Client, DaemonError, find_socket

    client = Client(find_socket(args.socket, args.config), timeout_s=args.timeout)
    try:
        answer = client.request("POST", "/admin/reload")
    except DaemonError as exc:
        if exc.status == 422:
            # ConfigError keeps exit status 78, as for `edgeslm serve` with the same file.
            raise (ConfigError if exc.code == "bad_config" else ReloadFailedError)(exc.message) from None
        raise
    finally:
        client.close()
    print(json.dumps(answer, indent=2) if args.json else answer["summary"])
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from edgeslm.cli import FORMATTER

    reload = sub.add_parser(
        "reload", help="re-read the config and reload changed models without dropping requests",
        formatter_class=FORMATTER,
        description="Ask the running daemon to re-read its config file. Models whose settings or files\n"
                    "changed are loaded beside the old ones, switched in, and the old ones closed once their\n"
                    "requests are answered; unchanged models keep running. If the new config or any changed\n"
                    "model is bad, the daemon keeps serving the previous one and this command says why\n"
                    "(exit 78 for a bad config, 1 for a model that would not load).\n\n"
                    "It waits for the outcome, unlike `kill -HUP`, which does the same but can only log it.\n"
                    "Only root and the daemon's own user may reload (the daemon checks SO_PEERCRED).",
        epilog="examples:\n"
               "  sudo edgeslm reload\n"
               "  sudo systemctl reload edgeslm     # runs `edgeslm reload` as the service's user\n"
               "  edgeslm reload --socket run/edgeslm.sock --json",
    )
    reload.add_argument("--socket", type=Path, metavar="PATH",
                        help="daemon socket (default: as for `edgeslm models`)")
    reload.add_argument("--config", type=Path, metavar="FILE", help="config file to read the socket path from")
    reload.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                        help="how long to wait for big models to load (default 300)")
    reload.add_argument("--json", action="store_true", help="print the daemon's JSON answer")
    reload.set_defaults(func=cmd_reload)
