"""Request and response bodies of the HTTP API; /openapi.json is generated from these."""

from __future__ import annotations

import types
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field

Texts = str | list[str]


class Request(BaseModel):
    # Strict: "top_k": "3" is a client bug worth telling about, not something to guess at.
    model_config = ConfigDict(extra="forbid", strict=True)


class OpenAIRequest(BaseModel):
    # A field edgeslm does not know is a 400 naming it (as for every other body); `user`, which OpenAI clients
    # may send, is accepted and ignored.
    model_config = ConfigDict(extra="forbid", strict=True)

    user: str | None = Field(None, description="accepted and ignored: an end-user id for the caller's logs")


class ClassifyRequest(Request):
    """Label one text or a list of texts."""

    model: str | None = Field(None, description="model name; default: the first loaded model that classifies")
    input: Texts = Field(description="a text, or a list of texts")
    top_k: int = Field(3, ge=1, le=100, description="how many labels to return per text, best first")
    truncate: bool = Field(True, description="cut texts longer than the model takes (flagged) instead of 400")


class LabelScore(BaseModel):
    label: str
    score: float = Field(description="softmax probability, 0..1")


class Classification(BaseModel):
    index: int = Field(description="position of the text in the request")
    label: str = Field(description="the best label")
    score: float
    top: list[LabelScore]
    truncated: bool = Field(description="true when the text was cut to the model's max_seq_len")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class ClassifyResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[Classification]
    usage: Usage


class EmbeddingsRequest(OpenAIRequest):
    """OpenAI-compatible embeddings request."""

    model: str = Field(description="model name (any loaded model that serves embed)")
    input: Texts = Field(description="a text, or a list of texts")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="float: JSON numbers; base64: little-endian float32 bytes"
    )
    dimensions: int | None = Field(None, ge=1, description="must equal the model's size if given")
    truncate: bool = Field(True, description="edgeslm extension: cut over-long texts instead of 400")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="floats, or base64 of float32 when asked")
    truncated: bool = False


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[Embedding]
    usage: Usage


class InferInput(Request):
    """One named tensor, KServe v2."""

    name: str
    shape: list[int]
    datatype: str = Field(description="BOOL, UINT8, INT8, INT16, INT32, INT64, FP16, FP32 or FP64")
    parameters: dict[str, Any] | None = Field(None, description="binary_data_size when the data follows the JSON")
    data: list[Any] | None = Field(None, description="values in row-major order, flat or nested")


class InferOutputRequest(Request):
    name: str
    parameters: dict[str, Any] | None = Field(None, description="binary_data: true to get raw bytes")


class InferRequest(Request):
    """KServe v2 inference request."""

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferInput] = Field(min_length=1)
    outputs: list[InferOutputRequest] | None = Field(None, description="which outputs to return (default all)")


class InferOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    id: str | None = None
    outputs: list[InferOutput]


class TensorMetadata(BaseModel):
    name: str
    datatype: str = Field(description="BOOL, UINT8, INT8, INT16, INT32, INT64, FP16, FP32 or FP64")
    shape: list[int] = Field(description="-1 where the model takes any size")


class ModelMetadata(BaseModel):
    """KServe v2 model metadata: what POST /v2/models/{name}/infer takes and gives."""

    name: str
    platform: str = Field(description="the runtime that serves the model: onnx, tflite, ...")
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "edgeslm"
    state: Literal["ready", "failed"]
    tasks: list[str] = []
    runtime: str | None = None
    quantization: str | None = None
    file_size_bytes: int | None = None
    error: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelInfo]


class Health(BaseModel):
    status: Literal["ok"]
    version: str


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    models: dict[str, dict[str, Any]] = Field(description="per model: state, and error when it failed")


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable reason, e.g. invalid_input, model_not_found, overloaded")
    message: str = Field(description="what was wrong and how to fix it")
    type: str = Field(description="OpenAI-style error class")
    param: str | None = Field(None, description="the request field at fault, when there is one")


class ErrorBody(BaseModel):
    error: ErrorDetail


def fields_at(schema: type[BaseModel], loc: Sequence[str | int]) -> list[str] | None:
    """The fields of the model that `loc` (a pydantic error location) points into, as a client spells them.

    ("messages", 0) in a ChatRequest -> ChatMessage's fields. None when `loc` leads somewhere that is not a model,
    or to one of several models a union could mean.
    """
    target = _model_at(schema, tuple(loc))
    if target is None:
        return None
    return [field.alias or name for name, field in target.model_fields.items()]


def _model_at(annotation: Any, loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _model_at(args[0], loc)
    if origin in (Union, types.UnionType):
        members = [arg for arg in args if arg is not type(None)]
        if len(members) == 1:  # X | None: pydantic puts no tag in the location
            return _model_at(members[0], loc)
        # pydantic names the member an error is in: "TextPart" for a model, "list[TextPart]" for a generic.
        tagged = [m for m in members if loc and isinstance(loc[0], str) and _is_tag(loc[0], m)]
        return _model_at(tagged[0], loc[1:]) if len(tagged) == 1 else None
    if not loc:
        return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    part, rest = loc[0], loc[1:]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        for name, field in annotation.model_fields.items():
            if part in (name, field.alias):
                return _model_at(field.annotation, rest)
        return None
    if origin in (list, set, frozenset, Sequence) and isinstance(part, int) and args:
        return _model_at(args[0], rest)
    if origin is tuple and isinstance(part, int) and args:
        item = args[0] if args[-1] is Ellipsis else args[part] if part < len(args) else None
        return _model_at(item, rest)
    if origin is dict and isinstance(part, str) and len(args) == 2:
        return _model_at(args[1], rest)
    return None


def _is_tag(part: str, member: Any) -> bool:
    origin = get_origin(member)
    if origin is not None:
        return part.startswith(f"{getattr(origin, '__name__', '')}[")
    return part == getattr(member, "__name__", None)
