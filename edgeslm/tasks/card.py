"""The model card (model.toml): what a model folder holds and how to use it."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeslm.errors import ModelLoadError

CARD_NAME = "model.toml"
MODEL_FILES = ("model.onnx", "model.tflite")


class CardSection(BaseModel):
    # Cards are written by tools and people; unknown keys are kept, not fatal.
    model_config = ConfigDict(extra="allow", frozen=True)


class CardModel(CardSection):
    name: str | None = None
    description: str = ""
    tasks: tuple[Literal["classify", "embed", "tensors", "generate", "vad"], ...] = ("tensors",)
    license: str | None = None
    source: str | None = None
    max_seq_len: int = Field(512, ge=1)
    pad_id: int = 0
    tokenizer: str | None = None


class CardInputs(CardSection):
    input_ids: str = "input_ids"
    attention_mask: str | None = "attention_mask"
    token_type_ids: str | None = None


class CardClassify(CardSection):
    output: str = "logits"
    labels: str = "labels.txt"


class CardEmbed(CardSection):
    output: str = "last_hidden_state"
    pooling: Literal["mean", "cls", "none"] = "mean"
    normalize: bool = True


class CardFile(CardSection):
    runtime: str | None = None
    quantization: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None


class CardSelfCheck(CardSection):
    input: tuple[str, ...] = Field(min_length=1)
    output: str
    expected: tuple[tuple[float, ...], ...]
    min_cosine: float = Field(0.99, ge=-1, le=1)
    top1: bool = False


class ModelCard(CardSection):
    """Parsed model.toml; `folder` is where relative file names resolve."""

    folder: Path
    model: CardModel = Field(default_factory=CardModel)
    inputs: CardInputs = Field(default_factory=CardInputs)
    classify: CardClassify = Field(default_factory=CardClassify)
    embed: CardEmbed = Field(default_factory=CardEmbed)
    files: dict[str, CardFile] = Field(default_factory=dict)
    selfcheck: CardSelfCheck | None = None

    def file(self, path: Path) -> CardFile:
        return self.files.get(path.name, CardFile())

    def resolve(self, name: str | None) -> Path | None:
        return None if name is None else self.folder / name


def load_card(folder: Path) -> ModelCard:
    """Read `folder/model.toml`; a folder without one gets a bare card (raw tensors only)."""
    path = folder / CARD_NAME
    if not path.is_file():
        return ModelCard(folder=folder)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        return ModelCard.model_validate({**data, "folder": folder})
    except tomllib.TOMLDecodeError as exc:
        raise ModelLoadError(f"model card {path} is not valid TOML: {exc}") from None
    except ValidationError as exc:
        where = "; ".join(".".join(map(str, e["loc"])) + ": " + e["msg"] for e in exc.errors())
        raise ModelLoadError(f"model card {path} is invalid: {where}") from None


def locate_model(path: Path, runtime: str = "auto") -> tuple[Path, ModelCard]:
    """A model file and its card from a config path that names a folder or a file.

    A folder holding both files gives model.onnx, or model.tflite when `runtime` is "tflite".
    """
    path = Path(path)
    if path.is_dir():
        for name in sorted(MODEL_FILES, key=lambda n: not n.endswith(f".{runtime}")):
            if (path / name).is_file():
                return path / name, load_card(path)
        raise ModelLoadError(
            f"model folder {path} holds no {' or '.join(MODEL_FILES)}; pull the model again or fix its path"
        )
    if not path.exists():
        raise ModelLoadError(f"model path {path} does not exist; pull or copy the model there, or fix its path")
    return path, load_card(path.parent)


def sha256_of(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()
