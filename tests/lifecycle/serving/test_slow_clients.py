"""Slow and greedy clients against a live ``lifecycle serve``: connections waiting for their headers or idle do not
keep complete requests from being served, deadlines close them, one client address cannot take every connection, and
past ``max_connections`` new connections are refused while the open ones are served.

uvicorn's ``limit_concurrency`` (``max_in_flight + 64`` = 320 here, as the server once ran) counted every open
connection and answered 503 past it; the tests open more than 320. The clients below come from distinct loopback
addresses (all of 127.0.0.0/8 reaches the server on Linux), one set per test, so the per-address cap of one test never
touches another's.
"""

from __future__ import annotations

import http.client
import json
import selectors
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.lifecycle.serving.helpers import start_serve

HEADER_TIMEOUT = 1.5
BODY_TIMEOUT = 1.0
PER_CLIENT = 100
SLOW = 340  # as in the report: more than the 320 connections uvicorn's limit_concurrency allowed
IDLE = 60  # kept-alive connections idle between requests, on top of SLOW
MAX_CONNECTIONS = 50  # the capped server's limits.max_connections
# A request line and one header, then nothing: the head is never complete.
SLOW_HEAD = b"POST /v1/models/m:predict HTTP/1.1\r\nHost: a\r\n"


@dataclass
class Closed:
    answer: bytes  # what the server sent before closing
    after: float | None  # seconds from the start of the wait to the close; None: still open at the deadline


def _serve(model: Path, root: Path, limits: dict) -> Iterator[tuple[str, int]]:
    """A ``lifecycle serve`` of ``model`` as "m" under ``limits``, for the length of a module; yields host and port."""
    config = root / "serve.yaml"
    config.write_text(json.dumps({"port": 0, "models": {"m": str(model)}, "limits": limits}))
    process, base = start_serve(config, root / "serve.log")
    url = urlsplit(base)
    assert url.hostname is not None and url.port is not None
    try:
        yield url.hostname, url.port
    finally:
        process.terminate()
        process.wait(20)


