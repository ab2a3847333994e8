"""The OpenAPI 3.1 document, generated from the pydantic schemas."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from edgeslm.server import schemas
from edgeslm.server.reload import ReloadAnswer

# (method, path, summary, request schema, response schema, error statuses)
OPERATIONS: tuple[tuple[str, str, str, type[BaseModel] | None, type[BaseModel], tuple[int, ...]], ...] = (
    ("get", "/health", "Liveness: the daemon answers", None, schemas.Health, ()),
    ("get", "/ready", "Readiness: every enabled model loaded (503 lists which failed and why)", None,
     schemas.Readiness, (503,)),
    ("get", "/v1/models", "Loaded and failed models, OpenAI-style", None, schemas.ModelList, ()),
    ("get", "/v1/models/{name}", "One model", None, schemas.ModelInfo, (404, 503)),
    ("post", "/v1/classify", "Label texts", schemas.ClassifyRequest, schemas.ClassifyResponse,
     (400, 404, 413, 503, 504)),
    ("post", "/v1/embeddings", "Embed texts (OpenAI-compatible)", schemas.EmbeddingsRequest,
     schemas.EmbeddingsResponse, (400, 404, 413, 503, 504)),
    ("post", "/v2/models/{name}/infer", "Raw tensors in and out (KServe v2; binary extension supported)",
     schemas.InferRequest, schemas.InferResponse, (400, 404, 413, 503, 504)),
    ("post", "/admin/reload", "Re-read the config, swap changed models (root and the daemon's user)", None,
     ReloadAnswer, (403, 422)),
)


def openapi_document(version: str) -> dict[str, Any]:
    models = {schemas.ErrorBody}
    for _, _, _, request, response, _ in OPERATIONS:
        models.add(response)
        if request is not None:
            models.add(request)
    mapping, top = models_json_schema(
        [(m, "validation") for m in sorted(models, key=lambda m: m.__name__)],
        ref_template="#/components/schemas/{model}",
    )
    components = top.get("$defs", {})

    def ref(model: type[BaseModel]) -> dict[str, str]:
        return mapping[(model, "validation")]

    paths: dict[str, dict[str, Any]] = {}
    for method, path, summary, request, response, errors in OPERATIONS:
        operation: dict[str, Any] = {
            "summary": summary,
            "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": ref(response)}}}},
        }
        for status in errors:
            operation["responses"][str(status)] = {
                "description": "error", "content": {"application/json": {"schema": ref(schemas.ErrorBody)}},
            }
        if request is not None:
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref(request)}}}
        if "{name}" in path:
            operation["parameters"] = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "edgeslm", "version": version,
                 "description": "On-device inference over a Unix socket: "
                                "curl --unix-socket run/edgeslm.sock http://localhost/health"},
        "paths": paths,
        "components": {"schemas": components},
    }
