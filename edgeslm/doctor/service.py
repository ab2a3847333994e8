"""Doctor checks of the daemon's own set-up: config, socket path, models and their checksums, memory."""

from __future__ import annotations

import os
import socket

from edgeslm.doctor.report import Context, Finding
from edgeslm.errors import ConfigError, ModelLoadError

BASELINE_BYTES = 150 * 1024 * 1024  # Python, numpy, a runtime and the HTTP stack, before any model
SYSTEMD_SOCKET_UNIT = "/etc/systemd/system/edgeslm.socket"
SYSTEMD_SERVICE_UNIT = "/etc/systemd/system/edgeslm.service"
SERVICE_STATE_DIR = "/var/lib/edgeslm"  # StateDirectory=edgeslm: the service's model store is in models/ there


def check_config(ctx: Context) -> Finding:
    from edgeslm.config import load_config

    env = dict(ctx.env)
    if "STATE_DIRECTORY" not in env and ctx.path(SYSTEMD_SERVICE_UNIT).exists():
        env["STATE_DIRECTORY"] = SERVICE_STATE_DIR  # `store = "NAME"` models resolve as the service sees them
    try:
        ctx.config = load_config(ctx.config_path, env)
    except ConfigError as exc:
        ctx.config_error = str(exc)
        return Finding("config", "fail", " ".join(line.strip() for line in str(exc).splitlines()),
                       "The daemon refuses to start with this config (exit 78) and systemd does not retry.",
                       "fix the keys named above in " + str(ctx.config_path or "the config file")
                       + "; README.md describes every key")
    models = [m.name for m in ctx.config.models if m.enabled]
    where = ctx.config_path or os.environ.get("EDGESLM_CONFIG") or "built-in defaults"
    return Finding("config", "ok", f"{where}: {len(models)} model(s) enabled ({', '.join(models) or 'none'})")


def check_socket(ctx: Context) -> Finding:
    if ctx.config is None:
        return Finding("socket", "warn", "skipped: the config did not load")
    path = ctx.path(ctx.config.server.socket_path)
    if ctx.path(SYSTEMD_SOCKET_UNIT).exists() and str(ctx.config.server.socket_path).startswith("/run/edgeslm/"):
        owner = "systemd creates it (edgeslm.socket)"
    else:
        owner = None
    if path.exists():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(2)
        try:
            probe.connect(str(path))
            return Finding("socket", "ok", f"{path}: a daemon is listening")
        except OSError:
            pass
        finally:
            probe.close()
        if owner:
            return Finding("socket", "ok", f"{path}: {owner}")
    elif owner:
        return Finding("socket", "ok", f"{path}: {owner} when edgeslm.socket starts")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if ctx.user.can(parent, os.W_OK | os.X_OK):
        return Finding("socket", "ok", f"{path}: {ctx.user.name} can create it in {parent}")
    return Finding("socket", "fail", f"{ctx.user.name} cannot create {path} ({parent} is not writable)",
                   "The daemon binds its socket at start-up and stops if it cannot.",
                   f"choose a writable server.socket_path, or: sudo install -d -o {ctx.user.name} {path.parent}")


def _model_files(ctx: Context) -> tuple[list[tuple[str, str, int]], list[str]]:
    """(name, description, bytes) of every enabled model that is present and intact, and a problem per other one.

    A model's files are its model file and, for models that keep weights beside it (generation models),
    that data file; each is checked against the sha256 in model.toml.
    """
    from edgeslm.tasks.card import locate_model, sha256_of

    good, problems = [], []
    for model in ctx.config.models:
        if not model.enabled:
            continue
        where = ctx.path(model.path)
        try:
            path, card = locate_model(where, model.runtime)
            entry = card.file(path)
        except ModelLoadError as exc:
            if model.store:
                problems.append(f"{model.name}: {model.store!r} is not pulled into the model store {model.path.parent}"
                                f"; run `sudo edgeslm pull --store {model.path.parent} {model.store}`")
            else:
                problems.append(f"{model.name}: {exc}")
            continue
        extra = entry.model_extra or {}
        files = [(path, entry.sha256)]
        if extra.get("data_file"):
            files.append((path.parent / str(extra["data_file"]), extra.get("data_sha256")))
        missing = [f.name for f, _ in files if not f.is_file()]
        altered = [f.name for f, sha in files if f.is_file() and sha and model.verify_sha256 and sha256_of(f) != sha]
        if missing or altered:
            problems += [f"{model.name}: {name} is missing" for name in missing]
            problems += [f"{model.name}: {name} does not match the sha256 in its model.toml" for name in altered]
            continue
        origin = f"store {model.store}, " if model.store else ""
        size = sum(f.stat().st_size for f, _ in files)
        good.append((model.name, f"{origin}{', '.join(f.name for f, _ in files)}", size))
    return good, problems


def check_models(ctx: Context) -> Finding:
    if ctx.config is None:
        return Finding("models", "warn", "skipped: the config did not load")
    good, problems = _model_files(ctx)
    if problems:
        return Finding("models", "fail", "; ".join(problems),
                       "A missing or altered model file is not served; /ready stays 503 until it is fixed.",
                       "copy the model folder again (or `edgeslm pull NAME`), or fix the model's path in the config")
    if not good:
        return Finding("models", "warn", "no model is enabled", "The daemon would answer but serve nothing.",
                       "add a [[models]] entry, or remove [[models]] to serve the bundled one")
    return Finding("models", "ok", ", ".join(f"{n} ({what}, {b / 1e6:.1f} MB, checksum ok)" for n, what, b in good))


def _available_bytes(ctx: Context) -> int | None:
    try:
        for line in ctx.path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(ctx: Context) -> Finding:
    available = _available_bytes(ctx)
    if available is None:
        return Finding("memory", "warn", "cannot read MemAvailable from /proc/meminfo")
    models = _model_files(ctx)[0] if ctx.config is not None else []
    largest = max((b for _, _, b in models), default=0)
    need = BASELINE_BYTES + sum(b for _, _, b in models)
    mb = 1024 * 1024
    summary = (f"{available // mb} MB available; the models need about {need // mb} MB "
               f"(+{largest // mb} MB while the largest reloads)")
    if available < need:
        return Finding("memory", "fail", summary,
                       "The models will not fit next to the system: loading fails or the kernel kills the daemon.",
                       "serve fewer or smaller (quantized) models, stop other services, or add swap (dphys-swapfile)")
    if available < need + largest:
        return Finding("memory", "warn", summary,
                       "A reload loads a changed model before freeing the old one; that may not fit.",
                       "restart instead of reloading to change the largest model, or free some memory")
    return Finding("memory", "ok", summary)
