"""The HTTP JSON service: Starlette routes over a ``Registry``, run by uvicorn.

- ``POST /v1/models/{name}:predict`` ``{"texts": [...], "top_k": k}`` -> each text's label, probability and top k,
  with the model version that answered;
- ``GET /v1/models`` (and ``/v1/models/{name}``): version, source, sizes, load time, requests served, the last
  refused roll-out and why;
- ``GET /healthz``: liveness, memory, and whether TensorFlow or mlflow were ever imported (they must not be);
- ``GET /metrics``: Prometheus text.

A client's input only ever selects a loaded model by name and becomes token ids: no request reads or writes a file.
Limits answer early and cheaply: 413 for a body over ``max_body_bytes``, 408 (and the connection closed) for a body
not received within ``body_timeout_seconds``, 400 for malformed JSON, wrong types, non-UTF-8 bytes or too many / too
long texts, 404 for an unknown model, 503 with Retry-After when ``max_in_flight`` requests are already being served
(no unbounded queue).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from lifecycle.errors import ConfigError
from lifecycle.serving.config import LimitsConfig, ServeConfig
from lifecycle.serving.metrics import CONTENT_TYPE, UNKNOWN_MODEL, Metrics, rss_bytes
from lifecycle.serving.registry import ModelSlot, Registry

log = logging.getLogger(__name__)

_FIELDS = ("texts", "top_k")


class _ClientError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _read_body(request: Request, limits: LimitsConfig) -> bytes:
    limit = limits.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _ClientError(413, f"request body is {int(declared)} bytes; the limit is {limit} "
                                "(limits.max_body_bytes). Send fewer or shorter texts per request.")
    body = bytearray()
    try:
        async with asyncio.timeout(limits.body_timeout_seconds):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise _ClientError(413, f"request body is over {limit} bytes (limits.max_body_bytes). Send "
                                            "fewer or shorter texts per request.")
    except TimeoutError:
        # The rest of the body may still arrive: the connection cannot carry another request, so it is closed.
        raise _ClientError(408, f"request body not received within {limits.body_timeout_seconds:g} s "
                                f"({len(body)} bytes arrived; limits.body_timeout_seconds). Send the whole body at "
                                "once.", {"Connection": "close"}) from None
    return bytes(body)


def parse_predict(body: bytes, limits: LimitsConfig) -> tuple[list[str], int]:
    """Texts and top_k from a predict body, or a ``_ClientError`` (400) saying exactly what is wrong."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _ClientError(400, f"request body is not UTF-8 (invalid byte at offset {exc.start}); send JSON "
                                "encoded as UTF-8.") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _ClientError(400, f"request body is not valid JSON ({exc.msg} at line {exc.lineno} column "
                                f"{exc.colno}); send {{\"texts\": [\"...\"]}}.") from None
    except (RecursionError, ValueError) as exc:  # nesting too deep, or an integer too long to convert
        raise _ClientError(400, f"request body is not usable JSON ({type(exc).__name__}); send "
                                "{\"texts\": [\"...\"]}.") from None
    if not isinstance(data, dict):
        raise _ClientError(400, f"request body must be a JSON object like {{\"texts\": [\"...\"]}}; received a "
                                f"{_json_type(data)}.")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise _ClientError(400, f"unknown field(s) {', '.join(map(repr, unknown))}; allowed: texts, top_k.")
    if "texts" not in data:
        raise _ClientError(400, "field 'texts' is required: a list of strings.")
    texts = data["texts"]
    if not isinstance(texts, list):
        raise _ClientError(400, f"'texts' must be a list of strings; received a {_json_type(texts)}.")
    if not texts:
        raise _ClientError(400, "'texts' is empty; send at least one text.")
    if len(texts) > limits.max_texts:
        raise _ClientError(400, f"'texts' holds {len(texts)} texts; this server takes at most {limits.max_texts} "
                                "per request (limits.max_texts). Split the request.")
    for i, item in enumerate(texts):
        if not isinstance(item, str):
            raise _ClientError(400, f"texts[{i}] must be a string; received a {_json_type(item)}.")
        if len(item) > limits.max_text_chars:
            raise _ClientError(400, f"texts[{i}] is {len(item)} characters; the limit is {limits.max_text_chars} "
                                    "(limits.max_text_chars).")
        try:
            item.encode("utf-8")
        except UnicodeEncodeError:
            raise _ClientError(400, f"texts[{i}] holds an unpaired surrogate escape (\\ud800-\\udfff); send valid "
                                    "Unicode.") from None
    top_k = data.get("top_k", 1)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise _ClientError(400, f"'top_k' must be an integer >= 1; received {json.dumps(top_k)[:40]}.")
    return texts, top_k


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _predictions(labels: tuple[str, ...], probabilities: np.ndarray, top_k: int) -> list[dict[str, Any]]:
    k = min(top_k, len(labels))
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    out = []
    for row, best in zip(probabilities, order, strict=True):
        top = [{"label": labels[i], "probability": round(float(row[i]), 6)} for i in best]
        out.append({"label": top[0]["label"], "probability": top[0]["probability"], "top": top})
    return out


