"""Doctor checks of the machine: runtimes and numpy, GPIO, audio capture, power sensors."""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

from edgeslm.doctor.report import Context, Finding

# (import name, distribution for its version, what users call it)
RUNTIMES = (("onnxruntime", "onnxruntime", "onnxruntime"),
            ("ai_edge_litert.interpreter", "ai-edge-litert", "LiteRT"),
            ("tflite_runtime.interpreter", "tflite-runtime", "tflite-runtime"))
GPIO_LIBRARIES = ("lgpio", "RPi.GPIO", "gpiozero")


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "?"


def _numpy_trouble(error: BaseException) -> bool:
    text = str(error)
    return "numpy" in text.lower() or "_ARRAY_API" in text or "multiarray" in text


def check_runtimes(ctx: Context) -> Finding:
    import numpy

    working, broken = [], []
    for module, dist, label in RUNTIMES:
        try:
            ctx.import_module(module)  # importing is the check: the wrong numpy fails right here
        except ImportError as exc:
            if _numpy_trouble(exc):
                broken.append(f"{label} {_version(dist)} cannot run with numpy {numpy.__version__} ({exc})")
            continue
        except Exception as exc:  # a runtime's import can raise anything when its binary is wrong for the CPU
            broken.append(f"{label} fails to import: {exc}")
            continue
        working.append(f"{label} {_version(dist)}")
    needed = {m.runtime for m in (ctx.config.models if ctx.config else [])}
    has_onnx = any(w.startswith("onnxruntime") for w in working)
    has_tflite = any(not w.startswith("onnxruntime") for w in working)
    numpy_note = f"numpy {numpy.__version__}"
    if broken:
        return Finding("runtimes", "fail", "; ".join(broken),
                       "The runtime was built for another numpy major version (1.x vs 2.x) or another CPU.",
                       "pip install 'numpy<2' in the daemon's venv, or upgrade the runtime "
                       "(pip install -U onnxruntime ai-edge-litert)")
    if not has_onnx:
        return Finding("runtimes", "fail", f"onnxruntime is not installed ({numpy_note})",
                       "ONNX models, the default, cannot load without it.", "pip install onnxruntime")
    if not has_tflite:
        status = "fail" if "tflite" in needed else "warn"
        return Finding("runtimes", status, f"{working[0]} with {numpy_note}; no TFLite runtime",
                       ".tflite models cannot be served.", "pip install 'edgeslm[tflite]' (LiteRT)")
    return Finding("runtimes", "ok", f"{', '.join(working)} with {numpy_note}")


def board_model(ctx: Context) -> str:
    try:
        return ctx.path("/proc/device-tree/model").read_bytes().rstrip(b"\0").decode(errors="replace")
    except OSError:
        return ""


def check_gpio(ctx: Context) -> Finding:
    """Device nodes, their permissions for the daemon's user, and an importable library to drive them.

    A config naming its backend ([gpio] backend) gets that backend checked: serve exits 78 when it
    does not open, where "auto" falls back to the mock backend."""
    chips = sorted(ctx.path("/dev").glob("gpiochip*"))
    board = board_model(ctx)
    named = ctx.config.gpio.backend if ctx.config is not None and ctx.config.gpio.backend != "auto" else None
    if named == "mock":
        return Finding("gpio", "ok", '[gpio] backend = "mock": pins move only with `edgeslm gpio press`')
    if named is not None and not chips:
        return Finding("gpio", "fail", f"[gpio] backend = {named!r}, but there is no /dev/gpiochip*",
                       "The daemon opens the named backend at start-up and exits 78 when it cannot; systemd does "
                       "not retry.", 'set [gpio] backend = "auto" (or "mock") on a machine without GPIO')
    if not chips:
        if "Raspberry Pi" in board:
            return Finding("gpio", "fail", f"{board} but no /dev/gpiochip*",
                           "The GPIO character devices are missing, so buttons and outputs cannot work.",
                           "update the kernel (sudo apt full-upgrade) and reboot")
        return Finding("gpio", "warn", "no /dev/gpiochip* on this machine",
                       "Not a board with GPIO: triggers and outputs are off (the mock backend still works).")
    unusable = [c.name for c in chips if not ctx.user.can(c, os.R_OK | os.W_OK)]
    if unusable:
        return Finding("gpio", "fail", f"{ctx.user.name} cannot open {', '.join(unusable)}",
                       "The daemon's user needs read-write access to the GPIO chips (group gpio on Raspberry Pi OS).",
                       f"sudo usermod -aG gpio {ctx.user.name}, or a udev rule giving group gpio "
                       "mode 0660 on gpiochip*")
    libraries = [name for name in GPIO_LIBRARIES if ctx.module_present(name)]
    wanted = "lgpio" if "Raspberry Pi 5" in board else "RPi.GPIO or lgpio"
    if named is not None:
        wanted = {"lgpio": "lgpio", "rpigpio": "RPi.GPIO"}[named]
    if not any(lib in libraries for lib in wanted.split(" or ")):
        return Finding("gpio", "fail", f"{len(chips)} GPIO chip(s) but no GPIO library installed",
                       "The chips are there, but nothing in the venv can drive them.",
                       f"pip install {wanted.split(' or ')[0]} in the daemon's venv (deploy/install.sh does it)")
    found = f"{', '.join(c.name for c in chips)} usable by {ctx.user.name}; libraries: {', '.join(libraries)}"
    if ctx.root != Path("/") and ctx.open_gpio is None:
        return Finding("gpio", "ok", found + " (another root: not opened)")
    opened, why = _open_a_backend(ctx, (named,) if named else ("lgpio", "rpigpio"))
    if opened is None and named is not None:
        return Finding("gpio", "fail", f"{found}, but [gpio] backend = {named!r} does not open: {why}",
                       "The daemon opens the named backend at start-up and exits 78 when it cannot; systemd does "
                       "not retry.",
                       'run `edgeslm doctor` as the edgeslm user to see its own error, or set [gpio] backend = "auto"')
    if opened is None:
        return Finding("gpio", "fail", f"{found}, but no backend opens: {why}",
                       "The daemon would fall back to the mock backend: buttons and outputs would do nothing.",
                       "run `edgeslm doctor` as the edgeslm user to see its own error, and check the chip label "
                       "([gpio] chip)")
    return Finding("gpio", "ok", f"{found}; {opened} opens")


