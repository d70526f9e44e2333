"""Many ``lifecycle train`` processes at once on one tracking store: runs lost (must be 0) and wall time.

For each N (default 2, 4, 8, 16) and each store (a fresh SQLite file; a fresh ``mlflow server`` over its own SQLite),
N identical trains of the README's default config (made tiny: one epoch, 8 filters, 16-d random embedding) start
together on a fresh store, the worst case: every process creates the schema, the experiment, the registered model
and the same datasets at once, and all want the same resume folder. Then the store is audited: runs by status,
registered versions, versions that do not point at their own run's artifacts (each version's manifest is fetched
and its run id compared).

    .venv/bin/python benchmarks/concurrency.py               # all N, both stores (about 25 minutes on 2 cores)
    .venv/bin/python benchmarks/concurrency.py --n 2 4 --stores sqlite
    .venv/bin/python benchmarks/concurrency.py --readme      # also write README.md's bench:concurrency block
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from readme import cpu_model, write_block  # noqa: E402  (benchmarks/readme.py, beside this script)

TINY = ["--epochs", "1", "--set", "model.filters=8", "--set", "model.embedding_dim=16",
        "--set", "model.embedding_init=rand", "--set", "tokenizer.word.word2vec.enabled=false"]


def trains_at_once(n: int, uri: str, root: Path) -> dict:
    """Start ``n`` identical trains on ``uri`` together and audit the store afterwards."""
    from lifecycle.tracking import audit_store

    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "LIFECYCLE_VERSIONS_DIR": str(root / "versions"),
           "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "-1"}
    started = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "lifecycle", "-q", "train", str(REPO / "configs" / "default.yaml"),
                               *TINY], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(n)]
    results = [(p.communicate(timeout=3600), p.returncode) for p in procs]
    wall = time.perf_counter() - started
    errors = [err.strip().splitlines()[-1] if err.strip() else f"exit {code}" for (_, err), code in results
              if code != 0]
    audit = audit_store(uri, "default")
    return {"n": n, "wall_s": round(wall, 1), "exit_0": n - len(errors), "finished": audit.finished,
            "runs": audit.runs, "versions": audit.versions, "crossed": len(audit.crossed),
            "lost": n - audit.finished, "errors": errors[:3]}


def run_store(store: str, n: int) -> dict:
    from lifecycle.tracking_server import TrackingServer

    with tempfile.TemporaryDirectory(prefix=f"concurrency-{store}-{n}-") as folder:
        root = Path(folder)
        if store == "sqlite":
            return {"store": store, **trains_at_once(n, f"sqlite:///{root / 'mlruns' / 'mlflow.db'}", root)}
        with TrackingServer(f"sqlite:///{root / 'server.db'}", root / "server") as server:
            return {"store": "mlflow server", **trains_at_once(n, server.url, root)}


def table(rows: list[dict]) -> str:
    lines = ["| store | N | exit 0 | runs FINISHED | registered | crossed | runs lost | wall |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['store']} | {r['n']} | {r['exit_0']} | {r['finished']} | {r['versions']} | {r['crossed']} "
                     f"| {r['lost']} | {r['wall_s']:.0f} s |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--stores", nargs="+", choices=["sqlite", "server"], default=["sqlite", "server"])
    parser.add_argument("--readme", action="store_true", help="write the table into README.md")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    rows = []
    for store in args.stores:
        for n in args.n:
            row = run_store(store, n)
            print(json.dumps(row), flush=True)
            rows.append(row)
    load = os.getloadavg()[0]
    meta = (f"Measured {datetime.now(UTC).strftime('%Y-%m-%d')} on {cpu_model()} ({os.cpu_count()} cores, load "
            f"average {load:.1f} at the end), `python benchmarks/concurrency.py {' '.join(sys.argv[1:])}`: N identical "
            "`lifecycle train configs/default.yaml` (one epoch, tiny model) started together on a fresh store.")
    body = f"{meta}\n\n{table(rows)}"
    print(body)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    if args.readme:
        write_block("concurrency", body)


if __name__ == "__main__":
    main()
