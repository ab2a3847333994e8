"""The `edgeslm` command. Each module here registers its subcommands; only the CLI turns errors into exit codes."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from edgeslm import __version__
from edgeslm.errors import ConfigError, DaemonUnreachableError, EdgeslmError, SocketInUseError

EX_CONFIG = 78  # sysexits: systemd's RestartPreventExitStatus=78 keeps a bad config from restart-looping
EX_UNAVAILABLE = 69
FORMATTER = argparse.RawDescriptionHelpFormatter

# Modules with a `register(subparsers)` function, in the order their commands appear in --help.
COMMAND_MODULES = (
    "edgeslm.cli.serve",
    "edgeslm.cli.query",
    "edgeslm.cli.edge",
    "edgeslm.cli.store",
    "edgeslm.cli.quantize",
    "edgeslm.cli.stats",
    "edgeslm.cli.generate",
    "edgeslm.cli.reload",
    "edgeslm.cli.doctor",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeslm", formatter_class=FORMATTER,
        description="On-device inference for small quantized models (ONNX, TFLite) over a Unix socket.",
        epilog="examples:\n"
               "  edgeslm serve                          # bundled 'intents' model on ./run/edgeslm.sock\n"
               "  edgeslm classify \"turn on the kitchen light\"\n"
               "  edgeslm models\n"
               "  curl --unix-socket run/edgeslm.sock http://localhost/v1/models\n\n"
               "Settings come from /etc/edgeslm/edgeslm.toml (or --config / $EDGESLM_CONFIG); any key can be\n"
               "overridden as EDGESLM_<SECTION>_<KEY>, e.g. EDGESLM_SERVER_SOCKET_PATH=/tmp/e.sock.\n"
               "Run `edgeslm COMMAND --help` for each command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"edgeslm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _exit_code(exc: EdgeslmError) -> int:
    if isinstance(exc, ConfigError):
        return EX_CONFIG
    if isinstance(exc, (DaemonUnreachableError, SocketInUseError)):
        return EX_UNAVAILABLE
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.command == "serve" else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except EdgeslmError as exc:
        print(f"edgeslm {args.command}: {exc}", file=sys.stderr)
        return _exit_code(exc)
    except KeyboardInterrupt:
        return 130
