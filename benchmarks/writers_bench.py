"""16 ``lifecycle`` processes of three kinds writing to one tracking store at once, on ``mlflow server`` over
PostgreSQL and on a local SQLite file side by side: wall time, runs lost or duplicated, versions registered once,
aliases right, errors.

The writers (default 16), started together on a store that already holds one trained and frozen version:
- ``train``: the README's default config made tiny (one epoch, 8 filters, 16-d random embedding), each registering a
  version of ``default``;
- ``compress FROZEN --recipe R && promote OUT --alias wN``: each registers a version and points its own alias at it;
- one ``experiment tokenizers`` whose cells (word vocabularies) train, freeze and compress in their own worker
  processes, each a writer, nested under the experiment's parent run.
Then the store is audited: every run FINISHED; each registered version claimed by exactly one run, its source its
own run's artifacts and its manifest naming that run (``lifecycle.tracking.audit_store``); each alias on the version
its compress made.

    .venv/bin/python benchmarks/writers_bench.py                    # postgres server and sqlite, 16 writers
    .venv/bin/python benchmarks/writers_bench.py --writers 4 --stores postgres
    .venv/bin/python benchmarks/writers_bench.py --readme           # also write README.md's bench:writers block
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from concurrency import TINY  # noqa: E402  (the tiny-model flags the trains-only concurrency bench uses too)
from readme import cpu_model, write_block  # noqa: E402  (benchmarks/readme.py, beside this script)

RECIPES = ["int8", "fp16", "prune:0.5", "int8,prune:0.3"]
MODEL = "default"


@dataclass
class Outcome:
    """One store's run: what the writers did and what the store holds afterwards."""

    store: str
    writers: int
    wall_s: float
    exit_0: int
    runs: dict[str, int]
    runs_expected: int
    versions: int
    versions_expected: int
    crossed: int
    aliases_right: int
    aliases_expected: int
    errors: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return max(self.runs_expected - self.runs.get("FINISHED", 0), 0)

    @property
    def duplicated(self) -> int:
        return max(self.versions - self.versions_expected, 0) + self.crossed


