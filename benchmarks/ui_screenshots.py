"""Screenshots of the MLflow UI on a lifecycle store, taken by headless Chromium (``make ui-check``).

    python benchmarks/ui_screenshots.py [--store DIR] [--out docs] [--epochs 2]

Without ``--store`` it first runs ``lifecycle pipeline`` (the embedded default corpus, ``--budget -1``) in a temp
folder. Then it starts ``mlflow server`` on the store's SQLite database, opens Chromium headless with its DevTools
port, and for each view loads the page, waits until the text it must show is there, and saves a PNG:

- ``ui-runs-table.png``: the experiment's runs table with the size and accuracy columns, the pipeline unfolded,
- ``ui-charts.png``: the runs' chart view, a scatter of ``size_mb`` against ``test_accuracy`` first,
- ``ui-compare.png``: MLflow's compare page of the frozen and compressed versions, as it opens,
- ``ui-registered-version.png``: the page of the version the alias ``newest`` points at.

MLflow's runs table shows no metric column until a user picks one under "Columns", and its chart view draws one
chart per metric in alphabetical order; both choices live in the browser's localStorage (MLflow's per-experiment
UI state), so the script writes that same state (the columns ``size_mb``, ``test_accuracy``, ``kind``, ``recipe``,
``vocab_size``, ``embedding_dim``; the pipeline's row unfolded; a scatter chart first) before loading the page, as
a user's clicks would. Chromium: Debian's ``chromium`` (``make install-browser``). The DevTools client is aiohttp's
websocket client (an mlflow dependency); the PNGs are cut to 128 colours with Pillow (a matplotlib dependency).
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
           "params.`vocab_size`", "params.`embedding_dim`"]

# The chart view's first chart: a scatter of deployed size against test accuracy (as "Add chart" -> Scatter would
# make it), then the generated bar charts of those two metrics, then the rest.
SCATTER_FIRST = """
    const charts = state.compareRunCharts || [];
    const section = (state.compareRunSections || [])[0];
    const first = ['size_mb', 'test_accuracy'].map(key => charts.find(c => c.metricKey === key)).filter(Boolean);
    state.compareRunCharts = [{
        uuid: 'lifecycle-size-vs-accuracy', type: 'SCATTER', runsCountToCompare: 100,
        metricSectionId: section ? section.uuid : '', deleted: false, isGenerated: false,
        displayName: 'size_mb vs test_accuracy',
        xaxis: {key: 'size_mb', type: 'METRIC'}, yaxis: {key: 'test_accuracy', type: 'METRIC'}},
        ...first, ...charts.filter(c => !first.includes(c) && c.uuid !== 'lifecycle-size-vs-accuracy')];
    if (section) section.isReordered = true;"""


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
        """The viewport as a PNG of at most 128 colours (a UI's flat colours lose nothing visible; a quarter of
        the bytes)."""
        import io

        from PIL import Image

        shot = await self.call("Page.captureScreenshot", format="png")
        image = Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB")
        image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        print(f"{path} ({path.stat().st_size / 1024:.0f} KB)")

    async def edit_state(self, experiment: str, script: str) -> None:
        """Change the experiment page's UI state as the user's clicks would, then leave the page so the next load
        reads it (a hash change would keep the page's state in memory and write it back).

        MLflow keeps the runs table's columns, the unfolded rows and the charts in localStorage, under
        ``MLflowLocalStorage-1.1-ExperimentPage-["<id>"]-ReactComponentState``; ``script`` edits ``state``. The
        assistant panel MLflow opens on a first visit is closed the same way.
        """
        key = f"MLflowLocalStorage-1.1-ExperimentPage-{json.dumps([experiment])}-ReactComponentState"
        done = await self.evaluate(f"""(() => {{
            const key = {json.dumps(key)};
            const state = JSON.parse(localStorage.getItem(key) || 'null');
            if (!state || !Array.isArray(state.selectedColumns)) return false;
            {script}
            localStorage.setItem(key, JSON.stringify(state));
            localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');
            return true;
        }})()""")
        if not done:
            keys = await self.evaluate("JSON.stringify(Object.keys(localStorage))")
            raise RuntimeError(f"no experiment page state {key} in localStorage (MLflow changed it?): {keys}")
        await self.call("Page.navigate", url="about:blank")
        await asyncio.sleep(1.0)


def store_facts(uri: str) -> dict[str, Any]:
    """The experiment, the pipeline's step runs and the newest registered version, read from the store."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("default")
    if experiment is None:
        sys.exit(f"{uri}: no experiment 'default'; run `lifecycle pipeline` on this store first")
    runs = client.search_runs([experiment.experiment_id], "tags.`lifecycle.step` != 'pipeline'",
                              order_by=["attributes.start_time ASC"])
    # The versions made from the one checkpoint: what "which is smallest at what accuracy" compares.
    versions = [r for r in runs if "size_bytes" in r.data.metrics and r.data.tags.get("lifecycle.step") in
                ("freeze", "compress")]
    newest = client.get_model_version_by_alias("default", "newest")
    parent = client.search_runs([experiment.experiment_id], "tags.`lifecycle.step` = 'pipeline'",
                                order_by=["attributes.start_time DESC"], max_results=1)
    return {"experiment": experiment.experiment_id, "parent": parent[0].info.run_id,
            "runs": [r.info.run_id for r in versions], "newest": newest.version}


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
            await page.edit_state(experiment, f"""
                state.selectedColumns = {json.dumps(COLUMNS)};  // in place of Source, Models and Dataset
                state.runsExpanded = {{{json.dumps(facts["parent"])}: true}};""")
            await page.show(runs_url, ["size_mb", "test_accuracy", "pipeline-default", "compress-int8"])
            await page.screenshot(out / "ui-runs-table.png")
            charts_url = f"{runs_url}?compareRunsMode=CHART"
            await page.show(charts_url, ["Model metrics", "compress-int8"])  # charts off screen are not drawn
            await page.edit_state(experiment, SCATTER_FIRST)
            await page.show(charts_url, ["size_mb vs.", "compress-int8"])  # its title: "size_mb vs. test_accuracy"
            await page.screenshot(out / "ui-charts.png")
            compare = (f"{base}/#/compare-runs?runs={json.dumps(facts['runs'])}"
                       f"&experiments={json.dumps([experiment])}")
            await page.show(compare.replace(" ", ""), ["Comparing", "embedding_dim", "vocab_size"])
            await page.screenshot(out / "ui-compare.png")
            await page.show(f"{base}/#/models/default/versions/{facts['newest']}", ["lifecycle.size_bytes"])
            await page.screenshot(out / "ui-registered-version.png")
    finally:
        stop(browser, 10)


def stop(process: subprocess.Popen, seconds: float) -> None:
    """Terminate ``process``; kill it if it has not ended ``seconds`` later."""
    process.terminate()
    try:
        process.wait(seconds)
    except subprocess.TimeoutExpired:
        process.kill()


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
            stop(server, 20)


if __name__ == "__main__":
    main()
