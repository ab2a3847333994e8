"""Running vcgencmd (and recorded outputs of it, for tests and for boards without it)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from edgeslm.errors import SensorError

# args -> stdout; raises SensorError when the command is missing, fails or hangs.
CommandRunner = Callable[[Sequence[str]], str]

VCGENCMD_PATHS = ("/usr/bin/vcgencmd", "/opt/vc/bin/vcgencmd")


def run_command(args: Sequence[str], timeout_s: float = 2.0) -> str:
    """Run a short hardware query and return its stdout."""
    program = shutil.which(args[0]) or next((p for p in VCGENCMD_PATHS if args[0] == "vcgencmd"
                                             and Path(p).exists()), None)
    if program is None:
        raise SensorError(f"{args[0]} is not installed")
    try:
        done = subprocess.run([program, *args[1:]], capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise SensorError(f"`{' '.join(args)}` did not answer within {timeout_s:g} s") from None
    except OSError as exc:
        raise SensorError(f"cannot run {args[0]}: {exc.strerror or exc}") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SensorError(f"`{' '.join(args)}` failed with status {done.returncode}: {detail[0]}")
    return done.stdout


class RecordedCommands:
    """A CommandRunner that answers from recorded outputs: `outputs["vcgencmd pmic_read_adc"] = text`.

    `from_dir(folder)` reads `<folder>/vcgencmd/<subcommand>.txt` files, the layout of tests/fixtures/hw.
    A command with no recording fails as a missing program would. `calls` lists every command asked.
    """

    def __init__(self, outputs: Mapping[str, str] | None = None):
        self.outputs = dict(outputs or {})
        self.calls: list[str] = []

    @classmethod
    def from_dir(cls, folder: Path) -> RecordedCommands:
        outputs = {}
        for path in sorted(Path(folder).glob("*/*.txt")):
            outputs[f"{path.parent.name} {path.stem.replace('__', ' ')}"] = path.read_text(encoding="utf-8")
        return cls(outputs)

    def __call__(self, args: Sequence[str]) -> str:
        key = " ".join(args)
        self.calls.append(key)
        if key not in self.outputs:
            raise SensorError(f"{args[0]} is not installed (no recording of `{key}`)")
        return self.outputs[key]
