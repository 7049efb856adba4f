"""Response bodies, built with orjson from numpy results (no per-request pydantic models)."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from deploy.serving.model import LoadedModel
from deploy.serving.payload import V2_OUTPUTS, V2Request


def predict_v1(model: LoadedModel, probs: np.ndarray) -> bytes:
    """KServe V1 / TF Serving style: one {class, probabilities} per instance, plus who answered."""
    classes = model.card.classes
    rows = probs.tolist()
    predictions = [{"class": classes[row.index(max(row))], "probabilities": row} for row in rows]
    return orjson.dumps({"predictions": predictions, "model_name": model.name, "model_version": model.version})


def _v2_output(name: str, model: LoadedModel, probs: np.ndarray) -> dict[str, Any]:
    if name == "probabilities":
        return {"name": name, "shape": list(probs.shape), "datatype": "FP32", "data": probs.reshape(-1).tolist()}
    classes = model.card.classes
    labels = [classes[k] for k in probs.argmax(axis=1).tolist()]
    return {"name": name, "shape": [len(labels)], "datatype": "BYTES", "data": labels}


def infer_v2(model: LoadedModel, probs: np.ndarray, request: V2Request) -> bytes:
    """Open Inference Protocol response: the outputs the request asked for (a probabilities tensor and a
    class-label tensor unless it named one), and its id."""
    body: dict[str, Any] = {
        "model_name": model.name,
        "model_version": model.version,
        "outputs": [_v2_output(name, model, probs) for name in request.outputs],
    }
    if request.id is not None:
        body["id"] = request.id
    return orjson.dumps(body)


def metadata_v1(model: LoadedModel) -> bytes:
    """GET /v1/models/NAME: version, checksum, which variant and runtime answer, and the signature a client needs."""
    card = model.card
    return orjson.dumps(
        {
            "name": model.name,
            "version": model.version,
            "sha256": model.sha256,
            "source": model.source,
            "runtime": model.runtime,
            "variant": model.variant,
            "artifact_sha256": model.artifact_sha256,
            "signature": {
                "inputs": {
                    "feature_names": card.feature_names,
                    "dtype": card.input_dtype,
                    "shape": [-1, card.n_features],
                },
                "outputs": {
                    "classes": card.classes,
                    "probabilities": {"dtype": "float32", "shape": [-1, len(card.classes)]},
                },
            },
            "torch_version": card.torch_version,
            "metrics": card.metrics,
        }
    )


def metadata_v2(model: LoadedModel) -> bytes:
    """GET /v2/models/NAME in Open Inference Protocol form, with the answering variant in ``parameters``."""
    card = model.card
    return orjson.dumps(
        {
            "name": model.name,
            "versions": [model.version],
            "platform": "pytorch_torchscript",
            "inputs": [{"name": "input-0", "datatype": "FP32", "shape": [-1, card.n_features]}],
            "outputs": [
                {"name": V2_OUTPUTS[0], "datatype": "FP32", "shape": [-1, len(card.classes)]},
                {"name": V2_OUTPUTS[1], "datatype": "BYTES", "shape": [-1]},
            ],
            "parameters": {
                "variant": model.variant,
                "runtime": model.runtime,
                "artifact_sha256": model.artifact_sha256,
            },
        }
    )
