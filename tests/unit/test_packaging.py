"""The wheel carries every package and the bundled model; the daemon's path stays free of heavy imports."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "edgeslm").rglob("__init__.py")}
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"


def test_serving_imports_nothing_heavy():
    code = ("import sys, edgeslm.server.daemon, edgeslm.runtime.onnx, edgeslm.runtime.tflite, edgeslm.cli;"
            "print(','.join(m for m in ('torch', 'tensorflow', 'transformers', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"heavy modules on the daemon's path: {out}"
