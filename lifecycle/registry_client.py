"""MLflow's model registry and artifact store reached without mlflow: the store's URI, registry references, REST
look-ups and version copies.

`lifecycle serve` watches registry aliases from a process that must stay small: importing mlflow costs about 4 s
and 118 MB of RSS (measured with mlflow 3.17.2), more than the ten models it serves. So this module never imports
mlflow: against an MLflow tracking server (http/https URI) it speaks the REST API with urllib, and it copies a
version directory that is a local path or behind the server's artifact proxy. Everything else (a look-up in a sqlite
or file store, a download from s3:, gs:, ...) needs the mlflow client: :func:`lifecycle.tracking.lookup_registry` and
:func:`lifecycle.tracking.download_source` do both, using this module where it suffices, and `lifecycle serve` runs
them in a short-lived helper process (:mod:`lifecycle.serving.sources`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifecycle.config import project_root
from lifecycle.errors import ConfigError, TrackingError, first_line

# The artifact directory of a run that holds its version (what a registered version's source pointed at before
# versions were registered as MLflow models).
VERSION_ARTIFACT = "version"
# Where the version directory sits inside a registered version's MLflow model (the pyfunc's ``version`` artifact).
PYFUNC_VERSION_PATH = f"artifacts/{VERSION_ARTIFACT}"


def is_model_source(source: str) -> bool:
    """Whether a registered version's source is a logged MLflow model (``models:/<model id>``), whose files sit at
    the version's download URI, rather than a folder of artifacts."""
    return source.startswith("models:/")


def version_dir_in(download_uri: str) -> str:
    """The version directory inside a registered MLflow model whose files are at ``download_uri``."""
    return f"{download_uri.rstrip('/')}/{PYFUNC_VERSION_PATH}"


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` (a relative SQLite path made absolute), else SQLite under ``<project root>/mlruns``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return absolute_uri(env)
    return f"sqlite:///{project_root() / 'mlruns' / 'mlflow.db'}"


def absolute_uri(uri: str) -> str:
    """A ``sqlite:///`` URI with a relative path (``sqlite:///mlflow.db``, MLflow's own default) made absolute against
    the working directory, where MLflow would open it; so the experiment's artifact location, derived from the
    database's folder, is absolute too. Other URIs are returned as they are."""
    if not uri.startswith("sqlite:///"):
        return uri
    path, sep, query = uri.removeprefix("sqlite:///").partition("?")
    if not path or path == ":memory:" or Path(path).is_absolute():
        return uri
    return f"sqlite:///{Path(path).resolve()}{sep}{query}"


@dataclass(frozen=True)
class RegistryEntry:
    """Where a registry reference points: ``models:/name@alias``, ``models:/name/<n>`` or ``runs:/<id>``."""

    ref: str
    name: str | None
    version: str | None  # the registered version number; None for runs:/
    source: str  # the artifact URI of the version directory (inside the registered MLflow model)
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


def rest_lookup(ref: str, uri: str) -> RegistryEntry:
    """Where a registry reference points now, asked of the tracking server at ``uri`` (an http/https URI) in one
    REST call; an alias is read afresh on every call.

    Raises:
        ConfigError: a malformed reference.
        TrackingError: the server is unreachable, or the name, alias, version or run does not exist.
    """
    form, first, second = parse_registry_ref(ref)
    if form == "run":
        info = _rest(uri, "runs/get", {"run_id": first})["run"]["info"]
        return RegistryEntry(ref, None, None, f"{info['artifact_uri']}/{second}", first)
    if form == "alias":
        found = _rest(uri, "registered-models/alias", {"name": first, "alias": second})["model_version"]
    else:
        found = _rest(uri, "model-versions/get", {"name": first, "version": second})["model_version"]
    source = found["source"]
    if is_model_source(source):  # the model's files are where the registry says to download them from
        where = _rest(uri, "model-versions/get-download-uri", {"name": found["name"], "version": found["version"]})
        source = version_dir_in(where["artifact_uri"])
    return RegistryEntry(ref, found["name"], str(found["version"]), source, found.get("run_id"))


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
        raise TrackingError(f"MLflow at {uri} refused {endpoint} ({exc.code}: {first_line(Exception(detail))}).",
                            "Check the model name, alias or version in the registry.") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(f"MLflow at {uri} cannot be reached ({reason}).",
                            "Start the tracking server or fix tracking_uri / MLFLOW_TRACKING_URI.") from None


def wait_reachable(uri: str, seconds: float) -> None:
    """Return once the tracking server at ``uri`` answers any HTTP request (``/health``), trying with doubling waits
    for up to ``seconds`` (a server being restarted comes back).

    Raises:
        TrackingError: nothing answered, in one line naming the URI and the fix.
    """
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + seconds
    delay, tries = 0.25, 0
    while True:
        tries += 1
        try:
            with urllib.request.urlopen(urllib.request.Request(f"{uri.rstrip('/')}/health",
                                                               headers=_auth_headers()), timeout=5):
                return
        except urllib.error.HTTPError:  # it answered (an auth proxy, another path): reachable
            return
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if time.monotonic() + delay > deadline:
                raise TrackingError(
                    f"MLflow tracking server at {uri} cannot be reached ({reason}; {tries} tries over "
                    f"{seconds:.0f} s).", "Start it (`make server` prints its MLFLOW_TRACKING_URI), fix "
                    "MLFLOW_TRACKING_URI / tracking.uri, or pass --no-track.") from None
            time.sleep(delay)
            delay = min(delay * 2, 4.0)


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


def copies_without_mlflow(source: str, uri: str) -> bool:
    """Whether :func:`copy_source` can fetch ``source``: a local path, or ``mlflow-artifacts:`` behind the HTTP
    tracking server at ``uri``."""
    return local_source_path(source) is not None or (source.startswith("mlflow-artifacts:") and is_http_uri(uri))


def copy_source(source: str, dst: Path, uri: str) -> Path:
    """Copy a registry entry's artifact directory to ``dst`` (which must not exist) and return it: a local directory
    is copied, an ``mlflow-artifacts:`` one is fetched through the tracking server's REST API.

    Raises:
        TrackingError: the source cannot be listed or read, or :func:`copies_without_mlflow` is False for it.
    """
    with download_cleanup(source, dst, uri):
        local = local_source_path(source)
        if local is not None:
            if not local.is_dir():
                raise TrackingError(f"{source}: the registered version's directory is missing from the artifact store.")
            shutil.copytree(local, dst)
        elif source.startswith("mlflow-artifacts:") and is_http_uri(uri):
            _download_proxied(uri, _proxied_path(source), dst)
        else:
            raise TrackingError(f"{source}: only the mlflow client can download it; use "
                                "lifecycle.tracking.download_source.")
    return dst


@contextmanager
def download_cleanup(source: str, dst: Path, uri: str) -> Iterator[None]:
    """Around a download into ``dst``: on any failure remove what was written; an unexpected error becomes one
    TrackingError line naming the source and the store."""
    try:
        yield
    except TrackingError:
        shutil.rmtree(dst, ignore_errors=True)
        raise
    except Exception as exc:
        shutil.rmtree(dst, ignore_errors=True)
        raise TrackingError(f"{source}: cannot be downloaded from MLflow at {uri} ({first_line(exc)}).") from None


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
