"""Slow-client benchmark: `lifecycle serve`'s batch-1 predict latency with and without 340 slow-header clients.

Each phase runs `--clients` normal clients (default 8 threads, from 127.0.0.2), each sending one batch-1 predict at a
time on a kept-alive connection (a new one when the server closes it; 50 ms pause after a failure), for `--seconds`
(default 25, longer than the default header timeout, so slow connections are timed out and re-opened within it):

1. baseline: nothing else;
2. one slow address: 340 connections from 127.0.0.1 that send a request line and one header, then nothing; every
   second the slow client re-opens those the server closed, as a slowloris does;
3. many slow addresses: the same 340 spread over 127.0.0.3-6 (85 each, under the per-client cap and under
   max_connections): they are held until the header timeout, and must not cost the normal clients a single 503
   (uvicorn's limit_concurrency, which counted them, once did).

The slow client is a separate process (so its work does not slow the measuring threads); the server runs the
default limits unless `--limits` gives others. Only 127.0.0.0/8 addresses are contacted. Each phase also counts the
server's log lines about refused connections (uvicorn's "Exceeded concurrency limit", one per refused request, and
lifecycle's own "refusing connections", at most one a minute). Results go to benchmarks/out/slow_clients.json, and a
summary is printed.

    .venv/bin/python benchmarks/slow_clients.py                  # a small MR word model built here (~1 min) + ~90 s
    .venv/bin/python benchmarks/slow_clients.py --source DIR     # a frozen/compressed version, e.g. the serve
                                                                 # benchmark's benchmarks/out/serve-work/field-30k-int8
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import platform
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from serve_bench import OUT, ROOT, get_json, lifecycle_cli, log, sample_texts, start_serve, stop_group

WORK = OUT / "slow-clients-work"
SLOW_HEAD = b"POST /v1/models/m:predict HTTP/1.1\r\nHost: bench\r\n"  # ...and never the rest of the head
NORMAL_SOURCE = "127.0.0.2"
LOG_WARNINGS = ("Exceeded concurrency limit", "refusing connections")  # server log lines counted per phase
SMALL_SETTINGS = ["tracking.enabled=false", "model.embedding_dim=64", "model.filters=32", "train.epochs=3"]


def small_int8() -> Path:
    """A small MR word model compressed to int8, built once under slow-clients-work/ (CLI subprocesses)."""
    target = WORK / "mr-word-small-int8"
    if (target / "manifest.json").is_file():
        return target
    checkpoint, frozen = WORK / "mr-word-small", WORK / "mr-word-small-frozen"
    if not (checkpoint / "manifest.json").is_file():
        log("training a small MR word model for the benchmark")
        lifecycle_cli("train", str(ROOT / "configs" / "mr-word.yaml"),
                      *sum((["--set", s] for s in SMALL_SETTINGS), []), "-o", str(checkpoint))
    if not (frozen / "manifest.json").is_file():
        lifecycle_cli("freeze", str(checkpoint), "-o", str(frozen), "--no-track")
    lifecycle_cli("compress", str(frozen), "--recipe", "int8", "-o", str(target), "--no-track")
    return target


# --- the slow client ----------------------------------------------------------------------------------------------


def slow_client(host: str, port: int, sources: list[str], count: int, seconds: float, every: float,
                results: Any) -> None:
    """Hold `count` slow-header connections spread over `sources` for `seconds`, re-opening closed ones every
    `every` seconds; puts a summary on the `results` queue."""
    share = {source: count // len(sources) + (i < count % len(sources)) for i, source in enumerate(sources)}
    open_by_source: Counter[str] = Counter()
    answers: Counter[str] = Counter()
    opened = connect_errors = 0
    samples: list[int] = []
    selector = selectors.DefaultSelector()
    stop_at = time.monotonic() + seconds
    next_top_up = 0.0
    while (now := time.monotonic()) < stop_at:
        if now >= next_top_up:
            samples.append(sum(open_by_source.values()))  # how many were open just before each top-up
            for source, want in share.items():
                for _ in range(want - open_by_source[source]):
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    try:
                        sock.settimeout(2)
                        sock.bind((source, 0))
                        sock.connect((host, port))
                        sock.sendall(SLOW_HEAD)
                    except OSError:
                        connect_errors += 1
                        sock.close()
                        continue
                    sock.setblocking(False)
                    selector.register(sock, selectors.EVENT_READ, source)
                    open_by_source[source] += 1
                    opened += 1
            next_top_up = now + every
        for key, _ in selector.select(timeout=max(0.0, min(next_top_up, stop_at) - time.monotonic())):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            # The server's only answer is its last word (408, 503) or a close: either way this one is gone.
            answers[data[9:12].decode("ascii", "replace") if data.startswith(b"HTTP/1.1 ") else "closed"] += 1
            selector.unregister(sock)
            sock.close()
            open_by_source[key.data] -= 1
    for key in list(selector.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    selector.close()
    results.put({"sources": sources, "count": count, "opened": opened, "connect_errors": connect_errors,
                 "answers": dict(answers), "open_at_top_ups_min": min(samples[1:], default=None),
                 "open_at_top_ups_mean": round(sum(samples[1:]) / max(1, len(samples) - 1), 1)})


# --- the normal clients -------------------------------------------------------------------------------------------


def normal_client(host: str, port: int, texts: list[str], offset: int, stop_at: float,
                  rows: list[tuple[float, int | str]]) -> None:
    """One request at a time until stop_at; appends (seconds, status or error name) per request."""
    conn: http.client.HTTPConnection | None = None
    i = offset
    while time.monotonic() < stop_at:
        if conn is None:
            conn = http.client.HTTPConnection(host, port, timeout=10, source_address=(NORMAL_SOURCE, 0))
        body = json.dumps({"texts": [texts[i % len(texts)]]}).encode()
        i += 1
        started = time.perf_counter()
        status: int | str
        try:
            conn.request("POST", "/v1/models/m:predict", body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            status = response.status
            if response.will_close:
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as exc:
            status = type(exc).__name__
            conn.close()
            conn = None
        rows.append((time.perf_counter() - started, status))
        if status != 200:
            time.sleep(0.05)
    if conn is not None:
        conn.close()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def log_warnings(server_log: Path) -> Counter[str]:
    """How many lines of the server's log hold each of LOG_WARNINGS."""
    found: Counter[str] = Counter()
    with server_log.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            found.update(warning for warning in LOG_WARNINGS if warning in line)
    return found