def plan(writers: int) -> tuple[int, int, int]:
    """How many trains, compress+promote chains and experiment cells make ``writers`` processes (half trains, a
    quarter of each other kind)."""
    cells = max(writers // 4, 1) if writers >= 4 else 0
    compresses = max(writers // 4, 1) if writers >= 3 else 0
    return writers - cells - compresses, compresses, cells


def _lifecycle(*args: str) -> list[str]:
    return [sys.executable, "-m", "lifecycle", "-q", *args]


def _experiment_file(root: Path, cells: int) -> Path:
    path = root / "writers-cells.yaml"
    counts = ", ".join(str(n) for n in range(1, cells + 1))
    path.write_text(
        "name: writers-cells\n"
        "set: {train.epochs: 1, model.filters: 8, model.embedding_dim: 16, model.embedding_init: rand, "
        "tokenizer.word.word2vec.enabled: false}\n"
        f"grid:\n  - {{label: \"word-min{{min_count}}\", tokenizer.kind: word, tokenizer.word.min_count: [{counts}]}}\n"
        "compress: int8\n"
        f"workers: {cells}\n", encoding="utf-8")
    return path


@dataclass(frozen=True)
class Mix:
    """The writers started together: trains, compresses (each followed by ``promote --alias wN`` of its own version
    when ``chained``), one experiment of ``cells`` cells (a process per cell when more than one), and ``promotes``
    processes that only move aliases ``pN`` onto the prepared checkpoint and frozen versions (no TensorFlow)."""

    trains: int
    compresses: int
    cells: int
    promotes: int = 0
    chained: bool = True

    @classmethod
    def of(cls, writers: int) -> Mix:
        return cls(*plan(writers))

    @property
    def processes(self) -> int:
        experiment = (1 + self.cells if self.cells > 1 else 1) if self.cells else 0
        return self.trains + self.compresses + experiment + self.promotes


def prepare_base(root: Path, env: dict[str, str]) -> None:
    """The store's first two versions: the tiny train at ``root/base`` and its freeze at ``root/frozen``."""
    config = str(REPO / "configs" / "default.yaml")
    for args in (["train", config, "--output", str(root / "base"), *TINY],
                 ["freeze", str(root / "base"), "--output", str(root / "frozen")]):
        done = subprocess.run(_lifecycle(*args), env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise SystemExit(f"preparing the store failed ({' '.join(args[:2])}): {done.stderr.strip()[-800:]}")


def run_writers(uri: str, root: Path, writers: int, store: str, mix: Mix | None = None,
                prepare: Callable[[Path, dict[str, str]], None] = prepare_base) -> Outcome:
    """Prepare a frozen version on ``uri`` (``prepare``: in subprocesses by default; a test that has TensorFlow
    loaded already may do it in its own process), start the writers together, wait, and audit the store."""
    from lifecycle.tracking import audit_store, open_client

    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "LIFECYCLE_VERSIONS_DIR": str(root / "versions"),
           "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "-1", "PYTHONPATH": str(REPO)}
    config = str(REPO / "configs" / "default.yaml")
    before = audit_store(uri, MODEL, check_manifests=False)  # a store other work wrote to: count only ours
    prepare(root, env)
    mix = mix or Mix.of(writers)
    trains, compresses, cells = mix.trains, mix.compresses, mix.cells
    commands: list[list[str]] = [_lifecycle("train", config, *TINY) for _ in range(trains)]
    for i in range(compresses):
        out = root / f"compressed-{i}"
        compress = _lifecycle("compress", str(root / "frozen"), "--recipe", RECIPES[i % len(RECIPES)], "--output",
                              str(out))
        chain = f"{shlex.join(compress)} && {shlex.join(_lifecycle('promote', str(out), '--alias', f'w{i}'))}"
        commands.append(["sh", "-c", chain] if mix.chained else compress)
    if cells:
        commands.append(_lifecycle("experiment", "tokenizers", str(_experiment_file(root, cells)), "--workers",
                                   str(cells)))
    targets = {f"p{i}": root / ("base", "frozen")[i % 2] for i in range(mix.promotes)}
    commands += [_lifecycle("promote", str(path), "--alias", alias) for alias, path in targets.items()]
    started = time.perf_counter()
    procs = [subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cmd in commands]
    results = [(p.communicate(timeout=7200), p.returncode) for p in procs]
    wall = time.perf_counter() - started
    errors = [(err.strip().splitlines() or [f"exit {code}"])[-1][:300] for (_, err), code in results if code != 0]

    audit = audit_store(uri, MODEL)
    ours = {status: count - before.runs.get(status, 0) for status, count in audit.runs.items()}
    audit = replace(audit, runs={status: count for status, count in ours.items() if count},
                    versions=audit.versions - before.versions)
    client = open_client(uri, sweep=False)
    aliases = client.get_registered_model(MODEL).aliases or {}
    if mix.chained:
        targets.update({f"w{i}": root / f"compressed-{i}" for i in range(compresses)})
    right = 0
    for alias, path in targets.items():
        manifest = path / "manifest.json"
        if not manifest.is_file() or alias not in aliases:
            continue
        run_id = json.loads(manifest.read_text(encoding="utf-8")).get("run_id")
        right += client.get_model_version(MODEL, str(aliases[alias])).run_id == run_id
    # Runs: base train + freeze, each train, each compress; the experiment's parent and per cell its cell run with
    # train, freeze and compress runs nested under it.
    runs_expected = 2 + trains + compresses + (1 + 4 * cells if cells else 0)
    return Outcome(store, writers, round(wall, 1), len(commands) - len(errors), audit.runs, runs_expected,
                   audit.versions, 2 + trains + compresses, len(audit.crossed), right, len(targets), errors[:5])


def run_store(store: str, writers: int) -> Outcome:
    from lifecycle.tracking_server import PostgresTrackingServer, TrackingServer

    root = Path(tempfile.mkdtemp(prefix=f"writers-{store}-"))
    root.chmod(0o711)  # PostgreSQL's own user must pass through it (PostgreSQL refuses to run as root)
    try:
        if store == "sqlite":
            return run_writers(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}", root, writers, "local SQLite file")
        if store == "postgres":
            with PostgresTrackingServer(root / "server", workers=2) as server:
                return run_writers(server.url, root, writers, "mlflow server on PostgreSQL")
        with TrackingServer(f"sqlite:///{root / 'server' / 'mlflow.db'}", root / "server", workers=2) as server:
            return run_writers(server.url, root, writers, "mlflow server on SQLite")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def table(rows: list[Outcome]) -> str:
    lines = ["| store | writers | exit 0 | runs FINISHED / expected | runs lost | versions / expected | duplicated or "
             "crossed | aliases right | wall |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.store} | {r.writers} | {r.exit_0} of {r.exit_0 + len(r.errors)} | "
                     f"{r.runs.get('FINISHED', 0)} / {r.runs_expected} | {r.lost} | {r.versions} / "
                     f"{r.versions_expected} | {r.duplicated} | {r.aliases_right} / {r.aliases_expected} | "
                     f"{r.wall_s:.0f} s |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--stores", nargs="+", choices=["postgres", "sqlite", "server-sqlite"],
                        default=["postgres", "sqlite"])
    parser.add_argument("--readme", action="store_true", help="write the table into README.md")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    rows = []
    for store in args.stores:
        row = run_store(store, args.writers)
        print(json.dumps({**asdict(row), "lost": row.lost, "duplicated": row.duplicated}), flush=True)
        rows.append(row)
    trains, compresses, cells = plan(args.writers)
    meta = (f"Measured {datetime.now(UTC).strftime('%Y-%m-%d')} on {cpu_model()} ({os.cpu_count()} cores, load "
            f"average {os.getloadavg()[0]:.1f} at the end), `python benchmarks/writers_bench.py "
            f"{' '.join(sys.argv[1:])}`: {args.writers} processes started together on a store holding one frozen "
            f"version: {trains} `train` (one epoch, tiny model), {compresses} `compress` + `promote --alias`, and "
            f"one `experiment tokenizers` running {cells} cells in their own processes.")
    body = f"{meta}\n\n{table(rows)}"
    errors = [f"- {r.store}: {e}" for r in rows for e in r.errors]
    if errors:
        body += "\n\nErrors:\n" + "\n".join(errors)
    print(body)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2), encoding="utf-8")
    if args.readme:
        write_block("writers", body)


if __name__ == "__main__":
    main()
