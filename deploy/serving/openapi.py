"""The OpenAPI 3.0 document of the server, written by hand and specialised to the loaded model's features.

Served at /openapi.json; the schemathesis fuzz test drives the API from it.
"""

from __future__ import annotations

from typing import Any

from deploy.serving.config import ServingSettings
from deploy.serving.model import LoadedModel
from deploy.serving.payload import V2_OUTPUTS

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Malformed JSON or body",
        401: "Missing or wrong credentials",
        404: "Unknown model or route",
        413: "Body over the size limit",
        415: "Content-Type is not application/json, or a charset other than UTF-8, or a Content-Encoding",
        422: "Valid JSON that does not fit the model",
        429: "Rate limited",
        409: "Reload in progress",
        503: "No model loaded yet, overloaded (queue budget) or circuit breaker open; see Retry-After",
    }
    return {str(code): _json(_ERROR, text[code]) for code in codes}


def _schemas(model: LoadedModel | None, settings: ServingSettings) -> dict[str, Any]:
    n = model.n_features if model else 1
    names = model.card.feature_names if model else ["feature"]
    row = {"type": "array", "items": {"type": "number"}, "minItems": n, "maxItems": n}
    keyed = {
        "type": "object",
        "properties": {name: {"type": "number"} for name in names},
        "required": names,
        "additionalProperties": False,
    }
    batch = {"minItems": 1, "maxItems": settings.max_batch_size}
    return {
        "Error": {
            "type": "object",
            "required": ["error", "code", "status"],
            "properties": {
                "error": {"type": "string"},
                "code": {"type": "string"},
                "status": {"type": "integer"},
            },
        },
        "PredictRequest": {
            "type": "object",
            "required": ["instances"],
            "additionalProperties": False,
            "properties": {
                "parameters": {"type": "object"},
                "instances": {
                    "oneOf": [
                        {"type": "array", "items": row, **batch},
                        {"type": "array", "items": keyed, **batch},
                    ]
                },
            },
        },
        "PredictResponse": {
            "type": "object",
            "required": ["predictions", "model_name", "model_version"],
            "properties": {
                "model_name": {"type": "string"},
                "model_version": {"type": "string"},
                "predictions": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["class", "probabilities"],
                        "properties": {
                            "class": {"type": "string"},
                            "probabilities": {"type": "array", "items": {"type": "number"}},
                        },
                    },
                },
            },
        },
        "InferRequest": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "id": {"type": "string"},
                "inputs": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "shape", "datatype", "data"],
                        "properties": {
                            "name": {"type": "string"},
                            "datatype": {"type": "string", "enum": ["FP32", "FP64"]},
                            "shape": {
                                "type": "array",
                                "items": {"type": "integer", "minimum": 1},
                                "minItems": 2,
                                "maxItems": 2,
                            },
                            "data": {"type": "array", "items": {"type": "number"}},
                        },
                    },
                },
                "outputs": {
                    "type": "array",
                    "description": "the outputs to answer with (default: all of them)",
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {"name": {"type": "string", "enum": list(V2_OUTPUTS)}},
                    },
                },
            },
        },
        "InferResponse": {
            "type": "object",
            "required": ["model_name", "outputs"],
            "properties": {
                "model_name": {"type": "string"},
                "model_version": {"type": "string"},
                "id": {"type": "string"},
                "outputs": {"type": "array", "items": {"type": "object"}},
            },
        },
        "Metadata": {"type": "object", "required": ["name", "version", "sha256", "signature"]},
        "Status": {"type": "object"},
        "ReloadRequest": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "model_dir": {"type": "string", "minLength": 1},
                "model_uri": {"type": "string", "pattern": "^models:/[^/@]+(@[\\w.-]+|/\\d+)$"},
                "model_version": {"type": "string", "pattern": "^[\\w.-]{1,64}$"},
            },
        },
    }


def _name_param(model: LoadedModel | None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "enum": [model.name]} if model else {"type": "string"}
    return {"name": "name", "in": "path", "required": True, "schema": schema}