def model_info(slot: ModelSlot) -> dict[str, Any]:
    """One model's row of ``GET /v1/models``."""
    model = slot.current
    refused = slot.last_refused
    return {
        "name": slot.name,
        "source": slot.source.ref,
        "watched": slot.source.watched,
        "version": model.label,
        "registered_version": model.fetched.registered,
        "path": str(model.fetched.path),
        "kind": model.kind,
        "recipe": model.recipe,
        "labels": list(model.labels),
        "size_bytes": model.size_bytes,
        "serving_bytes": model.serving_bytes,
        "loaded_at": model.loaded_at,
        "requests_served": slot.served,
        "requests_served_by_version": model.served,
        "texts_served_by_version": model.texts_served,
        "batches_run_by_version": model.batches_run,
        "in_flight": model.in_flight,
        "switches": slot.switches,
        "last_check": slot.last_check,
        "last_check_error": slot.last_check_error,
        "refusing": slot.refusing,
        "last_refused": None if refused is None else {"version": refused.version, "reason": refused.reason,
                                                      "at": refused.at},
    }


def build_app(registry: Registry, cfg: ServeConfig) -> Starlette:
    """The Starlette application over a loaded registry."""
    limits = cfg.limits
    metrics = Metrics()
    state = {"in_flight": 0}

    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        name = request.path_params["name"]
        slot = registry.slots.get(name)
        if slot is None:
            metrics.observe(UNKNOWN_MODEL, 404, 0.0, 0)
            return _error(404, f"model {name[:80]!r} is not served here; GET /v1/models lists the names.")
        if state["in_flight"] >= limits.max_in_flight:
            metrics.observe(name, 503, 0.0, 0)
            return _error(503, f"overloaded: {limits.max_in_flight} requests in flight (limits.max_in_flight); "
                               "retry shortly.", {"Retry-After": "1"})
        state["in_flight"] += 1
        try:
            try:
                texts, top_k = parse_predict(await _read_body(request, limits), limits)
            except _ClientError as exc:
                metrics.observe(name, exc.status, 0.0, 0)
                return _error(exc.status, exc.message, exc.headers)
            model = slot.acquire()
            served: int | None = None
            try:
                probabilities = await asyncio.wrap_future(model.submit(texts))
                served = len(texts)
            except Exception as exc:  # a model failing on valid input is our fault, not the client's
                log.error("%s (%s): prediction failed: %s: %s", name, model.label, type(exc).__name__, exc)
                metrics.observe(name, 500, 0.0, 0)
                return _error(500, f"model {name!r} failed on this request ({type(exc).__name__}); the server log "
                                   "has the details.")
            finally:
                slot.release(model, served)
            body = {"model": name, "version": model.label, "predictions": _predictions(model.labels, probabilities,
                                                                                        top_k)}
        finally:
            state["in_flight"] -= 1
        metrics.observe(name, 200, time.perf_counter() - started, len(texts))
        return JSONResponse(body)

    async def list_models(request: Request) -> Response:
        return JSONResponse({"models": [model_info(slot) for slot in registry.slots.values()]})

    async def get_model(request: Request) -> Response:
        name = request.path_params["name"]
        if name.endswith(":predict") and name.removesuffix(":predict") in registry.slots:
            return _error(405, f"GET {request.url.path[:100]}: use POST with {{\"texts\": [...]}}.",
                          {"Allow": "POST"})
        slot = registry.slots.get(name)
        if slot is None:
            return _error(404, f"model {request.path_params['name'][:80]!r} is not served here; GET /v1/models "
                               "lists the names.")
        return JSONResponse(model_info(slot))

    async def healthz(request: Request) -> Response:
        return JSONResponse({
            "status": "ok",
            "pid": os.getpid(),
            "models": {name: slot.current.label for name, slot in registry.slots.items()},
            "uptime_seconds": round(time.time() - registry.started, 3),
            "rss_bytes": rss_bytes(),
            "in_flight": state["in_flight"],
            "tensorflow_imported": "tensorflow" in sys.modules,
            "mlflow_imported": "mlflow" in sys.modules,
        })

    async def prometheus(request: Request) -> Response:
        return Response(metrics.render(registry, state["in_flight"]), media_type=CONTENT_TYPE)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, f"{request.method} {request.url.path[:100]}: {exc.detail}", exc.headers)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return _error(500, f"internal error ({type(exc).__name__}); the server log has the details.")

    routes = [
        Route("/v1/models/{name}:predict", predict, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{name}", get_model, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: server_error})
    app.state.registry = registry
    return app


def _listen(host: str, port: int) -> socket.socket:
    """A bound, listening socket, so a taken port is a one-line error and port 0 picks a free one."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --host/--port "
                          "(or port: 0 for any free port).") from None
    return sock


def run_server(cfg: ServeConfig, ready: Callable[[str], None] | None = None) -> None:
    """Load every model, then serve until SIGINT/SIGTERM; SIGHUP checks watched aliases at once.

    Args:
        cfg: the validated serve config.
        ready: called with the base URL once the models are loaded and the port listens.

    Raises:
        ConfigError: the address cannot be bound.
        ModelError, TrackingError: a configured model cannot be fetched or fails its checks.
    """
    import uvicorn

    registry = Registry(cfg)
    registry.load()
    try:
        sock = _listen(cfg.host, cfg.port)
        host, port = sock.getsockname()[:2]
        # limit_concurrency: past this many connections or tasks uvicorn itself answers 503, so a connection flood
        # cannot grow memory without bound either (headroom above max_in_flight for /healthz and /metrics).
        server = uvicorn.Server(uvicorn.Config(build_app(registry, cfg), log_level="warning", access_log=False,
                                               lifespan="off", server_header=False, timeout_graceful_shutdown=10,
                                               limit_concurrency=cfg.limits.max_in_flight + 64))
        # uvicorn handles SIGINT/SIGTERM itself (graceful shutdown), then re-raises the signal into the handlers it
        # found: make those no-ops so run() returns, the models are released and the exit status is 0.
        received: list[int] = []
        handlers = {signal.SIGINT: lambda signum, frame: received.append(signum),
                    signal.SIGTERM: lambda signum, frame: received.append(signum),
                    signal.SIGHUP: lambda signum, frame: registry.request_check()}
        previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
        try:
            registry.start()
            url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
            log.info("serving %s on %s (pid %d)", ", ".join(registry.slots), url, os.getpid())
            if ready is not None:
                ready(url)
            server.run(sockets=[sock])
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        log.info("stopped%s", f" by {signal.Signals(received[0]).name}" if received else "")
    finally:
        registry.close()
