"""Serving benchmark: ten int8 models in one `lifecycle serve` process, loaded by wrk from a second process.

Phases (all on loopback; wrk is Debian's `wrk`, POST bodies from a generated Lua script):

1. memory: the server's RSS with every model loaded, idle (and whether it imported TensorFlow or mlflow);
2. latency: batch-1 requests spread over all models at 1, 8 and 64 concurrent connections: p50, p99, throughput,
   errors (non-2xx and socket errors), RSS after each;
3. roll-out: model m0 follows `models:/serve-bench@champion` on a real `mlflow server`; under a 60 s load of 32
   connections on m0 the alias is moved to a new version a third of the way in; every response is checked (status,
   which version answered), and the time from the promotion to the switch is reported;
4. soak: a steady load over all models for 10 minutes with the server's RSS sampled every 10 s (growth reported);
5. the MLflow pyfunc of the same version under `mlflow models serve --env-manager local` at the same concurrencies
   (skip with --no-mlflow-compare).

By default the models are the field report's size: MR with a 30,000-token BPE vocabulary and 300-d embeddings,
compressed to int8 (reused from benchmarks/out/compress-work when `make bench-compress` left its checkpoint there,
else trained here), copied ten times so each server model has its own files. Results go to
benchmarks/out/serve.json, and with --readme into README.md between the `bench:serve` markers.

    .venv/bin/python benchmarks/serve_bench.py --readme                   # everything: about 20 minutes
    .venv/bin/python benchmarks/serve_bench.py --quick --source DIR       # smoke run: 2 models, 10 s phases
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from readme import write_block  # noqa: E402  (benchmarks/readme.py, beside this script)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lifecycle.artifacts import load_version  # noqa: E402
from lifecycle.procstat import memory_status  # noqa: E402

OUT = ROOT / "benchmarks" / "out"
WORK = OUT / "serve-work"
BIN = Path(sys.executable).parent
FIELD_SETTINGS = ["tokenizer.bpe.vocab_size=30000", "model.embedding_dim=300", "tracking.enabled=false"]
REGISTERED = "serve-bench"
# The venv's bin first on PATH: `mlflow models serve` execs `uvicorn` by name.
ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "TF_CPP_MIN_LOG_LEVEL": "2",
       "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def log(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_json(url: str, timeout: float = 10) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def wait_http(url: str, process: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"{what} not answering {url} after {timeout:.0f} s") from None
            time.sleep(0.25)


def rss_mb(pids: list[int]) -> float:
    return sum(memory_status(pid)["VmRSS"] for pid in pids) / 2**20


def rss_parts_mb(pid: int) -> dict[str, float]:
    """VmRSS split into anonymous memory and mapped files (model flatbuffers, libraries), MB."""
    status = memory_status(pid)
    return {key: status[key] / 2**20 for key in ("VmRSS", "RssAnon", "RssFile")}


def group_pids(pgid: int) -> list[int]:
    """Every live process in a process group (mlflow's servers fork workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def stop_group(process: subprocess.Popen, grace: float = 20) -> None:
    """Stop a process group this script started; stragglers (mlflow's job consumers) get SIGKILL."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
            process.wait(wait)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


# --- the models ---------------------------------------------------------------------------------------------------


def lifecycle_cli(*args: str) -> None:
    subprocess.run([str(BIN / "lifecycle"), "-q", *args], check=True, env=ENV)


def field_int8() -> Path:
    """The 30k x 300 int8 version, built once under serve-work/ (freeze and compress run as CLI subprocesses)."""
    target = WORK / "field-30k-int8"
    if (target / "manifest.json").is_file():
        return target
    checkpoint = OUT / "compress-work" / "field-30k" / "checkpoint"
    if not (checkpoint / "manifest.json").is_file():
        checkpoint = WORK / "field-30k-checkpoint"
        if not (checkpoint / "manifest.json").is_file():
            log("training the 30k x 300 MR model (BPE 30,000) for the benchmark")
            lifecycle_cli("train", str(ROOT / "configs" / "mr-bpe.yaml"), *sum((["--set", s] for s in FIELD_SETTINGS),
                                                                               []), "-o", str(checkpoint))
    frozen = WORK / "field-30k-frozen"
    if not (frozen / "manifest.json").is_file():
        shutil.rmtree(frozen, ignore_errors=True)
        lifecycle_cli("freeze", str(checkpoint), "-o", str(frozen), "--no-track")
    lifecycle_cli("compress", str(frozen), "--recipe", "int8", "-o", str(target), "--no-track")
    return target


def copies(source: Path, n: int) -> list[Path]:
    """n copies of a version, so each served model has its own files (no shared page cache)."""
    root = WORK / "models"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    out = []
    for i in range(n):
        shutil.copytree(source, root / f"m{i}")
        out.append(root / f"m{i}")
    return out


def sample_texts(n: int = 200) -> list[str]:
    data = Path(os.environ.get("LIFECYCLE_DATA_DIR", ROOT.parent / "shared" / "data")) / "MR"
    texts: list[str] = []
    for name in ("rt-polarity.pos", "rt-polarity.neg"):
        path = data / name
        if path.is_file():
            texts += [t for t in path.read_bytes().decode("cp1252").split("\n")[: n // 2] if t.strip()]
    return texts or [f"sample review number {i}: a {('fine', 'dull', 'moving')[i % 3]} film" for i in range(n)]


# --- wrk ----------------------------------------------------------------------------------------------------------


def lua_script(path: Path, targets: list[str], bodies: list[str], check_version: str | None = None) -> Path:
    """A wrk script POSTing the bodies round-robin over the targets; with check_version, it also counts versions."""
    quoted = ",\n".join(f"  [==[{body}]==]" for body in bodies)
    paths = ", ".join(f'"{target}"' for target in targets)
    text = f"""-- generated by benchmarks/serve_bench.py
local bodies = {{
{quoted}
}}
local paths = {{ {paths} }}
local headers = {{ ["Content-Type"] = "application/json" }}
local n = 0
request = function()
  n = n + 1
  return wrk.format("POST", paths[(n % #paths) + 1], headers, bodies[((n * 7) % #bodies) + 1])
end
"""
    if check_version is not None:
        text += f"""
local threads = {{}}
function setup(thread) table.insert(threads, thread) end
function init(args) ok = 0; bad = 0; new = 0; old = 0; old_after_new = 0; seen_new = 0 end
function response(status, headers, body)
  if status ~= 200 then bad = bad + 1; return end
  ok = ok + 1
  if string.find(body, '"version":"{check_version}"', 1, true) then
    new = new + 1; seen_new = 1
  else
    old = old + 1
    if seen_new == 1 then old_after_new = old_after_new + 1 end
  end
end
function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    io.write(string.format("ROLLOUT ok=%d bad=%d new=%d old=%d old_after_new=%d\\n",
      t:get("ok"), t:get("bad"), t:get("new"), t:get("old"), t:get("old_after_new")))
  end
end
"""
    path.write_text(text, encoding="utf-8")
    return path


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * _UNITS[unit]


def run_wrk(url: str, script: Path, clients: int, seconds: float) -> dict[str, Any]:
    """wrk at `clients` connections for `seconds`; its latency percentiles, throughput and errors."""
    threads = max(1, min(2, clients))
    done = subprocess.run(["wrk", f"-t{threads}", f"-c{clients}", f"-d{max(1, round(seconds))}s", "--latency",
                           "--timeout", "10s", "-s", str(script), url], capture_output=True, text=True, check=True)
    out = done.stdout
    percentiles = {int(p): _ms(v) for p, v in re.findall(r"^\s+(\d+)%\s+([\d.]+\w+)\s*$", out, flags=re.M)}
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    rollout = [dict((k, int(v)) for k, v in re.findall(r"(\w+)=(\d+)", line))
               for line in out.splitlines() if line.startswith("ROLLOUT")]
    return {
        "clients": clients,
        "seconds": seconds,
        "requests": requests,
        "throughput_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": percentiles.get(50),
        "p99_ms": percentiles.get(99),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(x) for x in sockets.groups()) if sockets else 0,
        "rollout_threads": rollout,
    }


# --- the servers --------------------------------------------------------------------------------------------------


def start_mlflow(root: Path) -> tuple[subprocess.Popen, str]:
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with (root / "mlflow-server.log").open("wb") as out:
        process = subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri",
                                    f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination",
                                    str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
                                    "--workers", "1"], cwd=root, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True, env=ENV)
    return process, f"http://127.0.0.1:{port}"


def register(uri: str, path: Path) -> str:
    from lifecycle.config import TrackingConfig
    from lifecycle.registry_client import VERSION_ARTIFACT
    from lifecycle.tracking import Tracker

    tracker = Tracker(TrackingConfig(uri=uri), REGISTERED)
    with tracker.run("compress", path.name):
        tracker.log_artifacts(path, VERSION_ARTIFACT)
        return str(tracker.register(REGISTERED))


def start_serve(config: Path, log_file: Path) -> tuple[subprocess.Popen, str]:
    with log_file.open("wb") as err:
        process = subprocess.Popen([str(BIN / "lifecycle"), "serve", "--config", str(config)], stdout=subprocess.PIPE,
                                   stderr=err, text=True, env=ENV, start_new_session=True)
    line = process.stdout.readline()
    found = re.search(r"on (http://\S+)", line)
    if not found:
        raise SystemExit(f"lifecycle serve did not start: {line!r}; see {log_file}")
    return process, found.group(1)


# --- the phases ---------------------------------------------------------------------------------------------------


def rollout_phase(base: str, pid: int, mlflow_uri: str, new_version: str, texts: list[str], clients: int,
                  seconds: float) -> dict[str, Any]:
    from lifecycle.tracking import set_alias

    label = f"models:/{REGISTERED}/{new_version}"
    script = lua_script(WORK / "rollout.lua", ["/v1/models/m0:predict"], [json.dumps({"texts": [t]}) for t in texts],
                        check_version=label)
    result: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: result.update(run_wrk(base, script, clients, seconds)))
    runner.start()
    time.sleep(seconds / 3)
    promoted = time.monotonic()
    set_alias(label, "champion", mlflow_uri)
    switched = None
    while runner.is_alive() and switched is None:
        if get_json(f"{base}/v1/models/m0")["version"] == label:
            switched = time.monotonic() - promoted
        else:
            time.sleep(0.05)
    runner.join()
    info = get_json(f"{base}/v1/models/m0")
    threads = result.pop("rollout_threads")
    result.update({
        "promoted_at_s": round(seconds / 3, 1),
        "switch_seconds_after_promote": switched,
        "responses_new_version": sum(t["new"] for t in threads),
        "responses_old_version": sum(t["old"] for t in threads),
        "old_after_first_new": sum(t["old_after_new"] for t in threads),
        "failed": sum(t["bad"] for t in threads) + result["socket_errors"],
        "version_after": info["version"],
        "switches": info["switches"],
        "refused": info["last_refused"],
        "rss_mb": rss_mb([pid]),
    })
    return result


def soak_phase(base: str, pid: int, targets: list[str], texts: list[str], clients: int, seconds: float,
               every: float) -> dict[str, Any]:
    script = lua_script(WORK / "soak.lua", targets, [json.dumps({"texts": [t]}) for t in texts])
    result: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: result.update(run_wrk(base, script, clients, seconds)))
    samples = [(0.0, rss_mb([pid]))]
    started = time.monotonic()
    runner.start()
    while runner.is_alive():
        runner.join(every)
        samples.append((round(time.monotonic() - started, 1), rss_mb([pid])))
    result.pop("rollout_threads")
    warm = [mb for t, mb in samples if t >= min(60.0, seconds / 5)] or [samples[-1][1]]
    result.update({"rss_samples_mb": samples, "rss_start_mb": samples[0][1], "rss_end_mb": samples[-1][1],
                   "rss_growth_after_warmup_mb": warm[-1] - warm[0], "rss_max_mb": max(mb for _, mb in samples)})
    return result


def mlflow_pyfunc_phase(version: Path, mlflow_uri: str, texts: list[str], concurrency: list[int],
                        seconds: float) -> dict[str, Any]:
    from lifecycle.tracking import log_pyfunc

    model_uri = log_pyfunc(version, registered_name=f"{REGISTERED}-pyfunc", tracking_uri=mlflow_uri)
    port = free_port()
    with (WORK / "mlflow-models-serve.log").open("wb") as out:
        process = subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager",
                                    "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**ENV, "MLFLOW_TRACKING_URI": mlflow_uri})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/ping", process, 600, "mlflow models serve")
        script = lua_script(WORK / "pyfunc.lua", ["/invocations"], [json.dumps({"inputs": [t]}) for t in texts])
        rows = []
        for clients in concurrency:
            row = run_wrk(base, script, clients, seconds)
            row.pop("rollout_threads")
            row["rss_mb"] = rss_mb(group_pids(process.pid))
            rows.append(row)
            log(f"mlflow pyfunc c={clients}: p50 {row['p50_ms']:.2f} ms p99 {row['p99_ms']:.2f} ms "
                f"{row['throughput_per_s']:.0f}/s errors {row['non_2xx'] + row['socket_errors']}")
        return {"model_uri": model_uri, "rows": rows}
    finally:
        stop_group(process)


# --- report -------------------------------------------------------------------------------------------------------


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Measured {result['date']} on {result['machine']}, `python benchmarks/serve_bench.py "
             f"{' '.join(result['argv'])}`; {result['models']} models of {result['model_desc']}, wrk "
             f"{result['wrk']} from a second process on loopback.", ""]
    loaded, end = result["rss_loaded_parts_mb"], result.get("rss_end_parts_mb", {})
    lines += [f"- Server RSS with every model loaded: **{result['rss_loaded_mb']:.1f} MB** ({loaded['RssAnon']:.1f} "
              f"anonymous, {loaded['RssFile']:.1f} mapped files); after all phases {end.get('VmRSS', 0):.1f} MB "
              f"({end.get('RssAnon', 0):.1f} + {end.get('RssFile', 0):.1f}). TensorFlow imported: "
              f"{result['tensorflow_imported']}, mlflow imported: {result['mlflow_imported']}.", ""]
    lines += ["| server | clients | p50 ms | p99 ms | requests/s | errors | RSS MB |", "|---|---|---|---|---|---|---|"]
    for row in result["latency"]:
        lines.append(f"| lifecycle serve ({result['models']} models) | {row['clients']} | {row['p50_ms']:.2f} | "
                     f"{row['p99_ms']:.2f} | {row['throughput_per_s']:.0f} | {row['non_2xx'] + row['socket_errors']} | "
                     f"{row['rss_mb']:.1f} |")
    for row in (result.get("mlflow_pyfunc") or {}).get("rows", []):
        lines.append(f"| mlflow models serve (1 model) | {row['clients']} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} "
                     f"| {row['throughput_per_s']:.0f} | {row['non_2xx'] + row['socket_errors']} | "
                     f"{row['rss_mb']:.1f} |")
    roll = result.get("rollout")
    if roll:
        lines += ["", f"- Roll-out: {roll['clients']} clients for {roll['seconds']:.0f} s on m0, alias moved at "
                      f"{roll['promoted_at_s']} s, switched {roll['switch_seconds_after_promote']:.2f} s later; "
                      f"{roll['requests']} requests, **{roll['failed']} failed**; {roll['responses_old_version']} "
                      f"answered by the old version, {roll['responses_new_version']} by the new one; "
                      f"{roll['old_after_first_new']} old-version answers arrived after a connection thread's first "
                      "new-version answer (requests already in flight at the switch)."]
    soak = result.get("soak")
    if soak:
        lines += [f"- Soak: {soak['clients']} clients for {soak['seconds']:.0f} s, {soak['requests']} requests, "
                  f"{soak['non_2xx'] + soak['socket_errors']} errors; RSS {soak['rss_start_mb']:.1f} -> "
                  f"{soak['rss_end_mb']:.1f} MB, growth after warm-up **{soak['rss_growth_after_warmup_mb']:+.1f} MB**"
                  f" (max {soak['rss_max_mb']:.1f} MB)."]
    return "\n".join(lines)


def write_readme(text: str) -> None:
    write_block("serve", text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, help="a frozen/compressed version to serve (default: 30k x 300 int8)")
    parser.add_argument("--models", type=int, default=10, help="models in the server (copies of the source)")
    parser.add_argument("--clients", default="1,8,64", help="concurrencies of the latency phase")
    parser.add_argument("--seconds", type=float, default=30, help="length of each latency run")
    parser.add_argument("--rollout-seconds", type=float, default=60)
    parser.add_argument("--rollout-clients", type=int, default=32)
    parser.add_argument("--soak-seconds", type=float, default=600)
    parser.add_argument("--soak-clients", type=int, default=8)
    parser.add_argument("--no-mlflow-compare", action="store_true", help="skip `mlflow models serve`")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 models, 10 s phases, 20 s soak")
    parser.add_argument("--readme", action="store_true", help="write the figures into README.md")
    args = parser.parse_args()
    if args.quick:
        args.models, args.seconds, args.rollout_seconds, args.soak_seconds = 2, 10, 10, 20
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: `apt-get install -y wrk` (Debian), then run this again.")
    concurrency = [int(c) for c in args.clients.split(",")]
    WORK.mkdir(parents=True, exist_ok=True)

    mlflow_process, mlflow_uri = start_mlflow(WORK / f"mlflow-{int(time.time())}")
    serve_process = None
    try:
        source = args.source.resolve() if args.source else field_int8()
        models = copies(source, args.models)
        next_version = WORK / "models" / "m0-next"
        shutil.copytree(source, next_version)
        texts = sample_texts()
        wait_http(f"{mlflow_uri}/health", mlflow_process, 600, "mlflow server")
        first, second = register(mlflow_uri, models[0]), register(mlflow_uri, next_version)
        from lifecycle.tracking import set_alias

        set_alias(f"models:/{REGISTERED}/{first}", "champion", mlflow_uri)
        config = WORK / "serve.yaml"
        config.write_text(json.dumps({
            "port": 0, "tracking_uri": mlflow_uri, "poll_seconds": 1,
            "limits": {"max_in_flight": 1024},
            "models": {"m0": f"models:/{REGISTERED}@champion",
                       **{f"m{i}": str(path) for i, path in enumerate(models) if i > 0}},
        }))
        log(f"starting lifecycle serve with {len(models)} models of {source}")
        serve_process, base = start_serve(config, WORK / "serve.log")
        health = get_json(f"{base}/healthz")
        manifest = load_version(source, verify=False).manifest
        embedding = manifest.tensors["weights/embedding"].shape
        result: dict[str, Any] = {
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
                       f"{os.getloadavg()[0]:.1f} at start",
            "argv": sys.argv[1:],
            "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()[1],
            "models": len(models),
            "model_desc": f"{'x'.join(map(str, embedding))} {'+'.join(s.name for s in manifest.recipe)} "
                          f"({manifest.serving.bytes / 1e6:.1f} MB serving form)",
            "rss_loaded_mb": rss_mb([serve_process.pid]),
            "rss_loaded_parts_mb": rss_parts_mb(serve_process.pid),
            "tensorflow_imported": health["tensorflow_imported"],
            "mlflow_imported": health["mlflow_imported"],
            "latency": [],
        }
        log(f"loaded: RSS {result['rss_loaded_mb']:.1f} MB")
        targets = [f"/v1/models/m{i}:predict" for i in range(len(models))]
        script = lua_script(WORK / "latency.lua", targets, [json.dumps({"texts": [t]}) for t in texts])
        for clients in concurrency:
            row = run_wrk(base, script, clients, args.seconds)
            row.pop("rollout_threads")
            row["rss_mb"] = rss_mb([serve_process.pid])
            row["rss_parts_mb"] = rss_parts_mb(serve_process.pid)
            result["latency"].append(row)
            log(f"c={clients}: p50 {row['p50_ms']:.2f} ms p99 {row['p99_ms']:.2f} ms {row['throughput_per_s']:.0f}/s "
                f"errors {row['non_2xx'] + row['socket_errors']} RSS {row['rss_mb']:.1f} MB "
                f"({row['rss_parts_mb']['RssAnon']:.1f} anonymous + {row['rss_parts_mb']['RssFile']:.1f} files)")
        result["rollout"] = rollout_phase(base, serve_process.pid, mlflow_uri, second, texts, args.rollout_clients,
                                          args.rollout_seconds)
        roll = result["rollout"]
        log(f"roll-out: {roll['requests']} requests, {roll['failed']} failed, switch "
            f"{roll['switch_seconds_after_promote']} s after promote, now {roll['version_after']}")
        if args.soak_seconds > 0:
            result["soak"] = soak_phase(base, serve_process.pid, targets, texts, args.soak_clients, args.soak_seconds,
                                        every=min(10.0, args.soak_seconds / 4))
            log(f"soak: RSS {result['soak']['rss_start_mb']:.1f} -> {result['soak']['rss_end_mb']:.1f} MB")
        result["tensorflow_imported_after"] = get_json(f"{base}/healthz")["tensorflow_imported"]
        result["rss_end_parts_mb"] = rss_parts_mb(serve_process.pid)
        stop_group(serve_process)
        serve_process = None
        if not args.no_mlflow_compare:
            result["mlflow_pyfunc"] = mlflow_pyfunc_phase(source, mlflow_uri, texts, concurrency, args.seconds)
    finally:
        if serve_process is not None:
            stop_group(serve_process)
        stop_group(mlflow_process)
    name = "serve-quick.json" if args.quick else "serve.json"
    (OUT / name).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    text = markdown(result)
    print(text)
    if args.readme:
        write_readme(text)


if __name__ == "__main__":
    main()
