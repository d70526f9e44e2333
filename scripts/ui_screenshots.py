"""Screenshots of the MLflow UI on a lifecycle store, taken by headless Chromium (``make ui-check``).

    python scripts/ui_screenshots.py [--store DIR] [--out docs] [--epochs 2]

Without ``--store`` it first runs ``lifecycle pipeline`` (the embedded default corpus, ``--budget -1``) in a temp
folder. Then it starts ``mlflow server`` on the store's SQLite database, opens Chromium headless with its DevTools
port, and for each view loads the page, waits until the text it must show is there, and saves a PNG:

- ``ui-runs-table.png``: the experiment's runs table with the size and accuracy columns,
- ``ui-compare.png``: the compare view of the pipeline's versions,
- ``ui-registered-version.png``: the page of the newest registered version.

MLflow's runs table shows no metric column until a user picks one under "Columns"; the choice lives in the
browser's localStorage (MLflow's per-experiment UI state), so the script writes that same state (the columns
``size_bytes``, ``test_accuracy`` and the params ``kind``/``recipe``) before loading the table, as a user's click
would. Chromium: Debian's ``chromium`` (``make install-browser``). The DevTools client is aiohttp's websocket (an
mlflow dependency).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WINDOW = (1400, 860)
# The columns a user picks first: deployed size and test accuracy, then what the version is.
COLUMNS = ["metrics.`size_mb`", "metrics.`test_accuracy`", "params.`kind`", "params.`recipe`",
           "params.`vocab_size`", "params.`embedding_dim`", "attributes.`Models`"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_http(url: str, seconds: float, what: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"{what} did not answer at {url} within {seconds:.0f} s; see {log}")


def make_store(folder: Path, epochs: int) -> Path:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}",
           "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "lifecycle", "pipeline", "--epochs", str(epochs), "--budget", "-1",
                           "-o", str(folder / "versions")], cwd=folder, env=env)
    if done.returncode:
        sys.exit(f"lifecycle pipeline failed (exit {done.returncode})")
    return folder


class Page:
    """One Chromium tab over the DevTools protocol."""

    def __init__(self, ws: Any) -> None:
        self.ws, self.next_id = ws, 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json()
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))

    async def evaluate(self, expression: str) -> Any:
        found = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return found.get("result", {}).get("value")

    async def show(self, url: str, must_show: list[str], seconds: float = 90.0) -> None:
        """Load ``url`` and wait until the page's text holds every string of ``must_show`` (and a little more, for
        the table's last layout pass)."""
        await self.call("Page.navigate", url=url)
        deadline = time.monotonic() + seconds
        text = ""
        while time.monotonic() < deadline:
            text = await self.evaluate("document.body ? document.body.innerText : ''") or ""
            if all(part in text for part in must_show):
                await asyncio.sleep(2.0)
                return
            await asyncio.sleep(0.5)
        missing = [part for part in must_show if part not in text]
        raise RuntimeError(f"{url}: the page never showed {missing} within {seconds:.0f} s; it shows: {text[:600]!r}")

    async def screenshot(self, path: Path) -> None:
        shot = await self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))
        print(f"{path} ({path.stat().st_size / 1024:.0f} KB)")


