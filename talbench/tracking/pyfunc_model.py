"""The MLflow pyfunc of a talbench model, logged as code (MLflow's "models from code"): nothing in
the logged model is pickled; the weights (a state dict, read with weights_only) and the resolved
config are artifacts beside this file.

Input: {"feats": float32 [B, C, T], "masks": bool [B, 1, T]} (T a multiple of the model's
max_div_factor, padding masked out); output: per video the candidates' segments (feature-grid
units), scores and labels, before NMS.
"""

from __future__ import annotations

from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel


class ActionFormerModel(PythonModel):
    # MLflow validates inputs by predict's type hints, and warns at every logging and loading when
    # there are none; our input, a dict of tensors, has no type-hint schema in MLflow, and the
    # logged signature (TensorSpecs) validates it instead. MLflow's switch for such models:
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        from talbench.tracking.mlflow_tracking import model_from_files

        self.model = model_from_files(context.artifacts["weights"], context.artifacts["config"])

    # no type hints: MLflow would read them as a second input schema beside the logged signature
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        import torch

        with torch.no_grad():
            out = self.model(torch.as_tensor(model_input["feats"]), torch.as_tensor(model_input["masks"]))
        return [{key: value.tolist() for key, value in video.items()} for video in out]


mlflow.models.set_model(ActionFormerModel())
