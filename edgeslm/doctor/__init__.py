"""`edgeslm doctor`: checks of the machine and the daemon's set-up, each explained, with a fix when it fails."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from edgeslm.doctor.host import check_audio, check_gpio, check_power, check_runtimes
from edgeslm.doctor.report import Context, Finding, Identity, render
from edgeslm.doctor.service import check_config, check_memory, check_models, check_socket, check_voice

# In order: config first, because the others read what it loaded.
CHECKS: dict[str, Callable[[Context], Finding]] = {
    "config": check_config,
    "runtimes": check_runtimes,
    "gpio": check_gpio,
    "audio": check_audio,
    "voice": check_voice,
    "power": check_power,
    "socket": check_socket,
    "models": check_models,
    "memory": check_memory,
}


def run_checks(ctx: Context, only: Iterable[str] | None = None) -> list[Finding]:
    wanted = set(only or CHECKS)
    findings = []
    for name, check in CHECKS.items():
        if name == "config" or name in wanted:
            finding = check(ctx)
            if name in wanted:
                findings.append(finding)
    return findings


__all__ = ["CHECKS", "Context", "Finding", "Identity", "render", "run_checks"]