def store_facts(uri: str) -> dict[str, Any]:
    """The experiment, the pipeline's step runs and the newest registered version, read from the store."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("default")
    if experiment is None:
        sys.exit(f"{uri}: no experiment 'default'; run `lifecycle pipeline` on this store first")
    runs = client.search_runs([experiment.experiment_id], "tags.`lifecycle.step` != 'pipeline'",
                              order_by=["attributes.start_time ASC"])
    versions = [r for r in runs if "size_bytes" in r.data.metrics and r.data.tags.get("lifecycle.step") in
                ("train", "freeze", "compress")]
    newest = client.get_model_version_by_alias("default", "newest")
    parent = client.search_runs([experiment.experiment_id], "tags.`lifecycle.step` = 'pipeline'",
                                order_by=["attributes.start_time DESC"], max_results=1)
    return {"experiment": experiment.experiment_id, "parent": parent[0].info.run_id, "runs": [r.info.run_id for r in versions],
            "names": [r.info.run_name for r in versions], "newest": newest.version}


async def take(base: str, facts: dict[str, Any], out: Path, chromium: str, profile: Path) -> None:
    import aiohttp

    port = free_port()
    log = profile.parent / "chromium.log"
    browser = subprocess.Popen([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                                f"--remote-debugging-port={port}", f"--user-data-dir={profile}",
                                f"--window-size={WINDOW[0]},{WINDOW[1]}", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=log.open("w"))
    try:
        wait_http(f"http://127.0.0.1:{port}/json/version", 60, "chromium", browser, log)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json") as answer:
            target = next(t for t in json.loads(answer.read()) if t["type"] == "page")
        async with aiohttp.ClientSession() as session, session.ws_connect(
                target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            page = Page(ws)
            await page.call("Page.enable")
            await page.call("Emulation.setDeviceMetricsOverride", width=WINDOW[0], height=WINDOW[1],
                            deviceScaleFactor=1, mobile=False)
            experiment = facts["experiment"]
            runs_url = f"{base}/#/experiments/{experiment}/runs"
            await page.show(runs_url, ["pipeline-default"])
            await pick_columns(page, experiment, facts["parent"])
            await page.show(runs_url, ["size_mb", "test_accuracy", "pipeline-default", "compress-int8"])
            await page.screenshot(out / "ui-runs-table.png")
            compare = (f"{base}/#/compare-runs?runs={json.dumps(facts['runs'])}"
                       f"&experiments={json.dumps([experiment])}")
            await page.show(compare.replace(" ", ""), ["Comparing", "test_accuracy"])
            await page.screenshot(out / "ui-compare.png")
            await page.show(f"{base}/#/models/default/versions/{facts['newest']}", ["lifecycle.size_bytes"])
            await page.screenshot(out / "ui-registered-version.png")
    finally:
        browser.terminate()
        try:
            browser.wait(10)
        except subprocess.TimeoutExpired:
            browser.kill()


async def pick_columns(page: Page, experiment: str, parent: str) -> None:
    """Add the size and accuracy columns to the runs table and unfold the pipeline's row, as a user's clicks on
    "Columns" and on the row's expander would: MLflow keeps both in localStorage, in the experiment page's state
    (``MLflowLocalStorage-1.1-ExperimentPage-["<id>"]-ReactComponentState``), read when the page loads. The
    assistant panel MLflow opens on a first visit is closed the same way."""
    changed = await page.evaluate(f"""(() => {{
        const key = 'MLflowLocalStorage-1.1-ExperimentPage-' + JSON.stringify([{json.dumps(experiment)}]) +
            '-ReactComponentState';
        const state = JSON.parse(localStorage.getItem(key) || 'null');
        if (!state || !Array.isArray(state.selectedColumns)) return false;
        const wanted = {json.dumps(COLUMNS)};
        state.selectedColumns = wanted;  // in place of Source, Models, Dataset: the Models column moves last
        state.runsExpanded = {{{json.dumps(parent)}: true}};
        localStorage.setItem(key, JSON.stringify(state));
        localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');
        return true;
    }})()""")
    if not changed:
        dump = await page.evaluate("JSON.stringify(Object.keys(localStorage))")
        raise RuntimeError(f"no runs-table state in localStorage to add columns to (keys: {dump})")
    await page.call("Page.navigate", url="about:blank")  # the next load reads the state (a hash change would not)
    await asyncio.sleep(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, help="a folder holding mlruns/mlflow.db (default: run a pipeline)")
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="where the PNGs go (default: docs/)")
    parser.add_argument("--epochs", type=int, default=2, help="the pipeline's epochs when it makes the store")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    args = parser.parse_args()
    if not shutil.which(args.chromium):
        sys.exit(f"{args.chromium}: not found; `make install-browser` installs Debian's chromium")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lifecycle-ui-") as tmp:
        work = Path(tmp)
        store = args.store.resolve() if args.store else make_store(work, args.epochs)
        db = store / "mlruns" / "mlflow.db"
        if not db.is_file():
            sys.exit(f"{db}: no MLflow store there; pass the folder `lifecycle pipeline` ran in")
        uri = f"sqlite:///{db}"
        facts = store_facts(uri)
        port = free_port()
        log = work / "mlflow.log"
        mlflow_cli = Path(sys.executable).with_name("mlflow")
        env = {**os.environ, "PATH": f"{mlflow_cli.parent}{os.pathsep}{os.environ.get('PATH', '')}",
               "MLFLOW_DISABLE_TELEMETRY": "true"}
        server = subprocess.Popen([str(mlflow_cli), "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
                                   "--port", str(port), "--workers", "1"], cwd=work, env=env,
                                  stdout=subprocess.DEVNULL, stderr=log.open("w"))
        try:
            wait_http(f"http://127.0.0.1:{port}/health", 120, "mlflow server", server, log)
            asyncio.run(take(f"http://127.0.0.1:{port}", facts, args.out, args.chromium, work / "profile"))
        finally:
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()


if __name__ == "__main__":
    main()
