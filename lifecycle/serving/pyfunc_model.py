"""MLflow's models-from-code entry for a lifecycle version (``lifecycle.tracking.log_pyfunc`` logs it).

MLflow executes this file when it loads the model (``mlflow.pyfunc.load_model``, ``mlflow models serve
--env-manager local``); the lifecycle package never imports it. It is the one module besides tracking.py that imports
mlflow, because MLflow wants the model object set at module level. The input is a ``list[str]`` of texts; the output
one row per text: its label, that label's probability, and every label's probability, all calibrated with the
version's temperature; under the version's abstain threshold (``calibration.abstain_threshold``) the label is
``unknown`` and ``abstained`` is true. The version directory travels
as the model's ``version`` artifact and runs in its LiteRT serving form (no TensorFlow), a checkpoint in Keras.

No ``from __future__ import annotations`` here: MLflow reads the type hints of ``predict`` at run time.
"""

import threading
from pathlib import Path
from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel
from pydantic import BaseModel


class TextPrediction(BaseModel):
    """One text's label, its probability, and every label's probability."""

    label: str
    probability: float
    probabilities: dict[str, float]
    abstained: bool = False


class LifecycleClassifier(PythonModel):
    """A lifecycle version (checkpoint, frozen or compressed) classifying raw texts."""

    def load_context(self, context: Any) -> None:
        from lifecycle.artifacts import load_version
        from lifecycle.inference import Predictor

        version = load_version(Path(context.artifacts["version"]))
        # A serving form runs in LiteRT (no TensorFlow); a checkpoint in Keras.
        self.predictor = Predictor(version, runtime="litert" if version.manifest.serving else "auto")
        # One LiteRT interpreter, and `mlflow models serve` calls predict from several threads at once.
        self.lock = threading.Lock()

    def predict(self, context: Any, model_input: list[str], params: dict[str, Any] | None = None
                ) -> list[TextPrediction]:
        from lifecycle.calibration import UNKNOWN, abstains

        labels = self.predictor.labels
        with self.lock:
            rows = self.predictor.predict_proba(list(model_input))
        out = []
        for row, refused in zip(rows, abstains(rows, self.predictor.abstain_threshold), strict=True):
            best = int(row.argmax())
            out.append(TextPrediction(label=UNKNOWN if refused else labels[best], probability=float(row[best]),
                                      probabilities={label: float(p) for label, p in zip(labels, row, strict=True)},
                                      abstained=bool(refused)))
        return out


mlflow.models.set_model(LifecycleClassifier())