def run_phase(name: str, base: str, server_log: Path, texts: list[str], clients: int, seconds: float,
              slow_sources: list[str] | None, slow_count: int, every: float) -> dict[str, Any]:
    logged_before = log_warnings(server_log)
    url = urlsplit(base)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    attacker, queue = None, None
    if slow_sources:
        queue = multiprocessing.get_context("fork").Queue()
        attacker = multiprocessing.get_context("fork").Process(
            target=slow_client, args=(host, port, slow_sources, slow_count, seconds + 2.0, every, queue))
        attacker.start()
        time.sleep(1.0)  # the slow connections are open before the measurement starts
    rows: list[list[tuple[float, int | str]]] = [[] for _ in range(clients)]
    stop_at = time.monotonic() + seconds
    threads = [threading.Thread(target=normal_client, args=(host, port, texts, 17 * i, stop_at, rows[i]))
               for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 30)
    slow = None
    if attacker is not None and queue is not None:
        slow = queue.get(timeout=60)
        attacker.join(30)
    time.sleep(0.5)  # the server sees the slow client's sockets close
    logged = log_warnings(server_log) - logged_before
    every_row = [row for per_client in rows for row in per_client]
    ok = [s * 1e3 for s, status in every_row if status == 200]
    failures = Counter(str(status) for _, status in every_row if status != 200)
    result = {
        "phase": name, "clients": clients, "seconds": seconds, "requests": len(every_row), "ok": len(ok),
        "non_200": sum(failures.values()), "failures": dict(failures),
        "p50_ms": percentile(ok, 50), "p99_ms": percentile(ok, 99), "ok_per_s": round(len(ok) / seconds, 1),
        "slow_client": slow, "server_connections": get_json(f"{base}/healthz").get("connections"),
        "server_log_warnings": {warning: logged[warning] for warning in LOG_WARNINGS},
    }
    p50, p99 = result["p50_ms"], result["p99_ms"]
    log(f"{name}: {len(every_row)} requests, {len(ok)} ok, non-200 {result['non_200']} {dict(failures)}; p50 "
        f"{p50 if p50 is None else round(p50, 2)} ms p99 {p99 if p99 is None else round(p99, 2)} ms"
        + (f"; slow client {slow['answers']}, {slow['opened']} opened" if slow else "")
        + f"; server log {result['server_log_warnings']}")
    return result


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Measured {result['date']} on {result['machine']}, `python benchmarks/slow_clients.py "
             f"{' '.join(result['argv'])}`; model {result['model']}; limits {json.dumps(result['limits'])}; "
             f"{result['clients']} normal clients from {NORMAL_SOURCE}, one batch-1 request at a time, "
             f"{result['seconds']:.0f} s per phase.", "",
             "| phase | requests | non-200 | p50 ms | p99 ms | ok/s | slow connections open (min / mean) | "
             "slow client's answers | server log: " + " / ".join(f'"{w}"' for w in LOG_WARNINGS) + " |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in result["phases"]:
        slow = row["slow_client"] or {}
        held = f"{slow['open_at_top_ups_min']} / {slow['open_at_top_ups_mean']}" if slow else "-"
        lines.append(f"| {row['phase']} | {row['requests']} | {row['non_200']} | {_ms(row['p50_ms'])} | "
                     f"{_ms(row['p99_ms'])} | {row['ok_per_s']:.0f} | {held} | "
                     f"{', '.join(f'{k}: {v}' for k, v in sorted(slow.get('answers', {}).items())) or '-'} | "
                     f"{' / '.join(str(row['server_log_warnings'][w]) for w in LOG_WARNINGS)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, help="a frozen/compressed version to serve (default: a small MR one)")
    parser.add_argument("--clients", type=int, default=8, help="normal clients (threads)")
    parser.add_argument("--seconds", type=float, default=25, help="length of each phase")
    parser.add_argument("--slow", type=int, default=340, help="slow-header connections held open")
    parser.add_argument("--top-up-every", type=float, default=1.0, help="seconds between re-opening closed ones")
    parser.add_argument("--limits", default="{}", help="JSON for the server's limits section (default: defaults)")
    args = parser.parse_args()
    if not 0 < args.seconds <= 600 or not 0 < args.slow <= 5000 or not 0 < args.clients <= 256:
        raise SystemExit("--seconds must be in (0, 600], --slow in (0, 5000], --clients in (0, 256]")
    WORK.mkdir(parents=True, exist_ok=True)
    source = args.source.resolve() if args.source else small_int8()
    limits = json.loads(args.limits)
    config = WORK / "serve.yaml"
    config.write_text(json.dumps({"host": "127.0.0.1", "port": 0, "models": {"m": str(source)}, "limits": limits}))
    texts = sample_texts()
    log(f"starting lifecycle serve with {source}")
    process: subprocess.Popen | None = None
    try:
        process, base = start_serve(config, WORK / "serve.log")
        get_json(f"{base}/healthz")
        phases = [("baseline", None), ("340 slow, one address", ["127.0.0.1"]),
                  ("340 slow, four addresses", [f"127.0.0.{i}" for i in range(3, 7)])]
        rows = []
        for name, sources in phases:
            rows.append(run_phase(name.replace("340", str(args.slow)), base, WORK / "serve.log", texts, args.clients,
                                  args.seconds, sources, args.slow, args.top_up_every))
    finally:
        if process is not None:
            stop_group(process)
    from lifecycle.artifacts import load_version

    manifest = load_version(source, verify=False).manifest
    embedding = manifest.tensors["weights/embedding"].shape
    result = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
                   f"{os.getloadavg()[0]:.1f} at the end",
        "argv": sys.argv[1:],
        "model": f"{'x'.join(map(str, embedding))} {'+'.join(s.name for s in manifest.recipe)}",
        "limits": limits or "defaults",
        "clients": args.clients,
        "seconds": args.seconds,
        "phases": rows,
    }
    (OUT / "slow_clients.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(markdown(result))


if __name__ == "__main__":
    main()
