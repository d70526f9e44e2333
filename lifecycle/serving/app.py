"""The HTTP JSON service: Starlette routes over a ``Registry``, run by uvicorn.

- ``POST /v1/models/{name}:predict`` ``{"texts": [...], "top_k": k, "abstain": p}`` -> each text's label, its
  calibrated probability, the top k and whether it abstained (label ``unknown``: top probability under the
  threshold: the request's ``abstain``, else the served model's, else the version's), with the version that answered;
- ``GET /v1/models`` (and ``/v1/models/{name}``): version, source, sizes, load time, requests served, the last
  refused roll-out and why;
- ``GET /healthz``: liveness, memory, and whether TensorFlow or mlflow were ever imported (they must not be);
- ``GET /metrics``: Prometheus text.

A client's input only ever selects a loaded model by name and becomes token ids: no request reads or writes a file.
Limits answer early and cheaply: 413 for a body over ``max_body_bytes``, 408 (and the connection closed) for a body
not received within ``body_timeout_seconds``, 400 for malformed JSON, wrong types, non-UTF-8 bytes or too many / too
long texts, 404 for an unknown model, 503 with Retry-After when ``max_in_flight`` requests are already being served
(no unbounded queue).

Connections are limited apart from requests, by the protocol (``guarded_protocol``) before any request reaches
the app. ``max_in_flight`` counts only requests being served, so a connection still sending its headers, or idle
between requests, never takes a request's place; uvicorn's own ``limit_concurrency`` (which counts every open
connection and answers 503 past it) is off. What an open connection costs, a file descriptor and a little memory,
is bounded on its own:

- at most ``max_connections`` connections are open at once (default min(1024, the open-file soft limit - 320),
  resolved at start; a value the soft limit cannot hold is a ConfigError): a new one past them is answered 503
  with Retry-After and closed before its request is read, while the open ones are served as before;
- at most ``max_connections_per_client`` of them from one client address: past that, 503 and closed the same way,
  so one client cannot take every connection;
- a connection whose request line and headers are not complete within ``header_timeout_seconds`` (from the
  connection, or from the next request's first byte on a kept-alive one) gets 408 and is closed: a client that sends
  half its headers and then nothing cannot hold a connection for longer than that;
- the rest of a body the app answered without reading (404, 405, 413 on the declared length) must arrive within
  ``body_timeout_seconds``, else the connection is closed; a kept-alive connection idle for ``keep_alive_seconds``
  between requests is closed (uvicorn's own timer, re-armed where uvicorn would leave it unarmed).

A refused connection is kept open for a second (reading and dropping what the client sends, so it reads the 503
rather than a reset), at most 256 of them at once; more are closed at once. ``/healthz`` reports the open
connections and how many were refused or timed out; refusals are logged at most once a minute.
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
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from lifecycle.calibration import UNKNOWN, abstains
from lifecycle.errors import ConfigError
from lifecycle.serving.config import LimitsConfig, ServeConfig
from lifecycle.serving.metrics import CONTENT_TYPE, UNKNOWN_MODEL, Metrics, rss_bytes
from lifecycle.serving.registry import ModelSlot, Registry

log = logging.getLogger(__name__)

_FIELDS = ("texts", "top_k", "abstain")
# A refused connection stays open this long (reading and dropping what the client sends) so the client reads the 503
# and an EOF rather than a reset; it no longer counts against any limit meanwhile.
_REFUSED_LINGER_SECONDS = 1.0
# At most this many refused connections linger at once; past it they are closed at once (the client may then see a
# reset instead of the 503), so a flood of refused connections cannot run the process out of file descriptors.
_MAX_LINGERING = 256
# File descriptors kept out of the connection budget: the listening socket, stdio, model files, the tracking
# helper's pipes.
_FD_RESERVE = 64
_DEFAULT_MAX_CONNECTIONS = 1024
# Refusals are logged at most this often (the counts are in /healthz): a flood must not become a log flood.
_REFUSAL_LOG_SECONDS = 60.0


class _ClientError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _raw_error(status: int, message: str, headers: dict[str, str] | None = None) -> bytes:
    """A whole JSON error response that closes the connection, written by the protocol itself (no request read)."""
    body = json.dumps({"error": message}).encode()
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "content-type: application/json",
             f"content-length: {len(body)}", "connection: close", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return "\r\n".join([*lines, "", ""]).encode("ascii") + body


@dataclass
class ConnectionStats:
    """Open connections, in all and by client address, and what the limits did; kept on the event loop's thread."""

    open: int = 0
    open_by_client: Counter[str] = field(default_factory=Counter)
    max_connections: int | None = None  # resolved at start; set by guarded_protocol
    refused: int = 0  # over max_connections_per_client
    refused_total: int = 0  # over max_connections
    lingering: int = 0  # refused connections still open for their linger
    header_timeouts: int = 0
    unread_body_timeouts: int = 0
    next_refusal_log: float = 0.0  # event-loop time before which refusals are not logged

    def as_dict(self) -> dict[str, int | None]:
        return {"open": self.open, "clients": len(self.open_by_client), "max_connections": self.max_connections,
                "refused_max_connections": self.refused_total, "refused_per_client_limit": self.refused,
                "refused_lingering": self.lingering, "header_timeouts": self.header_timeouts,
                "unread_body_timeouts": self.unread_body_timeouts}


