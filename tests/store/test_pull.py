"""Real pulls through the CLI: idempotency, the card's provenance and checksums, the catalogue listing, rm."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest

from edgeslm.tasks.card import sha256_of
from tests.store.conftest import edgeslm

pytestmark = pytest.mark.slow


def test_second_pull_does_no_work(store: Path):
    folder = store / "minilm-l6"
    inode, mtime = folder.stat().st_ino, (folder / "model.onnx").stat().st_mtime_ns
    done = edgeslm("pull", "minilm-l6", "silero-vad", "--store", str(store))
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("already pulled") == 2
    assert folder.stat().st_ino == inode and (folder / "model.onnx").stat().st_mtime_ns == mtime
    print("\n[proved] a second `edgeslm pull` of both models did no work and left the folders untouched")


@pytest.mark.parametrize("name", ["minilm-l6", "silero-vad"])
def test_card_records_source_and_checksums(store: Path, name: str):
    folder = store / name
    card = tomllib.loads((folder / "model.toml").read_text())
    assert card["source"]["recipe"] == name and card["source"]["package"] and card["source"]["version"]
    assert len(card["source"]["archive_sha256"]) == 64 and card["model"]["license"]
    for rel, entry in card["files"].items():
        assert sha256_of(folder / rel) == entry["sha256"] and (folder / rel).stat().st_size == entry["size_bytes"]
    model_files = [f for f in ("model.onnx", "model.tflite") if f in card["files"]]
    assert model_files and all(card["files"][f]["quantization"] for f in model_files)
    assert not [p for p in store.iterdir() if p.name.startswith(".partial-")]
    sizes = ", ".join(f"{f} {card['files'][f]['size_bytes'] / 1e6:.1f} MB" for f in model_files)
    print(f"\n[proved] {name}: card names {card['source']['package']}=={card['source']['version']}, "
          f"licence {card['model']['license']}, sha256 of {len(card['files'])} files verified ({sizes})")


def test_minilm_folder_has_both_formats_and_tokenizer(store: Path):
    folder = store / "minilm-l6"
    card = tomllib.loads((folder / "model.toml").read_text())
    assert card["model"]["tasks"] == ["embed"] and card["inputs"]["token_type_ids"] == "token_type_ids"
    assert card["embed"]["output"] == "last_hidden_state" and card["embed"]["pooling"] == "mean"
    assert (folder / "tokenizer.json").is_file()
    assert "b64_s16" in card["files"]["model.tflite"]["buckets"]
    for name in ("model.onnx", "model.tflite"):
        assert card["files"][name]["min_cosine_vs_fp32"] >= 0.99
        assert card["files"][name]["size_bytes"] < 40e6  # int8: the fp32 weights are 90 MB


def test_silero_vad_streams_like_its_card_says(store: Path):
    from edgeslm.tasks.vad import SileroVad, reference_signal

    folder = store / "silero-vad"
    card = tomllib.loads((folder / "model.toml").read_text())
    assert card["model"]["tasks"] == ["vad"] and card["vad"]["sample_rate_hz"] == 16000
    vad = SileroVad.open(folder / "model.onnx")  # runs the card's self-check too
    probs = vad.probabilities(reference_signal(card["vad_selfcheck"]["chunks"]))
    expected = np.array(card["vad_selfcheck"]["expected"])
    assert np.abs(probs - expected).max() <= card["vad_selfcheck"]["max_abs_error"]
    silence = vad.probabilities(np.zeros(16 * 512, np.float32))
    vad.close()
    assert silence.max() < 0.2 and probs.max() > 0.9
    print(f"\n[proved] silero-vad from the store: silence max p={silence.max():.3f}, voiced tone max "
          f"p={probs.max():.3f}, matches the card's reference within {np.abs(probs - expected).max():.4f}")


def test_models_available_lists_state_and_size(store: Path):
    done = edgeslm("models", "--available", "--store", str(store))
    assert done.returncode == 0, done.stderr
    lines = {line.split()[0]: line for line in done.stdout.splitlines() if line and not line.startswith("store:")}
    assert " pulled " in lines["minilm-l6"] and " MB " in lines["minilm-l6"]
    assert " pulled " in lines["silero-vad"]
    assert "smollm2-135m" in lines
    print("\n[proved] edgeslm models --available:\n" + done.stdout)


def test_rm_removes_a_pulled_model(store: Path, tmp_path: Path):
    other = tmp_path / "store"
    shutil.copytree(store / "silero-vad", other / "silero-vad")
    done = edgeslm("rm", "silero-vad", "--store", str(other))
    assert done.returncode == 0 and "removed silero-vad" in done.stdout
    assert not (other / "silero-vad").exists()
    again = edgeslm("rm", "silero-vad", "--store", str(other))
    assert again.returncode == 1 and "edgeslm pull silero-vad" in again.stderr
