"""Champion/challenger: score the version aliased `production` on the candidate's test split."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def production_metrics(
    model_name: str, feature_names: list[str], x: np.ndarray, y: np.ndarray
) -> tuple[dict[str, Any] | None, str]:
    """Metrics of `models:/NAME@production` on (x, y), or None and a sentence saying why there are none."""
    import torch
    from mlflow.exceptions import MlflowException

    from mlrelease.core.modelcard import MODEL_FILE, IntegrityError, ModelCard
    from pipelines.common import predict_proba
    from pipelines.evaluate import classification_metrics
    from registry.client import is_not_found
    from registry.register import download_bundle

    with tempfile.TemporaryDirectory() as tmp:
        try:
            bundle = download_bundle(f"models:/{model_name}@production", model_name, Path(tmp))
        except MlflowException as exc:
            if is_not_found(exc):
                return None, f"no production version of {model_name!r} in the registry; nothing to compare"
            raise RuntimeError(
                f"cannot read the production version of {model_name!r} from the registry "
                f"({exc}); check MLFLOW_TRACKING_URI and retry"
            ) from exc
        except IntegrityError as exc:
            raise RuntimeError(
                f"the production version's artifact fails its sha256 check ({exc}); "
                "investigate before comparing or promoting anything"
            ) from exc
        card = ModelCard.read(bundle)
        if card.feature_names != feature_names:
            return None, (
                f"production version expects other features ({card.n_features}); not comparable, comparison skipped"
            )
        module = torch.jit.load(str(bundle / MODEL_FILE), map_location="cpu")
        scores = classification_metrics(y, predict_proba(module, x))
    return scores, f"compared with production ({card.sha256[:12]}) on the same test split"
