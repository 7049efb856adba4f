"""MLflow "models from code" definition of the registered model: nothing is pickled, model.pt is loaded
with torch.jit.load. MLflow executes this file when the model is loaded (e.g. by `mlflow models serve`)."""

from __future__ import annotations

import json
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel


class TorchScriptClassifier(PythonModel):
    """Wraps the exported TorchScript module: a DataFrame or 2-D array of raw features -> probabilities."""

    def load_context(self, context: Any) -> None:
        import torch

        torch.set_num_threads(1)
        self._torch = torch
        self._model = torch.jit.load(context.artifacts["model"], map_location="cpu")
        with open(context.artifacts["model_card"]) as handle:
            self._features = json.load(handle)["feature_names"]

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        # No type hints on purpose: MLflow reads predict's hints as a schema and warns about Any.
        if isinstance(model_input, pd.DataFrame):
            columns = self._features if set(self._features) <= set(model_input.columns) else None
            frame = model_input[columns] if columns else model_input
            array = frame.to_numpy(dtype=np.float32)
        else:
            array = np.asarray(model_input, dtype=np.float32)
        if not (array.flags.writeable and array.flags.c_contiguous):
            array = np.array(array, order="C")  # torch warns on every read-only array (a frame's values can be)
        with self._torch.inference_mode():
            return self._model(self._torch.from_numpy(array)).numpy()


mlflow.models.set_model(TorchScriptClassifier())
