"""Shared fixtures: a fake model folder (real tokenizer, fake engine) and paths to the bundled model."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

ROOT = Path(__file__).resolve().parent.parent
INTENTS = ROOT / "models" / "intents"
WORDS = ["[PAD]", "[UNK]", "turn", "on", "off", "the", "light", "volume", "up", "down", "what", "time", "is", "it",
         "please", "kitchen", "a", "b", "c"]


@pytest.fixture
def fake_model_dir(tmp_path: Path) -> Path:
    """A model folder whose tokenizer is real (word-level) and whose card enables classify and embed."""
    folder = tmp_path / "fake-model"
    folder.mkdir()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "labels.txt").write_text("alpha\nbeta\ngamma\ndelta\n")
    (folder / "model.toml").write_text(
        '[model]\nname = "fake"\ntasks = ["classify", "embed"]\nmax_seq_len = 8\npad_id = 0\n'
        'tokenizer = "tokenizer.json"\n[classify]\noutput = "logits"\nlabels = "labels.txt"\n'
        '[embed]\noutput = "hidden"\npooling = "mean"\nnormalize = true\n'
    )
    (folder / "model.onnx").write_bytes(b"not used by the fake engine")
    return folder


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self) -> None:
        self.now = 0.0
        self._ticks = itertools.count()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tiny_fs(tmp_path: Path):
    """A 64 KiB tmpfs mounted in tmp_path: a real full disk. Needs root and mount(2); skips (saying why) otherwise."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tiny tmpfs here ({done.stderr.strip() or 'not root'}); "
                    "tests/unit/test_metrics_files.py covers a full disk with RLIMIT_FSIZE")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory) -> Path:
    """A real converted model folder (ONNX + tokenizer + card) from a tiny random Llama GGUF."""
    from tests.tinyllama import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("llm") / "tiny")
