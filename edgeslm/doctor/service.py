"""Doctor checks of the daemon's own set-up: config, socket path, models and their checksums, memory."""

from __future__ import annotations

import os
import pwd
import socket
import tempfile
from pathlib import Path

from edgeslm.doctor.report import Context, Finding
from edgeslm.errors import ConfigError, ModelLoadError

BASELINE_BYTES = 150 * 1024 * 1024  # Python, numpy, a runtime and the HTTP stack, before any model
SYSTEMD_SOCKET_UNIT = "/etc/systemd/system/edgeslm.socket"
SYSTEMD_SERVICE_UNIT = "/etc/systemd/system/edgeslm.service"
EXITS_78 = "The daemon checks this at start-up and exits 78 without it; systemd does not retry."
SERVICE_STATE_DIR = "/var/lib/edgeslm"  # StateDirectory=edgeslm: the service's model store is in models/ there


def check_config(ctx: Context) -> Finding:
    """The file as `load_config` reads it, and the [access] group names serve resolves at start-up."""
    from edgeslm.config import load_config
    from edgeslm.server.access import AccessPolicy

    env = dict(ctx.env)
    if "STATE_DIRECTORY" not in env and ctx.path(SYSTEMD_SERVICE_UNIT).exists():
        env["STATE_DIRECTORY"] = SERVICE_STATE_DIR  # `store = "NAME"` models resolve as the service sees them
    try:
        ctx.config = load_config(ctx.config_path, env)
        AccessPolicy.from_config(ctx.config.access)
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
    if owner is None and ctx.config.server.socket_group is not None:
        refused = _socket_group_refused(ctx)
        if refused is not None:
            return refused
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


def _socket_group_refused(ctx: Context) -> Finding | None:
    """Bind a throwaway socket in a private temp folder with the mode and group serve gives its own.

    serve's `bind_unix_socket` looks the group up (and chowns the socket to it) at start-up and exits
    78 when the group does not exist; running the same function is the only way to agree with it.
    """
    from edgeslm.server.listen import bind_unix_socket

    server = ctx.config.server
    with tempfile.TemporaryDirectory(prefix="edgeslm-doctor-") as folder:
        try:
            bind_unix_socket(Path(folder) / "probe.sock", mode=server.socket_mode, group=server.socket_group).close()
        except ConfigError as exc:
            return Finding("socket", "fail", str(exc),
                           "The daemon sets up its socket with these settings at start-up and exits 78 when it "
                           "cannot; systemd does not retry.",
                           f"sudo groupadd {server.socket_group} and add the socket's users to it, or drop "
                           f"server.socket_group from {ctx.config_path or 'the config file'}")
        except OSError as exc:
            caller = pwd.getpwuid(os.geteuid()).pw_name
            status = "fail" if os.geteuid() == ctx.user.uid else "warn"  # tried as someone else than the daemon
            return Finding("socket", status, f"{caller} cannot give a socket to group {server.socket_group!r}: "
                           f"{exc.strerror}",
                           "The daemon hands its socket to server.socket_group at start-up; a user outside that "
                           "group (and not root) may not.",
                           f"sudo usermod -aG {server.socket_group} {ctx.user.name}, or drop server.socket_group")
    return None


def check_voice(ctx: Context) -> Finding:
    """With [[voice.intents]], what serve checks at start-up: the VAD model (opened and self-checked), the
    recogniser (every phrase's words) and the intent model. Every problem is listed, not just the first."""
    if ctx.config is None:
        return Finding("voice", "warn", "skipped: the config did not load")
    voice = ctx.config.voice
    if not voice.intents:
        return Finding("voice", "ok", "off (no [[voice.intents]])")
    problems = [p for p in (_vad_problem(ctx), _speech_problem(ctx), _intent_model_problem(ctx)) if p is not None]
    if len(problems) == 1:
        return problems[0]
    if problems:
        return Finding("voice", "fail", "; ".join(p.summary for p in problems), problems[0].explanation,
                       "; ".join(p.fix for p in problems if p.fix))
    return Finding("voice", "ok", f"{len(voice.intents)} intent(s); the VAD {ctx.path(voice.vad.model_path)} loads "
                   f"and passes its self-check; the recogniser knows every phrase's words; {voice.intent_model!r} "
                   f"resolves them by {voice.intent_method}")