def resolve_max_connections(limits: LimitsConfig, soft_limit: int | None = None) -> int:
    """``limits.max_connections``, or its default, checked against the open-file soft limit.

    Each connection, and each refused one while it lingers (at most ``_MAX_LINGERING``), holds a file descriptor;
    ``_FD_RESERVE`` more are kept for everything else. Past the soft limit accept() fails and the server stops
    accepting for a while, so the cap has to stay under it.

    Args:
        limits: ``max_connections`` (None: min(1024, what the soft limit leaves)).
        soft_limit: RLIMIT_NOFILE's soft value; default this process's.

    Returns:
        The number of connections to allow open at once.

    Raises:
        ConfigError: the value (or, for the default, any value) does not fit under the soft limit.
    """
    if soft_limit is None:
        import resource

        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft_limit == resource.RLIM_INFINITY:
            soft_limit = 1 << 20
    reserved = _FD_RESERVE + _MAX_LINGERING
    room = soft_limit - reserved
    wanted = limits.max_connections
    if wanted is None:
        if room < 1:
            raise ConfigError(f"the open-file limit (ulimit -n) is {soft_limit}: too low to serve, as {reserved} "
                              "descriptors are kept for files and refused connections. Raise it (ulimit -n 4096).")
        return min(_DEFAULT_MAX_CONNECTIONS, room)
    if wanted > room:
        raise ConfigError(f"limits.max_connections is {wanted}, but the open-file limit (ulimit -n) is {soft_limit}, "
                          f"{reserved} of which are kept for files and refused connections. Set limits."
                          f"max_connections to at most {max(room, 1)} or raise ulimit -n to {wanted + reserved}.")
    return wanted


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


def parse_predict(body: bytes, limits: LimitsConfig) -> tuple[list[str], int, float | None]:
    """Texts, top_k and abstain (None: not given) from a predict body, or a ``_ClientError`` (400) saying exactly
    what is wrong."""
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
        raise _ClientError(400, f"unknown field(s) {', '.join(map(repr, unknown))}; allowed: texts, top_k, "
                                "abstain.")
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
    abstain = data.get("abstain")
    if abstain is not None and (isinstance(abstain, bool) or not isinstance(abstain, int | float)
                                or not 0 <= abstain <= 1):
        raise _ClientError(400, "'abstain' must be a probability from 0 to 1 (0: always answer) or null; received "
                                f"{json.dumps(abstain)[:40]}.")
    return texts, top_k, None if abstain is None else float(abstain)


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _predictions(labels: tuple[str, ...], probabilities: np.ndarray, top_k: int, abstain: float | None = None
                 ) -> list[dict[str, Any]]:
    k = min(top_k, len(labels))
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    out = []
    for row, best, refused in zip(probabilities, order, abstains(probabilities, abstain), strict=True):
        top = [{"label": labels[i], "probability": round(float(row[i]), 6)} for i in best]
        out.append({"label": UNKNOWN if refused else top[0]["label"], "probability": top[0]["probability"],
                    "abstained": bool(refused), "top": top})
    return out


