"""The only importer of mlflow: ``Tracker`` (MLflow-backed) and ``NullTracker`` share one interface.

Facts this module relies on (mlflow 3.17): the tracking URI is always set explicitly (a stray ./mlruns folder would
otherwise be picked up); the SQLite schema and the experiment are created once, then runs get ``experiment_id=``;
a ``with mlflow.start_run()`` block that raises ends its run FAILED; sizes and accuracies are metrics, not params.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lifecycle.config import TrackingConfig, project_root
from lifecycle.errors import ModelError, TrackingError

log = logging.getLogger(__name__)

VERSION_ARTIFACT = "version"


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else SQLite under ``<project root>/mlruns``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{project_root() / 'mlruns' / 'mlflow.db'}"


def _mlflow() -> Any:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    return mlflow


class NullTracker:
    """Tracking switched off: every call is accepted and nothing is recorded."""

    enabled = False
    run_id: str | None = None
    last_run_id: str | None = None
    experiment_id: str | None = None

    @contextmanager
    def run(self, step: str, name: str, tags: Mapping[str, str] | None = None, resume_run_id: str | None = None
            ) -> Iterator[NullTracker]:
        yield self

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def log_dict(self, data: Any, artifact_file: str) -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def log_artifacts(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def log_table(self, rows: Sequence[Mapping[str, Any]], artifact_file: str) -> None:
        pass

    def log_input(self, texts: Sequence[str], labels: Sequence[str], *, name: str, source: str, context: str) -> None:
        pass

    def register(self, model_name: str, tags: Mapping[str, str] | None = None) -> str | None:
        return None


class Tracker(NullTracker):
    """MLflow tracking: one experiment per config, one run per step, versions registered under the config name."""

    enabled = True

    def __init__(self, cfg: TrackingConfig, experiment: str) -> None:
        self.cfg = cfg
        self.uri = cfg.uri or default_tracking_uri()
        mlflow = _mlflow()
        if self.uri.startswith("sqlite:///"):
            Path(self.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(self.uri)
        self.client = mlflow.MlflowClient(self.uri)
        name = cfg.experiment or experiment
        try:
            existing = self.client.get_experiment_by_name(name)
            if existing is None:
                location = None
                if self.uri.startswith("sqlite:///"):
                    location = str(Path(self.uri.removeprefix("sqlite:///")).parent / "artifacts")
                self.experiment_id = self.client.create_experiment(name, artifact_location=location)
            else:
                self.experiment_id = existing.experiment_id
        except Exception as exc:
            raise TrackingError(
                f"MLflow at {self.uri} refused experiment {name!r}: {_first_line(exc)}.",
                "Check tracking.uri / MLFLOW_TRACKING_URI, or pass --no-track.",
            ) from None
        self.run_id = None

    @contextmanager
    def run(self, step: str, name: str, tags: Mapping[str, str] | None = None, resume_run_id: str | None = None
            ) -> Iterator[Tracker]:
        """Start (or resume) a run for one step; nested under an active run (pipeline, experiment) if any.

        An exception inside the block ends the run FAILED and propagates.
        """
        mlflow = _mlflow()
        all_tags = {"lifecycle.step": step, **(tags or {})}
        parent = mlflow.active_run()
        if parent is not None:
            all_tags.setdefault("lifecycle.parent_run", parent.info.run_id)
        kwargs: dict[str, Any] = {"run_id": resume_run_id} if resume_run_id else {
            "experiment_id": self.experiment_id, "run_name": name}
        previous = self.run_id
        with mlflow.start_run(nested=parent is not None, tags=all_tags, **kwargs) as active:
            self.run_id = active.info.run_id
            try:
                yield self
            finally:
                self.last_run_id = active.info.run_id
                self.run_id = previous

    def log_params(self, params: Mapping[str, Any]) -> None:
        mlflow = _mlflow()
        items = [(k, str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 90):
            mlflow.log_params(dict(items[start:start + 90]))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        _mlflow().log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        _mlflow().set_tags(dict(tags))

    def log_text(self, text: str, artifact_file: str) -> None:
        _mlflow().log_text(text, artifact_file)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        _mlflow().log_dict(data, artifact_file)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        _mlflow().log_artifact(str(path), artifact_path)

    def log_artifacts(self, path: Path, artifact_path: str | None = None) -> None:
        _mlflow().log_artifacts(str(path), artifact_path)

    def log_table(self, rows: Sequence[Mapping[str, Any]], artifact_file: str) -> None:
        import pandas as pd

        _mlflow().log_table(pd.DataFrame(list(rows)), artifact_file)

    def log_input(self, texts: Sequence[str], labels: Sequence[str], *, name: str, source: str, context: str) -> None:
        """Record a split as an MLflow dataset input (its digest, schema, size, source)."""
        import warnings

        import pandas as pd

        mlflow = _mlflow()
        frame = pd.DataFrame({"text": list(texts), "label": list(labels)})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(frame, source=source, name=name, targets="label")
            mlflow.log_input(dataset, context=context)

    def register(self, model_name: str, tags: Mapping[str, str] | None = None) -> str | None:
        """Register this run's ``version`` artifact directory as a new version of ``model_name``."""
        if not self.cfg.register_model or self.run_id is None:
            return None
        run = self.client.get_run(self.run_id)
        try:
            try:
                self.client.get_registered_model(model_name)
            except Exception:
                self.client.create_registered_model(
                    model_name, description="lifecycle text classifier versions (checkpoint, frozen, compressed)"
                )
            version = self.client.create_model_version(
                model_name,
                source=f"{run.info.artifact_uri}/{VERSION_ARTIFACT}",
                run_id=self.run_id,
                tags=dict(tags or {}),
            )
        except Exception as exc:
            raise TrackingError(
                f"MLflow at {self.uri} refused to register {model_name!r}: {_first_line(exc)}."
            ) from None
        _mlflow().set_tag("lifecycle.registered", f"models:/{model_name}/{version.version}")
        return str(version.version)


def make_tracker(cfg: TrackingConfig, experiment: str) -> NullTracker:
    """A Tracker when tracking is enabled, else a NullTracker."""
    return Tracker(cfg, experiment) if cfg.enabled else NullTracker()


def resolve_version(ref: str, tracking_uri: str | None = None) -> Path:
    """A VERSION argument as a local directory: a path, ``runs:/<id>/...``, ``models:/<name>/<n>`` or ``@alias``.

    URIs are downloaded from the tracking server's artifact store into a temp folder.
    """
    if not ref.startswith(("runs:/", "models:/")):
        return Path(ref)
    mlflow = _mlflow()
    mlflow.set_tracking_uri(tracking_uri or default_tracking_uri())
    uri = ref
    if ref.startswith("runs:/") and ref.rstrip("/").count("/") == 1:
        uri = f"{ref.rstrip('/')}/{VERSION_ARTIFACT}"
    target = Path(tempfile.mkdtemp(prefix="lifecycle-version-"))
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(target))
    except Exception as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise ModelError(
            f"{ref}: cannot be fetched from MLflow at {mlflow.get_tracking_uri()} ({_first_line(exc)}).",
            "Check the name and number (`mlflow models` UI) or pass a version directory.",
        ) from None
    return Path(local)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def to_json(data: Any) -> str:
    """Compact JSON for tags and params."""
    return json.dumps(data, separators=(",", ":"), sort_keys=True)
