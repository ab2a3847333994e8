"""`edgeslm serve`: run the daemon in the foreground."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeslm.errors import ConfigError


def models_from_flags(specs: Sequence[str], runtime: str, store_root: Path | None = None) -> list[Any]:
    """`--model [NAME=]PATH` entries as model configs (name defaults to the folder or file stem).

    PATH that does not exist but names a model pulled into the store (`store_root`) serves that.
    A bad entry (no path, a name the config would refuse, a name used twice) is a ConfigError naming it.
    """
    from pydantic import ValidationError

    from edgeslm.config import ModelConfig, describe_error

    models: list[Any] = []
    given: dict[str, str] = {}  # name -> the --model entry that took it
    for spec in specs:
        name, _, path = spec.partition("=") if "=" in spec else ("", "", spec)
        if not path.strip():
            raise ConfigError(f"--model {spec!r}: no path; give a model folder, a .onnx/.tflite file or a pulled "
                              "model's name, as PATH or NAME=PATH")
        path_obj = Path(path).expanduser()
        if not path_obj.exists() and store_root is not None and "/" not in path:
            from edgeslm.errors import StoreError
            from edgeslm.store import ModelStore

            try:
                path_obj = ModelStore(store_root).require(path)
            except StoreError as exc:
                raise ConfigError(f"--model {spec}: no such file or folder, and {exc}") from None
        if not path_obj.exists():
            raise ConfigError(f"--model {spec}: {path_obj} does not exist; give a model folder or a .onnx/.tflite file")
        stem = path_obj.name if path_obj.is_dir() else path_obj.stem
        try:
            model = ModelConfig(name=name or stem, path=path_obj.resolve(), runtime=runtime)
        except ValidationError as exc:
            why = "; ".join(describe_error(error) for error in exc.errors())
            hint = "" if name else " (the name comes from the folder or file; give one as NAME=PATH)"
            raise ConfigError(f"--model {spec}: {why}{hint}") from None
        if model.name in given:
            raise ConfigError(f"--model {spec}: the name {model.name!r} is already taken by --model "
                              f"{given[model.name]}; give each model its own name with NAME=PATH")
        given[model.name] = spec
        models.append(model)
    return models


def config_from(args: argparse.Namespace) -> Any:
    """The config file (or defaults) with the command line's overrides; read again on every reload."""
    from edgeslm.config import load_config

    config = load_config(args.config)
    updates: dict[str, Any] = {}
    if args.socket is not None:
        updates["server"] = config.server.model_copy(update={"socket_path": args.socket})
    if args.model:
        from edgeslm.store.location import store_dir

        root = args.store or store_dir(config.store.dir, os.environ)
        updates["models"] = models_from_flags(args.model, args.runtime, root)
    if args.log_level:
        updates["server"] = updates.get("server", config.server).model_copy(update={"log_level": args.log_level})
    return config.model_copy(update=updates) if updates else config


def cmd_serve(args: argparse.Namespace) -> int:
    from edgeslm.server.daemon import serve

    config = config_from(args)
    logging.getLogger().setLevel(config.server.log_level.upper())
    return serve(config, read_config=lambda: config_from(args))


def register(sub: argparse._SubParsersAction) -> None:
    from edgeslm.cli import FORMATTER

    serve = sub.add_parser(
        "serve", help="run the daemon in the foreground", formatter_class=FORMATTER,
        description="Load the configured models and answer on the Unix socket until Ctrl-C or SIGTERM,\n"
                    "which finish in-flight requests, close the models and remove the socket file.\n"
                    "SIGHUP (or `edgeslm reload`) re-reads the config and swaps changed models in place.\n"
                    "Under systemd it takes the socket systemd passes (LISTEN_FDS) and reports readiness,\n"
                    "status and watchdog pings to $NOTIFY_SOCKET.\n"
                    "A bad config exits with status 78; a model that fails to load is reported in /ready\n"
                    "and the others still serve.",
        epilog="examples:\n"
               "  edgeslm serve\n"
               "  edgeslm serve --socket /tmp/edgeslm.sock\n"
               "  edgeslm serve --model models/intents --model fast=models/intents/model.tflite\n"
               "  edgeslm serve --model minilm-l6        # a model pulled with `edgeslm pull minilm-l6`\n"
               "  edgeslm serve --config /etc/edgeslm/edgeslm.toml",
    )
    serve.add_argument("--config", type=Path, metavar="FILE",
                       help="TOML config (default /etc/edgeslm/edgeslm.toml if it exists, else built-in defaults)")
    serve.add_argument("--socket", type=Path, metavar="PATH", help="listen here instead of server.socket_path")
    serve.add_argument("--model", action="append", metavar="[NAME=]PATH",
                       help="serve this model folder or file instead of the config's models (repeatable); "
                            "a PATH that does not exist is looked up by name in the model store")
    serve.add_argument("--store", type=Path, metavar="DIR", help="model store for --model NAME (default: [store] dir)")
    serve.add_argument("--runtime", choices=["auto", "onnx", "tflite"], default="auto",
                       help="runtime for --model entries (default: by extension)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="override server.log_level")
    serve.set_defaults(func=cmd_serve)
