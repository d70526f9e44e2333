"""The ``lifecycle serve`` config: a strict YAML schema (a misspelt key is an error naming it), plus flag overrides.

```yaml
host: 127.0.0.1
port: 8000
poll_seconds: 30              # how often watched aliases are checked (SIGHUP checks at once)
models:
  sentiment: models:/mr-word@champion   # watched: the service follows the alias
  topics:
    version: versions/trec-word-compressed-20261126-101500
    threads: 2
    abstain: 0.7              # under 0.7 (calibrated top probability) the answer is "unknown"
limits: {max_body_bytes: 1048576, max_texts: 256, max_text_chars: 10000, max_in_flight: 256,
         body_timeout_seconds: 10, header_timeout_seconds: 10, keep_alive_seconds: 5,
         max_connections: null, max_connections_per_client: 128}
batching: {max_batch: 8, max_wait_ms: 0}
```

Precedence, low to high: schema defaults < the YAML file < ``--model NAME=VERSION`` (adds or replaces one model) <
``--host`` / ``--port``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lifecycle.config import read_yaml, validate_schema
from lifecycle.errors import ConfigError

# Model names appear in URLs (/v1/models/<name>:predict) and metric labels: keep them to URL-safe words.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Section):
    version: str = Field(
        ...,
        min_length=1,
        description="A frozen or compressed version with a serving form: a directory, runs:/<run_id>, "
        "models:/<name>/<n>, or models:/<name>@<alias> (watched: when the alias moves, the new version is "
        "loaded, checked and switched in).",
    )
    threads: int | None = Field(None, ge=1, le=64, description="LiteRT interpreter threads; default `threads`.")
    abstain: float | None = Field(
        None, ge=0, le=1, allow_inf_nan=False, description="Abstain threshold: a text whose calibrated top "
        "probability is under it is answered with the label 'unknown' (and \"abstained\": true); default the "
        "version's calibration.abstain_threshold, 0 always answers. A request's own `abstain` overrides it.")


class LimitsConfig(_Section):
    max_body_bytes: int = Field(1 << 20, ge=256, description="Largest request body; larger ones get 413.")
    max_texts: int = Field(256, ge=1, description="Most texts in one predict request; more get 400.")
    max_text_chars: int = Field(10_000, ge=1, description="Longest text (in characters); longer ones get 400. "
                                "Texts are cut to the model's max_len tokens anyway; this bounds tokenizing work.")
    max_in_flight: int = Field(
        256,
        ge=1,
        description="Predict requests being served at once (from reading the body to the answer); "
        "the next one gets 503 with Retry-After at once instead of waiting in an unbounded queue. Connections still "
        "sending their headers, or idle between requests, do not count: max_connections bounds those.",
    )
    body_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Time allowed to receive a predict request's whole body; a client still sending after it gets "
        "408 and the connection is closed, so a slow client cannot hold one of max_in_flight for long. It also bounds "
        "the rest of a body the server answered without reading (404, 405, 413): past it the connection is closed.",
    )
    header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Time allowed to receive a request's line and headers, counted from the connection (or, on a "
        "kept-alive connection, from the next request's first byte); past it the client gets 408 and the connection "
        "is closed. Such a connection does not keep complete requests from being served, but it holds one of "
        "max_connections (and a file descriptor): without this, clients that never finish their headers would keep "
        "them for as long as they liked, and new connections past max_connections would be refused.",
    )
    keep_alive_seconds: int = Field(
        5,
        ge=1,
        le=3600,
        description="How long a kept-alive connection may sit idle between requests before it is closed (uvicorn's "
        "timeout_keep_alive, whole seconds); idle connections count against max_connections too.",
    )
    max_connections: int | None = Field(
        None,
        ge=1,
        description="Most connections open at once, whatever they are doing (being served, sending their headers, "
        "idle between requests); a new one past it is answered 503 (with Retry-After) and closed before its request "
        "is read, while the open ones are served as before. It bounds file descriptors and per-connection memory; "
        "requests being served are bounded by max_in_flight. Default (null): min(1024, the process's open-file soft "
        "limit - 320), resolved at start; a value above that soft limit - 320 fails at start (raise ulimit -n).",
    )
    max_connections_per_client: int = Field(
        128,
        ge=1,
        description="Most connections open at once from one client address; the next one is answered 503 (with "
        "Retry-After) and closed before its request is read, so one client cannot take all of max_connections. "
        "Behind a reverse proxy every connection comes from the proxy's address: raise it above the proxy's "
        "connection pool (and max_connections with it).",
    )


class BatchingConfig(_Section):
    max_batch: int = Field(
        8,
        ge=1,
        le=4096,
        description="Most texts in one interpreter call: queued requests for one model are joined up to this, and a "
        "larger request runs in calls of this size. Each model's interpreter holds activation memory for this many "
        "texts (about 0.2 MB each for a 300-d model, claimed at load), while the time per text hardly depends on it.",
    )
    max_wait_ms: float = Field(
        0.0,
        ge=0,
        le=1000,
        description="How long a request waits for others to join its batch; 0 batches only requests already "
        "queued behind a running one (no added latency when idle).",
    )


class ServeConfig(_Section):
    host: str = Field("127.0.0.1", min_length=1, description="Address to listen on (0.0.0.0: every interface).")
    port: int = Field(8000, ge=0, le=65535, description="TCP port; 0 picks a free one (the URL is printed).")
    models: dict[str, ModelSpec] = Field(
        default_factory=dict, description="Served models by name: a VERSION string, or {version, threads, abstain}."
    )
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI for runs:/ and models:/ versions; default $MLFLOW_TRACKING_URI, else the "
        "project's sqlite store. An http(s) server is polled over its REST API; any other store through a "
        "short-lived helper process (importing mlflow costs 4 s and 118 MB, kept out of the server).",
    )
    poll_seconds: float = Field(
        30.0, ge=0, description="Seconds between checks of watched aliases; 0 checks only on SIGHUP."
    )
    threads: int = Field(1, ge=1, le=64, description="LiteRT interpreter threads per model (one model = one "
                                                     "inference worker, so more models use more cores).")
    limits: LimitsConfig = LimitsConfig()
    batching: BatchingConfig = BatchingConfig()

    @field_validator("models", mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {key: {"version": spec} if isinstance(spec, str) else spec for key, spec in value.items()}
        return value

    @model_validator(mode="after")
    def _check_names(self) -> ServeConfig:
        for name in self.models:
            if not re.match(NAME_PATTERN, name):
                raise ValueError(f"model name {name!r} must be 1-64 letters, digits, '_', '.' or '-' (it is part "
                                 "of the URL /v1/models/<name>:predict)")
        return self


def parse_model_flags(pairs: Iterable[str]) -> dict[str, dict[str, str]]:
    """``["sentiment=models:/mr@champion"]`` -> ``{"sentiment": {"version": "models:/mr@champion"}}``."""
    found: dict[str, dict[str, str]] = {}
    for pair in pairs:
        name, sep, version = pair.partition("=")
        if not sep or not name.strip() or not version.strip():
            raise ConfigError(f"--model {pair!r} is malformed: expected NAME=VERSION, e.g. "
                              "--model sentiment=models:/mr-word@champion.")
        found[name.strip()] = {"version": version.strip()}
    return found


def load_serve_config(path: Path | None, models: Iterable[str] = (), host: str | None = None,
                      port: int | None = None) -> ServeConfig:
    """Read, merge and validate the serve config.

    Raises:
        ConfigError: naming the file (or flag), the dotted key, the value and the fix; also when no model is given.
    """
    data: dict[str, Any] = read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "serve flags"
    flagged = parse_model_flags(models)
    if flagged:
        given = data.get("models") or {}
        if not isinstance(given, Mapping):
            raise ConfigError(f"{source}: models must be a mapping of name -> version.")
        data["models"] = {**given, **flagged}
    if host is not None:
        data["host"] = host
    if port is not None:
        data["port"] = port
    cfg = validate_schema(ServeConfig, data, source, "Allowed: host, port, models, tracking_uri, poll_seconds, "
                          "threads, limits, batching (see lifecycle/serving/config.py).")
    if not cfg.models:
        raise ConfigError(f"{source}: no models to serve. Give --model NAME=VERSION or a `models:` section.")
    return cfg