def _open_a_backend(ctx: Context, names: tuple[str, ...]) -> tuple[str | None, str]:
    """Open (and close) the first of `names` that works here, as the daemon would."""
    from edgeslm.errors import EdgeslmError

    opener = ctx.open_gpio
    if opener is None:
        from edgeslm.hw.gpio import open_backend

        chip = ctx.config.gpio.chip if ctx.config is not None else None
        opener = lambda name: open_backend(name, chip=chip)  # noqa: E731 - the daemon's own opener, with its chip
    reasons = []
    for name in names:
        try:
            backend = opener(name)
        except (EdgeslmError, OSError) as exc:
            reasons.append(f"{name}: {exc}")
            continue
        try:
            return f"{name} ({', '.join(f'{k} {v}' for k, v in backend.describe().items() if k != 'backend')})", ""
        finally:
            backend.close()
    return None, "; ".join(reasons)


def check_audio(ctx: Context) -> Finding:
    """A capture device, from /proc/asound/pcm (what `arecord -l` lists)."""
    try:
        pcm = ctx.path("/proc/asound/pcm").read_text()
    except OSError:
        return Finding("audio", "warn", "no sound devices (/proc/asound is missing)",
                       "Voice triggers need a microphone; everything else works without one.",
                       "plug in a USB microphone or a sound HAT, and check `arecord -l`")
    captures = [line.split(":")[1].strip() for line in pcm.splitlines() if "capture" in line]
    if not captures:
        return Finding("audio", "warn", "sound devices found, but none can record",
                       "Voice triggers need a capture device (a microphone).",
                       "plug in a USB microphone or a sound HAT, and check `arecord -l`")
    nodes = sorted(ctx.path("/dev/snd").glob("pcmC*c"))
    blocked = [n.name for n in nodes if not ctx.user.can(n, os.R_OK | os.W_OK)]
    if blocked:
        return Finding("audio", "fail", f"{ctx.user.name} cannot open {', '.join(blocked)}",
                       "The capture device exists but the daemon's user may not read it.",
                       f"sudo usermod -aG audio {ctx.user.name}")
    return Finding("audio", "ok", f"capture: {', '.join(captures)}")


def check_power(ctx: Context) -> Finding:
    """The daemon's own power-source detection (edgeslm.hw.power), as [metrics] configures it."""
    from edgeslm.hw.commands import run_command
    from edgeslm.hw.power import SOURCE_ORDER, detect_sources

    metrics = ctx.config.metrics if ctx.config is not None else None
    if metrics is not None and (not metrics.enabled or metrics.power_source == "none"):
        why = "metrics.enabled = false" if not metrics.enabled else 'metrics.power_source = "none"'
        return Finding("power", "ok", f"not measured ({why})")
    choice = metrics.power_source if metrics is not None else "auto"
    root = metrics.hw_root if metrics is not None and ctx.root == Path("/") else ctx.root
    probes = detect_sources(root, ctx.run or run_command, only=SOURCE_ORDER if choice == "auto" else (choice,),
                            idle_w=metrics.estimate_idle_w if metrics else None,
                            load_w=metrics.estimate_load_w if metrics else None)
    working = [p for p in probes if p.source is not None]
    skipped = "; ".join(f"{p.name}: {p.reason}" for p in probes if p.source is None)
    if not working:
        return Finding("power", "fail" if choice != "auto" else "warn",
                       f"no power source works here ({skipped})",
                       "Request and sample records will carry no energy figures.",
                       'set [metrics] power_source = "auto" (falls back to an estimate from CPU load)'
                       if choice != "auto" else "check that /proc/stat is readable")
    used = working[0]
    others = [p.name for p in working[1:] if p.name != "estimated"]
    also = f" (also found: {', '.join(others)})" if others else ""
    if used.name == "estimated":
        return Finding("power", "warn", f"no power meter found; energy is estimated - {used.reason}",
                       "Without a Pi 5 PMIC (vcgencmd), an INA2xx/INA3221 monitor, RAPL or a battery gauge, joules "
                       f"per request are an estimate from per-board constants ({skipped}).",
                       "on a Pi 5 install vcgencmd (raspi-utils); elsewhere add an INA219/INA3221 monitor")
    return Finding("power", "ok", f"measured by {used.reason}{also}")