@pytest.fixture(scope="module")
def server(serving_versions: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    # max_in_flight 256 and max_connections by default (min(1024, ulimit -n - 320)).
    yield from _serve(serving_versions["int8"], tmp_path_factory.mktemp("slow-clients"),
                      {"header_timeout_seconds": HEADER_TIMEOUT, "body_timeout_seconds": BODY_TIMEOUT,
                       "max_connections_per_client": PER_CLIENT})


@pytest.fixture(scope="module")
def capped_server(serving_versions: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    # Deadlines far beyond the test's length: only max_connections decides.
    yield from _serve(serving_versions["int8"], tmp_path_factory.mktemp("capped"),
                      {"header_timeout_seconds": 30, "keep_alive_seconds": 30, "max_connections": MAX_CONNECTIONS})


def _connection(server: tuple[str, int], source: str) -> http.client.HTTPConnection:
    host, port = server
    return http.client.HTTPConnection(host, port, timeout=10, source_address=(source, 0))


def _predict(server: tuple[str, int], source: str, connection: http.client.HTTPConnection | None = None
             ) -> tuple[int, bytes]:
    """One predict request from ``source`` (on a new connection unless one is given): status and body."""
    conn = connection or _connection(server, source)
    try:
        conn.request("POST", "/v1/models/m:predict", body=b'{"texts": ["a fine film"]}',
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        if connection is None:
            conn.close()


def _health(server: tuple[str, int], source: str, connection: http.client.HTTPConnection | None = None) -> dict:
    conn = connection or _connection(server, source)
    try:
        conn.request("GET", "/healthz")
        return json.loads(conn.getresponse().read())
    finally:
        if connection is None:
            conn.close()


def _open_slow(server: tuple[str, int], sources: list[str], n: int) -> list[socket.socket]:
    """n connections spread over the source addresses, each sending SLOW_HEAD and nothing more."""
    socks: list[socket.socket] = []
    for i in range(n):
        sock = socket.create_connection(server, timeout=5, source_address=(sources[i % len(sources)], 0))
        socks.append(sock)
        sock.sendall(SLOW_HEAD)
    return socks


def _wait_closed(socks: list[socket.socket], started: float, deadline: float) -> dict[socket.socket, Closed]:
    """Read every socket until the server closes it or the deadline passes."""
    found = {sock: Closed(b"", None) for sock in socks}
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        while selector.get_map() and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=max(0.0, deadline - time.monotonic())):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    chunk = sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except ConnectionResetError:
                    chunk = b""
                if chunk:
                    found[sock].answer += chunk
                else:
                    found[sock].after = time.monotonic() - started
                    selector.unregister(sock)
    return found


def _close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


def test_slow_headers_neither_block_other_clients_nor_outlive_the_header_timeout(server) -> None:
    slow: list[socket.socket] = []
    try:
        started = time.monotonic()
        slow = _open_slow(server, ["127.0.0.11"], SLOW)
        # The slow client's first PER_CLIENT connections are held (until the header timeout), the rest refused.
        answers = [_predict(server, "127.0.0.12") for _ in range(10)]
        assert [status for status, _ in answers] == [200] * 10, answers[:2]
        health = _health(server, "127.0.0.12")
        assert time.monotonic() - started < HEADER_TIMEOUT, "too slow to tell the heads were still waiting"
        assert health["connections"]["open"] >= PER_CLIENT  # the held slow connections were open meanwhile

        closed = _wait_closed(slow, started, started + HEADER_TIMEOUT + 5)
        timed_out = [c for c in closed.values() if c.answer.startswith(b"HTTP/1.1 408 ")]
        refused = [c for c in closed.values() if c.answer.startswith(b"HTTP/1.1 503 ")]
        assert len(timed_out) == PER_CLIENT and len(refused) == SLOW - PER_CLIENT, [c.answer[:40] for c in
                                                                                    closed.values()][:3]
        assert all(b"limits.header_timeout_seconds" in c.answer for c in timed_out)
        assert all(b"limits.max_connections_per_client" in c.answer for c in refused)
        # Closed by the server: the held ones at the header timeout, the refused ones at once.
        assert all(c.after is not None and HEADER_TIMEOUT * 0.9 < c.after < HEADER_TIMEOUT + 3 for c in timed_out)
        assert all(c.after is not None and c.after < HEADER_TIMEOUT for c in refused)
    finally:
        _close_all(slow)
    # Their slots are free: the slow client's own address is served again, and nothing of it is left open.
    assert _predict(server, "127.0.0.11")[0] == 200
    connections = _health(server, "127.0.0.12")["connections"]
    assert connections["header_timeouts"] >= PER_CLIENT and connections["refused_per_client_limit"] >= SLOW - PER_CLIENT
    assert connections["open"] <= 2, connections  # the /healthz request itself, and a close not yet seen


def test_one_address_gets_at_most_max_connections_per_client(server) -> None:
    held = [_connection(server, "127.0.0.21") for _ in range(PER_CLIENT)]
    extra = _connection(server, "127.0.0.21")
    try:
        for conn in held:  # kept-alive connections, each having served one request
            assert _predict(server, "127.0.0.21", conn)[0] == 200
        status, body = _predict(server, "127.0.0.21", extra)
        assert status == 503 and b"at most 100 at once (limits.max_connections_per_client)" in body, body
        assert _predict(server, "127.0.0.22")[0] == 200  # another address is not affected
        assert _predict(server, "127.0.0.21", held[1])[0] == 200  # nor are the address's open connections
        held[0].close()
        deadline = time.monotonic() + 5
        while (status := _predict(server, "127.0.0.21")[0]) != 200 and time.monotonic() < deadline:
            time.sleep(0.05)  # until the server has seen the close
        assert status == 200
    finally:
        for conn in [*held, extra]:
            conn.close()


def test_slow_heads_and_idle_connections_from_many_addresses_do_not_deny_complete_requests(server) -> None:
    # 340 slow connections from four addresses (85 each, under the per-client cap) and 60 idle kept-alive ones: 400
    # open, none with a request in the app. Complete requests, on new connections and on a kept-alive one, are served
    # meanwhile; the slow ones are still closed at the header timeout.
    sources = [f"127.0.0.{i}" for i in range(31, 35)]
    idle = [_connection(server, "127.0.0.36") for _ in range(IDLE)]
    kept = _connection(server, "127.0.0.35")
    slow: list[socket.socket] = []
    try:
        for conn in idle:  # each serves one request, then sits idle (keep_alive_seconds: 5)
            assert _predict(server, "127.0.0.36", conn)[0] == 200
        started = time.monotonic()
        slow = _open_slow(server, sources, SLOW)
        answers = [_predict(server, "127.0.0.35") for _ in range(10)]
        answers += [_predict(server, "127.0.0.35", kept) for _ in range(10)]
        assert [status for status, _ in answers] == [200] * 20, answers[:2]
        connections = _health(server, "127.0.0.35", kept)["connections"]
        # Checked after the requests: the slow and idle connections were all open while they were served.
        assert connections["open"] >= SLOW + IDLE, connections
        assert time.monotonic() - started < HEADER_TIMEOUT, "too slow to tell the heads were still waiting"
        closed = _wait_closed(slow, started, started + HEADER_TIMEOUT + 5)
        assert all(c.answer.startswith(b"HTTP/1.1 408 ") for c in closed.values()), [
            c.answer[:40] for c in closed.values()][:3]
        assert all(c.after is not None and HEADER_TIMEOUT * 0.9 < c.after < HEADER_TIMEOUT + 3 for c in closed.values())
    finally:
        _close_all(slow)
        for conn in [*idle, kept]:
            conn.close()


def test_past_max_connections_new_connections_are_refused_and_open_ones_served(capped_server) -> None:
    # 25 slow heads and 25 kept-alive connections (the last one asks /healthz) from three addresses: 50 open.
    slow: list[socket.socket] = []
    held: list[http.client.HTTPConnection] = []
    try:
        slow = _open_slow(capped_server, ["127.0.0.51", "127.0.0.52"], MAX_CONNECTIONS // 2)
        held = [_connection(capped_server, "127.0.0.53") for _ in range(MAX_CONNECTIONS - len(slow))]
        for conn in held[:-1]:
            assert _predict(capped_server, "127.0.0.53", conn)[0] == 200
        connections = _health(capped_server, "127.0.0.53", held[-1])["connections"]
        assert connections["open"] == MAX_CONNECTIONS and connections["max_connections"] == MAX_CONNECTIONS, connections

        # Connection 51, from an address with none open, is refused before its request is read.
        status, body = _predict(capped_server, "127.0.0.54")
        assert status == 503 and b"50 connections open, the most it takes (limits.max_connections)" in body, body
        assert _predict(capped_server, "127.0.0.53", held[0])[0] == 200  # the open ones are served as before

        _close_all(slow[:5])
        deadline = time.monotonic() + 5
        while (status := _predict(capped_server, "127.0.0.54")[0]) != 200 and time.monotonic() < deadline:
            time.sleep(0.05)  # until the server has seen the closes
        assert status == 200
        connections = _health(capped_server, "127.0.0.53", held[-1])["connections"]
        assert connections["refused_max_connections"] >= 1 and connections["open"] <= MAX_CONNECTIONS, connections
    finally:
        _close_all(slow)
        for conn in held:
            conn.close()


def test_max_connections_defaults_under_the_open_file_limit_and_is_checked_against_it() -> None:
    from lifecycle.errors import ConfigError
    from lifecycle.serving.app import resolve_max_connections
    from lifecycle.serving.config import LimitsConfig

    assert resolve_max_connections(LimitsConfig(), soft_limit=20_000) == 1024
    assert resolve_max_connections(LimitsConfig(), soft_limit=1024) == 704  # 320 kept for files, refused ones
    assert resolve_max_connections(LimitsConfig(max_connections=704), soft_limit=1024) == 704
    with pytest.raises(ConfigError, match=r"limits.max_connections is 2000, .*\(ulimit -n\) is 1024.* at most 704"):
        resolve_max_connections(LimitsConfig(max_connections=2000), soft_limit=1024)
    with pytest.raises(ConfigError, match=r"ulimit -n\) is 256: too low"):
        resolve_max_connections(LimitsConfig(), soft_limit=256)
    assert resolve_max_connections(LimitsConfig()) >= 1  # this process's own limit


def test_trickled_bytes_outside_a_request_head_do_not_keep_a_connection(server) -> None:
    # Blank lines after a response begin no request; the body of a request answered without reading it (405) is
    # never read by the app. Neither resets a deadline: the connections close after the header and body timeouts.
    host, port = server
    blank = socket.create_connection(server, timeout=5, source_address=("127.0.0.41", 0))
    unread = socket.create_connection(server, timeout=5, source_address=("127.0.0.41", 0))
    try:
        blank.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        unread.sendall(b"POST /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\nabc")
        for sock, status in ((blank, b"200"), (unread, b"405")):
            assert sock.recv(12) == b"HTTP/1.1 " + status
            sock.setblocking(False)
        started = time.monotonic()
        closed = {blank: None, unread: None}
        answers = {blank: b"", unread: b""}
        for _ in range(int((max(HEADER_TIMEOUT, BODY_TIMEOUT) + 3) / 0.2)):
            for sock in closed:
                if closed[sock] is not None:
                    continue
                try:
                    sock.sendall(b"\r\n" if sock is blank else b"x")
                    while chunk := sock.recv(65536):
                        answers[sock] += chunk
                    closed[sock] = time.monotonic() - started
                except (BlockingIOError, InterruptedError):
                    pass
                except (BrokenPipeError, ConnectionResetError):
                    closed[sock] = time.monotonic() - started
            if all(after is not None for after in closed.values()):
                break
            time.sleep(0.2)
        assert closed[blank] is not None and HEADER_TIMEOUT * 0.9 < closed[blank] < HEADER_TIMEOUT + 2, closed
        assert b"HTTP/1.1 408 " in answers[blank]
        assert closed[unread] is not None and BODY_TIMEOUT * 0.9 < closed[unread] < BODY_TIMEOUT + 2, closed
    finally:
        blank.close()
        unread.close()