def _vad_problem(ctx: Context) -> Finding | None:
    voice = ctx.config.voice
    path = ctx.path(voice.vad.model_path)
    try:
        if ctx.open_vad is not None:
            ctx.open_vad(path, voice.vad.threads).close()
        else:
            from edgeslm.server.edge import open_vad

            open_vad(voice, path).close()  # serve's own opening, so the two agree word for word
    except (ConfigError, ModelLoadError) as exc:
        store = voice.vad.model_path.parent.parent
        pull = (f"sudo edgeslm pull --store {store} silero-vad (the default model_path is the store's), or set "
                if voice.vad.model_path.parent.name == "silero-vad" else "set ")
        said = str(exc) if isinstance(exc, ConfigError) else f"voice.vad.model_path: {exc}"
        return Finding("voice", "fail", said, EXITS_78, pull + "[voice.vad] model_path to a Silero VAD 16 kHz .onnx")
    return None



def _speech_problem(ctx: Context) -> Finding | None:
    """serve's own recogniser, built from the config: pocketsphinx present, its model loads, every word known."""
    from edgeslm.errors import VoiceUnavailableError
    from edgeslm.voice.speech import PhraseRecognizer

    voice = ctx.config.voice
    speech = voice.speech
    if ctx.root != Path("/"):
        speech = speech.model_copy(update={key: ctx.path(value) for key in ("acoustic_model", "dictionary")
                                           if (value := getattr(speech, key)) is not None})
    try:
        PhraseRecognizer(voice.intents, speech, voice.sample_rate_hz)
    except VoiceUnavailableError as exc:
        return Finding("voice", "fail", f"voice: {exc}", EXITS_78, "pip install 'edgeslm[audio]' in the daemon's venv")
    except ConfigError as exc:
        return Finding("voice", "fail", str(exc), EXITS_78,
                       "fix the phrase or add the word under [voice.speech.pronunciations]")
    return None


def _intent_model_problem(ctx: Context) -> Finding | None:
    """voice.intent_model: a model the config serves whose card fits voice.intent_method, checked as serve does."""
    from edgeslm.tasks.card import locate_model
    from edgeslm.tasks.classify import read_labels
    from edgeslm.voice.intents import check_intent_model

    voice = ctx.config.voice
    entry = next((m for m in ctx.config.models if m.name == voice.intent_model), None)
    if entry is None or not entry.enabled:
        served = ", ".join(m.name for m in ctx.config.models if m.enabled) or "none"
        return Finding("voice", "fail", f"voice.intent_model {voice.intent_model!r} is not a served model "
                       f"(served: {served})",
                       "The daemon starts, but every voice command fails until that model is served.",
                       "set voice.intent_model to a served model, or add (or enable) its [[models]] entry")
    try:
        _, card = locate_model(ctx.path(entry.path), entry.runtime)
        labels: list[str] = []
        if voice.intent_method == "classify" and "classify" in card.model.tasks:
            labels_path = card.resolve(card.classify.labels)
            assert labels_path is not None
            labels = read_labels(labels_path)
        check_intent_model(voice.intent_method, entry.name, card.model.tasks, labels,
                           [intent.name for intent in voice.intents])
    except ModelLoadError:
        return None  # a model that does not load: the models check says why
    except ConfigError as exc:
        return Finding("voice", "fail", str(exc), EXITS_78,
                       "name each intent after one of the model's labels, or change voice.intent_method / "
                       "voice.intent_model")
    return None


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
