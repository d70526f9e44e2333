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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifecycle.config import TrackingConfig, project_root
from lifecycle.errors import ConfigError, ModelError, TrackingError

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
    # Our own progress bars cover the steps; mlflow's per-download bar would interleave with them on stderr.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    return mlflow


class NullTracker:
    """Tracking switched off: every call is accepted and nothing is recorded."""

    enabled = False
    run_id: str | None = None
    last_run_id: str | None = None
    experiment_id: str | None = None

    @contextmanager
    def run(self, step: str, name: str, tags: Mapping[str, str] | None = None, resume_run_id: str | None = None,
            parent_run_id: str | None = None) -> Iterator[NullTracker]:
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

    def log_pyfunc(self, version_path: Path) -> str | None:
        return None

    def resumable_run(self, run_file: Path) -> str | None:
        """The run recorded in ``run_file`` by ``remember_run``, if it lives in this tracker's store."""
        return None

    def remember_run(self, run_file: Path) -> None:
        """Record the active run in ``run_file`` so an interrupted step can resume it."""


class Tracker(NullTracker):
    """MLflow tracking: one experiment per config, one run per step, versions registered under the config name."""

    enabled = True

    def resumable_run(self, run_file: Path) -> str | None:
        try:
            previous = json.loads(run_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return previous.get("run_id") if previous.get("uri") == self.uri else None

    def remember_run(self, run_file: Path) -> None:
        if self.run_id is None:
            return
        tmp = run_file.with_name(f".{run_file.name}.tmp")
        tmp.write_text(json.dumps({"run_id": self.run_id, "uri": self.uri}), encoding="utf-8")
        tmp.replace(run_file)

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
    def run(self, step: str, name: str, tags: Mapping[str, str] | None = None, resume_run_id: str | None = None,
            parent_run_id: str | None = None) -> Iterator[Tracker]:
        """Start (or resume) a run for one step; nested under an active run (pipeline, experiment) if any, else
        under ``parent_run_id`` when given (an experiment cell in a worker process).

        An exception inside the block ends the run FAILED and propagates.
        """
        mlflow = _mlflow()
        all_tags = {"lifecycle.step": step, **(tags or {})}
        parent = mlflow.active_run()
        if parent is not None:
            all_tags.setdefault("lifecycle.parent_run", parent.info.run_id)
        elif parent_run_id:
            all_tags.setdefault("lifecycle.parent_run", parent_run_id)
        kwargs: dict[str, Any] = {"run_id": resume_run_id} if resume_run_id else {
            "experiment_id": self.experiment_id, "run_name": name}
        if parent is None and parent_run_id and not resume_run_id:
            kwargs["parent_run_id"] = parent_run_id
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

    def log_pyfunc(self, version_path: Path) -> str | None:
        """Log a version with a serving form into this run as a models-from-code pyfunc (see :func:`log_pyfunc`), so
        ``mlflow models serve -m <uri>`` runs it; the URI is returned and kept in the run's ``lifecycle.pyfunc`` tag.
        """
        if self.run_id is None:
            return None
        uri = log_pyfunc(version_path, tracking_uri=self.uri)
        _mlflow().set_tag("lifecycle.pyfunc", uri)
        return uri


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


# --- The model registry for serving -------------------------------------------------------------------------------
# `lifecycle serve` watches registry aliases from a process that must stay small: importing mlflow costs about 4 s
# and 118 MB of RSS (measured with mlflow 3.17.2), more than the ten models it serves. Against an MLflow tracking
# server (http/https URI) the functions below speak its REST API with urllib and never import mlflow; for any other
# store (sqlite, file) they use the mlflow client, which `lifecycle serve` runs in a short-lived helper process.


@dataclass(frozen=True)
class RegistryEntry:
    """Where a registry reference points: ``models:/name@alias``, ``models:/name/<n>`` or ``runs:/<id>``."""

    ref: str
    name: str | None
    version: str | None  # the registered version number; None for runs:/
    source: str  # the artifact URI holding the version directory
    run_id: str | None


def is_http_uri(uri: str) -> bool:
    """True for a tracking server reached over HTTP(S), whose REST API needs no mlflow import."""
    return uri.startswith(("http://", "https://"))


def parse_registry_ref(ref: str) -> tuple[str, str, str]:
    """``models:/name@alias`` -> ("alias", name, alias); ``models:/name/3`` -> ("version", name, "3");
    ``runs:/<id>[/path]`` -> ("run", id, path or "version").

    Raises:
        ConfigError: for anything else, naming the forms accepted.
    """
    forms = "use models:/<name>@<alias>, models:/<name>/<number>, runs:/<run_id> or runs:/<run_id>/<path>"
    if ref.startswith("models:/"):
        body = ref.removeprefix("models:/").strip("/")
        if "@" in body and "/" not in body:
            name, _, alias = body.partition("@")
            if name and alias:
                return "alias", name, alias
        else:
            name, _, number = body.rpartition("/")
            if name and "/" not in name and number.isdigit():
                return "version", name, number
    elif ref.startswith("runs:/"):
        run_id, _, path = ref.removeprefix("runs:/").strip("/").partition("/")
        if run_id:
            return "run", run_id, path or VERSION_ARTIFACT
    raise ConfigError(f"{ref!r} is not a registry reference; {forms}.")


def _rest(uri: str, endpoint: str, params: Mapping[str, str] | None = None, timeout: float = 10.0,
          api: str = "mlflow") -> dict[str, Any]:
    """One GET from an MLflow tracking server's REST API (``/api/2.0/<api>/<endpoint>``), answered in JSON."""
    import urllib.error
    import urllib.parse
    import urllib.request

    url = f"{uri.rstrip('/')}/api/2.0/{api}/{endpoint}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    request = urllib.request.Request(url, headers=_auth_headers())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("message", exc.reason)
        except (ValueError, AttributeError):
            detail = exc.reason
        raise TrackingError(f"MLflow at {uri} refused {endpoint} ({exc.code}: {_first_line(Exception(detail))}).",
                            "Check the model name, alias or version in the registry.") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(f"MLflow at {uri} cannot be reached ({reason}).",
                            "Start the tracking server or fix tracking_uri / MLFLOW_TRACKING_URI.") from None


def _auth_headers() -> dict[str, str]:
    """The credentials the mlflow client would send: MLFLOW_TRACKING_TOKEN, else USERNAME/PASSWORD."""
    import base64

    headers = {"Content-Type": "application/json"}
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    elif user and password:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    return headers


def lookup_registry(ref: str, tracking_uri: str | None = None) -> RegistryEntry:
    """Where a registry reference points now (an alias is read afresh on every call).

    Over HTTP this is one REST call and no mlflow import; other stores go through the mlflow client.

    Raises:
        ConfigError: a malformed reference.
        TrackingError: the store is unreachable, or the name, alias, version or run does not exist.
    """
    form, first, second = parse_registry_ref(ref)
    uri = tracking_uri or default_tracking_uri()
    if is_http_uri(uri):
        if form == "run":
            info = _rest(uri, "runs/get", {"run_id": first})["run"]["info"]
            return RegistryEntry(ref, None, None, f"{info['artifact_uri']}/{second}", first)
        if form == "alias":
            found = _rest(uri, "registered-models/alias", {"name": first, "alias": second})["model_version"]
        else:
            found = _rest(uri, "model-versions/get", {"name": first, "version": second})["model_version"]
        return RegistryEntry(ref, found["name"], str(found["version"]), found["source"], found.get("run_id"))
    mlflow = _mlflow()
    client = mlflow.MlflowClient(uri)
    try:
        if form == "run":
            return RegistryEntry(ref, None, None, f"{client.get_run(first).info.artifact_uri}/{second}", first)
        if form == "alias":
            found = client.get_model_version_by_alias(first, second)
        else:
            found = client.get_model_version(first, second)
    except Exception as exc:
        raise TrackingError(f"{ref}: not found in MLflow at {uri} ({_first_line(exc)}).",
                            "Check the model name, alias or version in the registry.") from None
    return RegistryEntry(ref, found.name, str(found.version), found.source, found.run_id)


def download_source(source: str, dst: Path, tracking_uri: str | None = None) -> Path:
    """Copy a registry entry's artifact directory to ``dst`` (which must not exist) and return it.

    ``mlflow-artifacts:`` sources are fetched through the tracking server's REST API and local paths are copied,
    both without importing mlflow; other schemes (s3:, gs:, ...) use mlflow's artifact repositories.

    Raises:
        TrackingError: the source cannot be listed or read.
    """
    uri = tracking_uri or default_tracking_uri()
    local = local_source_path(source)
    try:
        if local is not None:
            if not local.is_dir():
                raise TrackingError(f"{source}: the registered version's directory is missing from the artifact store.")
            shutil.copytree(local, dst)
        elif source.startswith("mlflow-artifacts:") and is_http_uri(uri):
            _download_proxied(uri, _proxied_path(source), dst)
        else:
            dst.mkdir(parents=True)
            found = _mlflow().artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst),
                                                           tracking_uri=uri)
            inner = Path(found)
            if inner != dst:  # download_artifacts nests the directory under its own name
                for child in inner.iterdir():
                    child.rename(dst / child.name)
                inner.rmdir()
    except TrackingError:
        shutil.rmtree(dst, ignore_errors=True)
        raise
    except Exception as exc:
        shutil.rmtree(dst, ignore_errors=True)
        raise TrackingError(f"{source}: cannot be downloaded from MLflow at {uri} ({_first_line(exc)}).") from None
    return dst