def _paths(model: LoadedModel | None, settings: ServingSettings) -> dict[str, Any]:
    name = [_name_param(model)]
    predict_security: list[dict[str, Any]] | None = [{"apiKey": []}] if settings.api_key is not None else None
    metadata_security = predict_security if settings.protect_metadata else None
    metadata_errors = (401, 429) if metadata_security is not None else ()

    def op(
        summary: str,
        ok: dict[str, Any],
        errors: tuple[int, ...],
        body: str | None = None,
        params: list[dict[str, Any]] | None = None,
        security: list[dict[str, Any]] | None = None,
    ) -> Any:
        spec: dict[str, Any] = {"summary": summary, "responses": {"200": ok, **_errors(*errors)}}
        if body:
            spec["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}},
            }
        if params:
            spec["parameters"] = params
        if security is not None:
            spec["security"] = security
        return spec

    ref = {k: {"$ref": f"#/components/schemas/{k}"} for k in ("PredictResponse", "InferResponse", "Metadata", "Status")}

    def model_get(summary: str, schema: dict[str, Any], description: str) -> Any:
        """A GET on one served model: the same auth, rate limit and errors as its predictions, no body."""
        return {
            "get": op(summary, _json(schema, description), (401, 404, 429, 503), params=name, security=predict_security)
        }

    model_errors = (400, 401, 404, 413, 415, 422, 429, 503)
    paths: dict[str, Any] = {
        "/v1/models/{name}:predict": {
            "post": op(
                "Predict (KServe V1 / TF Serving)",
                _json(ref["PredictResponse"], "Class and probabilities per instance"),
                model_errors,
                "PredictRequest",
                name,
                predict_security,
            )
        },
        "/v2/models/{name}/infer": {
            "post": op(
                "Infer (Open Inference Protocol)",
                _json(ref["InferResponse"], "Output tensors"),
                model_errors,
                "InferRequest",
                name,
                predict_security,
            )
        },
        "/v1/models/{name}": model_get("Model metadata", ref["Metadata"], "Signature, version, sha256"),
        "/v2/models/{name}": model_get(
            "Model metadata (Open Inference Protocol)",
            {"type": "object"},
            "Name, versions, platform, input and output tensors",
        ),
        "/v2/models/{name}/ready": model_get(
            "Model readiness (Open Inference Protocol)",
            {"type": "object", "required": ["name", "ready"]},
            "The model serves",
        ),
        "/health": {"get": op("Liveness", _json(ref["Status"], "Alive"), ())},
        "/ready": {"get": op("Readiness: model loaded and warmed", _json(ref["Status"], "Ready"), (503,))},
        "/v2/health/live": {"get": op("Liveness (Open Inference Protocol)", _json(ref["Status"], "Alive"), ())},
        "/v2/health/ready": {"get": op("Readiness (Open Inference Protocol)", _json(ref["Status"], "Ready"), (503,))},
        "/openapi.json": {
            "get": op(
                "This document",
                _json({"type": "object"}, "OpenAPI 3.0"),
                metadata_errors,
                security=metadata_security,
            )
        },
        "/metrics": {
            "get": op(
                "Prometheus metrics",
                {
                    "description": "Prometheus text format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                metadata_errors,
                security=metadata_security,
            )
        },
    }
    if settings.enable_admin:
        paths["/admin/reload"] = {
            "post": op(
                "Hot-swap the model (admin token)",
                _json(ref["Status"], "Swapped"),
                (400, 401, 409, 413, 415, 422, 429),
                "ReloadRequest",
                security=[{"bearer": []}],
            )
        }
    return paths


def build_openapi(model: LoadedModel | None, settings: ServingSettings) -> dict[str, Any]:
    """The OpenAPI document; request schemas follow the served model's feature names and batch limit."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "mlrelease model server",
            "version": model.version if model else "not-loaded",
            "description": "KServe V1 and Open Inference Protocol prediction for one TorchScript model.",
        },
        "paths": _paths(model, settings),
        "components": {
            "schemas": _schemas(model, settings),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }
