"""The OpenAPI 3.1 document, generated from the pydantic schemas."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from edgeslm.server import completion_schemas, edge_schemas, schemas
from edgeslm.server.reload import ReloadAnswer

# Answers that are not a schema's JSON: media type -> what the body is.
PROMETHEUS_TEXT = {"text/plain": {"schema": {"type": "string", "description": "Prometheus text exposition format"}}}
THIS_DOCUMENT = {"application/json": {"schema": {"type": "object", "description": "this OpenAPI 3.1 document"}}}

# (method, path, summary, request schema, response schema or content, error statuses)
OPERATIONS: tuple[tuple[str, str, str, type[BaseModel] | None, type[BaseModel] | dict[str, Any], tuple[int, ...]],
                  ...] = (
    ("get", "/health", "Liveness: the daemon answers", None, schemas.Health, ()),
    ("get", "/ready", "Readiness: every enabled model loaded (503 lists which failed and why)", None,
     schemas.Readiness, (503,)),
    ("get", "/v1/models", "Loaded and failed models, OpenAI-style", None, schemas.ModelList, ()),
    ("get", "/v1/models/{name}", "One model", None, schemas.ModelInfo, (404, 503)),
    ("post", "/v1/classify", "Label texts", schemas.ClassifyRequest, schemas.ClassifyResponse,
     (400, 404, 413, 503, 504)),
    ("post", "/v1/embeddings", "Embed texts (OpenAI-compatible)", schemas.EmbeddingsRequest,
     schemas.EmbeddingsResponse, (400, 404, 413, 503, 504)),
    ("post", "/v1/completions", "Continue a text (OpenAI-compatible; stream: true for server-sent events)",
     completion_schemas.CompletionRequest, completion_schemas.CompletionResponse, (400, 404, 413, 503, 504)),
    ("post", "/v1/chat/completions", "Chat (OpenAI-compatible; stream: true for server-sent events)",
     completion_schemas.ChatRequest, completion_schemas.ChatResponse, (400, 404, 413, 503, 504)),
    ("get", "/v2/models/{name}", "KServe v2 model metadata: input and output names, datatypes and shapes", None,
     schemas.ModelMetadata, (404, 503)),
    ("post", "/v2/models/{name}/infer", "Raw tensors in and out (KServe v2; binary extension supported)",
     schemas.InferRequest, schemas.InferResponse, (400, 404, 413, 503, 504)),
    ("post", "/v1/audio/intent", "A 16 kHz mono 16-bit WAV (raw body, or form field `file`) through VAD, speech, "
     "intent and action; ?act=false skips the action", None, edge_schemas.VoiceAnswer, (400, 413, 503, 504)),
    ("get", "/v1/gpio", "GPIO backend, triggers and outputs with their levels", None, edge_schemas.GpioStatus, ()),
    ("post", "/v1/gpio/{pin}/press", "Press a trigger pin of the mock backend", edge_schemas.PressRequest,
     edge_schemas.PressAnswer, (400, 503)),
    ("post", "/admin/reload", "Re-read the config, swap changed models (root and the daemon's user)", None,
     ReloadAnswer, (403, 422)),
    ("get", "/metrics", "Prometheus text: requests, latency, batches, queue depth, power, temperature "
     "(404 when [metrics] is off)", None, PROMETHEUS_TEXT, (404,)),
    ("get", "/openapi.json", "This document", None, THIS_DOCUMENT, ()),
)


EVENTS_OPERATION = {"get": {
    "summary": "Server-sent events: button, listening, intent, no_match, busy, action, event, classify, error, model",
    "parameters": [
        {"name": "kinds", "in": "query", "required": False, "schema": {"type": "string"},
         "description": "comma-separated kinds to receive"},
        {"name": "since", "in": "query", "required": False, "schema": {"type": "integer"},
         "description": "replay kept events after this id first (or send Last-Event-ID)"}],
    "responses": {"200": {"description": "an endless text/event-stream; each event's data is JSON",
                          "content": {"text/event-stream": {"schema": {"type": "string"}}}}},
}}


def openapi_document(version: str) -> dict[str, Any]:
    models = {schemas.ErrorBody}
    for _, _, _, request, response, _ in OPERATIONS:
        models.update(m for m in (request, response) if isinstance(m, type))
    mapping, top = models_json_schema(
        [(m, "validation") for m in sorted(models, key=lambda m: m.__name__)],
        ref_template="#/components/schemas/{model}",
    )
    components = top.get("$defs", {})

    def ref(model: type[BaseModel]) -> dict[str, str]:
        return mapping[(model, "validation")]

    paths: dict[str, dict[str, Any]] = {}
    for method, path, summary, request, response, errors in OPERATIONS:
        content = response if isinstance(response, dict) else {"application/json": {"schema": ref(response)}}
        operation: dict[str, Any] = {
            "summary": summary,
            "responses": {"200": {"description": "OK", "content": content}},
        }
        for status in errors:
            operation["responses"][str(status)] = {
                "description": "error", "content": {"application/json": {"schema": ref(schemas.ErrorBody)}},
            }
        if request is not None:
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref(request)}}}
        if "{name}" in path:
            operation["parameters"] = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
        if "{pin}" in path:
            operation["parameters"] = [{"name": "pin", "in": "path", "required": True, "schema": {"type": "integer"}}]
        paths.setdefault(path, {})[method] = operation
    paths["/v1/audio/intent"]["post"]["requestBody"] = {"required": True, "content": {
        "audio/wav": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {"schema": {"type": "object", "properties": {"file": {"type": "string",
                                                                                     "format": "binary"}}}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "edgeslm", "version": version,
                 "description": "On-device inference over a Unix socket: "
                                "curl --unix-socket run/edgeslm.sock http://localhost/health"},
        "paths": {**paths, "/v1/events": EVENTS_OPERATION},
        "components": {"schemas": components},
    }