def _abstain_threshold(slot: ModelSlot, model: Any, requested: float | None) -> float | None:
    """The request's threshold, else the served model's (``models.NAME.abstain``), else the version's default."""
    if requested is not None:
        return requested
    return slot.spec.abstain if slot.spec.abstain is not None else model.abstain_threshold


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
        "temperature": model.temperature,
        "abstain_threshold": _abstain_threshold(slot, model, None),
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
    connections = ConnectionStats()

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
                texts, top_k, abstain = parse_predict(await _read_body(request, limits), limits)
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
            threshold = _abstain_threshold(slot, model, abstain)
            body = {"model": name, "version": model.label, "abstain_threshold": threshold,
                    "predictions": _predictions(model.labels, probabilities, top_k, threshold)}
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
            "connections": connections.as_dict(),
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
    app.state.connections = connections
    return app


def guarded_protocol(limits: LimitsConfig, stats: ConnectionStats, max_connections: int
                     ) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol under the connection limits of the module docstring (for ``Config(http=...)``).

    uvicorn 0.54 arms a timer only after a response (``timeout_keep_alive``), and the first byte of data cancels it:
    a connection that never completes its headers, or that trickles the body of a request already answered, has no
    deadline at all. Here, whenever none of the connection's requests is in the app, one deadline is armed: the
    header timeout, the unread-body timeout, or uvicorn's keep-alive timer.

    The protocol also does the connection counting: uvicorn's ``limit_concurrency`` would count connections that
    are only waiting for their headers, or idle, against requests, so it is left off.

    Args:
        limits: header_timeout_seconds, body_timeout_seconds and max_connections_per_client are read from it.
        stats: shared by every connection of the server (the counts); ``/healthz`` shows it.
        max_connections: the resolved ``limits.max_connections`` (``resolve_max_connections``).

    Returns:
        A protocol class for ``uvicorn.Config(http=...)``; each server needs its own (the counts live in ``stats``).
    """
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.protocols.utils import get_remote_addr

    stats.max_connections = max_connections

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.deadline: asyncio.TimerHandle | None = None
            self.peer: str | None = None  # the address this connection is counted under
            self.refused = False
            self.lingering = False  # refused, and counted in stats.lingering until it closes
            self.receiving = False  # between a request's first byte and its last

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            address = get_remote_addr(transport)
            host = address[0] if address else None
            if host is not None and stats.open_by_client[host] >= limits.max_connections_per_client:
                stats.refused += 1
                self._refuse(transport, f"too many connections from {host}: at most "
                                        f"{limits.max_connections_per_client} at once "
                                        "(limits.max_connections_per_client); reuse or close open ones.",
                             f"{host} has {limits.max_connections_per_client} open (limits.max_connections_per_client)")
                return
            if stats.open >= max_connections:
                stats.refused_total += 1
                self._refuse(transport, f"server busy: {max_connections} connections open, the most it takes "
                                        "(limits.max_connections); retry shortly.",
                             f"{max_connections} open (limits.max_connections)")
                return
            super().connection_made(transport)
            stats.open += 1
            if host is not None:
                self.peer = host
                stats.open_by_client[host] += 1
            self._arm(limits.header_timeout_seconds, self._headers_late)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self.refused:
                if self.lingering:
                    self.lingering = False
                    stats.lingering -= 1
                return
            stats.open -= 1
            if self.peer is not None:
                stats.open_by_client[self.peer] -= 1
                if stats.open_by_client[self.peer] <= 0:
                    del stats.open_by_client[self.peer]
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self.refused:
                return
            if self.deadline is None and not self.receiving and self._idle():
                # Bytes on an idle connection start the next request's head (blank lines before a request line
                # begin no message, so they are covered here rather than in on_message_begin).
                self._arm(limits.header_timeout_seconds, self._headers_late)
            super().data_received(data)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.receiving = True
            if self.deadline is None:  # a pipelined request behind one still in the app
                self._arm(limits.header_timeout_seconds, self._headers_late)

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self.receiving = False
            super().on_message_complete()
            if self._idle() and not self.pipeline and not self.transport.is_closing():
                # The rest of a request answered early has arrived: idle now, under the keep-alive timer again
                # (the body's bytes cancelled it).
                self._disarm()
                if self.timeout_keep_alive_task is None:
                    self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                                        self.timeout_keep_alive_handler)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.receiving and self.deadline is None and self._idle() and not self.transport.is_closing():
                self._arm(limits.body_timeout_seconds, self._unread_body_late)

        def _idle(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self, seconds: float, callback: Callable[[], None]) -> None:
            self._disarm()
            self.deadline = self.loop.call_later(seconds, callback)

        def _disarm(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline = None

        def _refuse(self, transport: asyncio.Transport, message: str, cause: str) -> None:
            self.refused = True
            self.transport = transport
            transport.write(_raw_error(503, message, {"retry-after": "1"}))
            now = self.loop.time()
            if now >= stats.next_refusal_log:
                stats.next_refusal_log = now + _REFUSAL_LOG_SECONDS
                log.warning("refusing connections: %s; %d refused since the start (%d per client, %d over "
                            "max_connections); /healthz keeps the counts, this is logged at most once a minute",
                            cause, stats.refused + stats.refused_total, stats.refused, stats.refused_total)
            if stats.lingering >= _MAX_LINGERING:
                transport.close()  # the descriptor matters more than a clean close now
                return
            self.lingering = True
            stats.lingering += 1
            if transport.can_write_eof():
                transport.write_eof()
            self.deadline = self.loop.call_later(_REFUSED_LINGER_SECONDS, transport.close)

        def _headers_late(self) -> None:
            self.deadline = None
            if self.transport.is_closing():
                return
            stats.header_timeouts += 1
            if not self._idle():
                self.cycle.keep_alive = False  # a pipelined head is late: close once the response in progress is out
                return
            self.transport.write(_raw_error(408, "request line and headers not received within "
                                                 f"{limits.header_timeout_seconds:g} s "
                                                 "(limits.header_timeout_seconds); send the whole head at once."))
            self.transport.close()

        def _unread_body_late(self) -> None:
            self.deadline = None
            if not self.transport.is_closing():
                stats.unread_body_timeouts += 1
                self.transport.close()

    return GuardedHttpToolsProtocol


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

    max_connections = resolve_max_connections(cfg.limits)  # before the models load: a bad value fails at once
    registry = Registry(cfg)
    registry.load()
    try:
        sock = _listen(cfg.host, cfg.port)
        host, port = sock.getsockname()[:2]
        # limit_concurrency=None: uvicorn would count every open connection (headers still arriving, idle ones)
        # against it and answer 503 to complete requests. Requests are bounded by max_in_flight in the app, open
        # connections by the protocol's max_connections (and so are uvicorn's tasks: one per connection at a time).
        app = build_app(registry, cfg)
        protocol = guarded_protocol(cfg.limits, app.state.connections, max_connections)
        server = uvicorn.Server(uvicorn.Config(app, http=protocol, ws="none", log_level="warning", access_log=False,
                                               lifespan="off", server_header=False, timeout_graceful_shutdown=10,
                                               timeout_keep_alive=cfg.limits.keep_alive_seconds,
                                               limit_concurrency=None))
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