def local_source_path(source: str) -> Path | None:
    """The directory a ``file://`` or absolute-path artifact source names (None for remote schemes)."""
    if source.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(source).path))
    if source.startswith("/"):
        return Path(source)
    return None


def _proxied_path(source: str) -> str:
    """``mlflow-artifacts:/1/abc/artifacts/version`` (or ``mlflow-artifacts://host/1/...``) -> ``1/abc/...``."""
    from urllib.parse import urlparse

    return urlparse(source).path.strip("/")


def _download_proxied(uri: str, path: str, dst: Path) -> None:
    """Mirror a directory served by ``mlflow server``'s artifact proxy, refusing names that would leave ``dst``."""
    import urllib.parse
    import urllib.request

    base = f"{uri.rstrip('/')}/api/2.0/mlflow-artifacts/artifacts"
    dst.mkdir(parents=True)
    listing = _rest(uri, "artifacts", {"path": path}, api="mlflow-artifacts").get("files", [])
    if not listing:
        raise TrackingError(f"{uri}: no artifacts under {path}; the registered version's directory is empty or gone.")
    for item in listing:
        name = item["path"]
        if name in ("", ".", "..") or "/" in name or "\\" in name:
            raise TrackingError(f"{uri}: artifact listing of {path} holds an unsafe name {name!r}; refusing it.")
        if item.get("is_dir"):
            _download_proxied(uri, f"{path}/{name}", dst / name)
            continue
        request = urllib.request.Request(f"{base}/{urllib.parse.quote(f'{path}/{name}')}", headers=_auth_headers())
        with urllib.request.urlopen(request, timeout=60) as response, (dst / name).open("wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)


def set_alias(ref: str, alias: str, tracking_uri: str | None = None) -> RegistryEntry:
    """Point ``alias`` of a registered model at a version: ``models:/name/<n>``, ``models:/name@other``, or a
    version directory whose run registered it.

    Raises:
        ConfigError: the reference is not a registered version.
        TrackingError: MLflow refuses (unknown model or version, store unreachable).
    """
    uri = tracking_uri or default_tracking_uri()
    if not ref.startswith(("models:/", "runs:/")):
        ref = _registered_ref(Path(ref), uri)
    form, name, _ = parse_registry_ref(ref)
    if form == "run":
        raise ConfigError(f"{ref!r}: promote takes a registered version (models:/<name>/<n> or models:/<name>@"
                          "<alias>), not a run; `lifecycle versions` lists them.")
    if not alias or "/" in alias or "@" in alias or alias.isdigit():
        raise ConfigError(f"--alias {alias!r} is not a valid alias; use a word such as champion (not a number).")
    entry = lookup_registry(ref, uri)
    mlflow = _mlflow()
    try:
        mlflow.MlflowClient(uri).set_registered_model_alias(name, alias, str(entry.version))
    except Exception as exc:
        raise TrackingError(f"MLflow at {uri} refused alias {alias!r} for {ref}: {_first_line(exc)}.") from None
    return entry


def _registered_ref(path: Path, uri: str) -> str:
    """``models:/name/<n>`` of the registered version a version directory's run created."""
    manifest = path / "manifest.json"
    try:
        run_id = json.loads(manifest.read_text(encoding="utf-8")).get("run_id")
    except (OSError, ValueError):
        raise ConfigError(f"{path}: not a version directory (no readable manifest.json); pass models:/<name>/<n>."
                          ) from None
    if not run_id:
        raise ConfigError(f"{path}: this version was made without tracking (no run_id), so it is not registered; "
                          "re-run its step with tracking on, or pass models:/<name>/<n>.")
    try:
        found = _mlflow().MlflowClient(uri).search_model_versions(f"run_id = '{run_id}'")
    except Exception as exc:
        raise TrackingError(f"MLflow at {uri} cannot search model versions: {_first_line(exc)}.") from None
    if not found:
        raise TrackingError(f"{path}: run {run_id} registered no model version in MLflow at {uri}.",
                            "Check MLFLOW_TRACKING_URI, or pass models:/<name>/<n>.")
    return f"models:/{found[0].name}/{found[0].version}"


PYFUNC_ARTIFACT = "pyfunc"


def log_pyfunc(version_path: Path, registered_name: str | None = None, tracking_uri: str | None = None,
               experiment: str = "lifecycle-pyfunc") -> str:
    """Log a frozen/compressed version as an MLflow models-from-code pyfunc taking a ``list[str]`` of texts.

    ``mlflow.pyfunc.load_model(uri)`` and ``mlflow models serve -m uri --env-manager local`` then run it in its LiteRT
    serving form; the ``lifecycle`` and ``tokenization`` packages travel with it as code paths, so the target
    environment needs only the pip requirements logged with it. Logs into the active run, else into a new run of
    ``experiment``.

    Returns:
        The model URI (``models:/<model id>``), or ``models:/<registered_name>/<n>`` when registered.

    Raises:
        ModelError: the directory is not a version with a serving form.
        TrackingError: MLflow refuses the model.
    """
    from importlib.metadata import version as installed

    package = Path(__file__).resolve().parent
    manifest_path = version_path / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        kind = json.loads((version_path / "tokenizer" / "tokenizer.json").read_text(encoding="utf-8"))["kind"]
    except (OSError, ValueError, KeyError):
        raise ModelError(f"{version_path}: not a lifecycle version (manifest.json or tokenizer/tokenizer.json "
                         "unreadable).") from None
    if not manifest.get("serving"):
        raise ModelError(f"{version_path}: a {manifest.get('kind')} version without a serving form cannot be logged "
                         "as a pyfunc; freeze or compress it first.")
    requirements = [f"ai-edge-litert=={installed('ai-edge-litert')}", f"numpy=={installed('numpy')}",
                    f"pydantic=={installed('pydantic')}", f"pyyaml=={installed('pyyaml')}"]
    if kind == "bpe":
        requirements.append(f"youtokentome=={installed('youtokentome')}")
    mlflow = _mlflow()
    mlflow.set_tracking_uri(tracking_uri or default_tracking_uri())
    try:
        with _active_or_new_run(mlflow, experiment, tracking_uri or default_tracking_uri()):
            info = mlflow.pyfunc.log_model(
                name=PYFUNC_ARTIFACT,
                python_model=str(package / "serving" / "pyfunc_model.py"),
                artifacts={"version": str(version_path)},
                code_paths=[str(package), str(package.parent / "tokenization")],
                pip_requirements=requirements,
                input_example=["a moving, funny film", "dull"],
                registered_model_name=registered_name,
            )
    except Exception as exc:
        raise TrackingError(f"MLflow refused to log {version_path} as a pyfunc: {_first_line(exc)}.") from None
    if registered_name and info.registered_model_version is not None:
        return f"models:/{registered_name}/{info.registered_model_version}"
    return info.model_uri


@contextmanager
def _active_or_new_run(mlflow: Any, experiment: str, uri: str) -> Iterator[None]:
    if mlflow.active_run() is not None:
        yield
        return
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = found.experiment_id
    else:  # beside the database, as Tracker does, never a ./mlruns under the working directory
        location = str(Path(uri.removeprefix("sqlite:///")).parent / "artifacts") if uri.startswith("sqlite:///") \
            else None
        experiment_id = mlflow.create_experiment(experiment, artifact_location=location)
    with mlflow.start_run(experiment_id=experiment_id, tags={"lifecycle.step": "pyfunc"}):
        yield


def registered_versions(name: str | None = None, tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """Registered versions with their lineage tags and metrics, sorted by model name and version.

    Each row: model name, version number, kind, recipe, run id, parent run id, test accuracy, size, aliases.
    """
    import mlflow

    client = mlflow.MlflowClient(tracking_uri or default_tracking_uri())
    names = [name] if name else [m.name for m in client.search_registered_models()]
    rows = []
    for model_name in names:
        for mv in client.search_model_versions(f"name='{model_name}'"):
            run = client.get_run(mv.run_id) if mv.run_id else None
            metrics = run.data.metrics if run else {}
            rows.append({
                "name": model_name, "version": int(mv.version), "kind": mv.tags.get("lifecycle.kind", ""),
                "recipe": mv.tags.get("lifecycle.recipe", "-"), "run_id": mv.run_id,
                "parent_run": mv.tags.get("lifecycle.parent_run", ""),
                "test_accuracy": metrics.get("test_accuracy"), "size_bytes": metrics.get("size_bytes"),
                "aliases": list(getattr(mv, "aliases", []) or []),
            })
    return sorted(rows, key=lambda r: (r["name"], r["version"]))
