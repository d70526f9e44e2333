"""Every step against a real ``mlflow server`` on a real PostgreSQL (started by lifecycle's own files), and the two
faults a team meets first: a server that is not there, a database password that is wrong."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO

# The README's default config made tiny (one epoch on the embedded chatterbot corpus, 8 filters, 16-d embedding).
TINY = ["train.epochs=1", "model.filters=8", "model.embedding_dim=16", "model.embedding_init=rand",
        "tokenizer.word.word2vec.enabled=false"]


@pytest.fixture(scope="module")
def team_server() -> Iterator[object]:
    """PostgreSQL + ``mlflow server`` on it, in a folder PostgreSQL's own user may enter (pytest's tmp folders are
    root-only, and PostgreSQL refuses to run as root)."""
    from lifecycle.errors import LifecycleError
    from lifecycle.tracking_server import PostgresTrackingServer

    root = Path(tempfile.mkdtemp(prefix="lifecycle-team-server-"))
    root.chmod(0o711)  # mkdtemp's folder is ours alone; the postgres user must pass through it
    try:
        server = PostgresTrackingServer(root)
        server.wait()
    except LifecycleError as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"the PostgreSQL tracking server did not start: {exc}")
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def _cli(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lifecycle", "-q", *args], env=env, capture_output=True, text=True,
                          cwd=REPO, timeout=timeout)


def _env(uri: str, versions: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": uri, "LIFECYCLE_VERSIONS_DIR": str(versions),
            "PYTHONPATH": str(REPO), **extra}


def _new_data(cfg, path: Path) -> Path:
    """200 texts of the corpus's own labels, as retrain's NEW data."""
    from lifecycle.corpus import load_corpus

    corpus = load_corpus(cfg.data, cfg.name)
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["text", "label"])
        writer.writerows(list(zip(corpus.train.texts, corpus.train.labels, strict=True))[:200])
    return path


def test_train_freeze_compress_retrain_promote_against_mlflow_server_on_postgresql(
        team_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow
    import psycopg

    from lifecycle.config import load_config
    from lifecycle.registry_client import copy_source, rest_lookup
    from lifecycle.workflows import RetrainOptions, run_compress, run_freeze, run_retrain, run_train

    url = team_server.url
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    cfg = load_config(REPO / "configs" / "default.yaml", TINY)
    trained = run_train(cfg, tmp_path / "ckpt", versions_dir=tmp_path / "versions")
    frozen = run_freeze(str(trained.version), tmp_path / "frozen")
    compressed = run_compress(str(frozen.version), "int8", tmp_path / "int8")
    retrained = run_retrain(str(compressed.version), _new_data(cfg, tmp_path / "new.csv"), RetrainOptions(epochs=1),
                            tmp_path / "retrained")
    steps = [trained, frozen, compressed, *retrained]
    assert all(step.registered for step in steps), [(s.version, s.registered) for s in steps]

    env = _env(url, tmp_path / "versions")
    promoted = _cli(["promote", f"models:/default/{compressed.registered}", "--alias", "champion"], env)
    assert promoted.returncode == 0, promoted.stderr
    listed = _cli(["versions"], env)
    assert listed.returncode == 0, listed.stderr
    assert "champion" in listed.stdout

    client = mlflow.MlflowClient(url)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, max_results=1000)
    assert {r.info.status for r in runs} == {"FINISHED"}, [(r.info.run_name, r.info.status) for r in runs]
    assert all(r.info.artifact_uri.startswith("mlflow-artifacts:") for r in runs)
    versions = client.search_model_versions("name='default'")
    assert sorted(int(v.version) for v in versions) == list(range(1, len(steps) + 1))  # each registered once
    assert sorted(v.run_id for v in versions) == sorted(s.run_id for s in steps)
    # Each version's source is its logged model, whose files the server's artifact proxy holds.
    assert all(v.source.startswith("models:/m-") for v in versions)
    assert all(client.get_logged_model(v.source.removeprefix("models:/")).artifact_location.startswith(
        "mlflow-artifacts:") for v in versions)
    assert client.get_model_version_by_alias("default", "champion").version == compressed.registered

    # What `serve`'s roll-out does: the alias over REST, the files through the artifact proxy, no mlflow client.
    entry = rest_lookup("models:/default@champion", url)
    assert (entry.version, entry.run_id) == (compressed.registered, compressed.run_id)
    fetched = copy_source(entry.source, tmp_path / "served", url)
    assert (fetched / "manifest.json").read_bytes() == (compressed.version / "manifest.json").read_bytes()
    experiment = client.get_run(trained.run_id).info.experiment_id
    assert (team_server.server.log.parent / "artifacts" / experiment / trained.run_id).is_dir()  # kept by the server

    with psycopg.connect(team_server.cluster.uri) as conn:  # the runs are PostgreSQL's rows
        assert conn.execute("SELECT count(*) FROM runs WHERE status = 'FINISHED'").fetchone()[0] == len(runs)


def test_an_unreachable_server_is_one_line_exit_5_and_writes_nothing(tmp_path: Path) -> None:
    from lifecycle.tracking_server import free_port

    url = f"http://127.0.0.1:{free_port()}"
    versions = tmp_path / "versions"
    done = _cli(["train", str(REPO / "configs" / "default.yaml"), "--output", str(tmp_path / "v"),
                 *[f"--set={item}" for item in TINY]],
                _env(url, versions, LIFECYCLE_TRACKING_CONNECT_SECONDS="2"))
    assert done.returncode == 5, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert url in lines[0] and "cannot be reached" in lines[0] and "make server" in lines[0]
    assert not (tmp_path / "v").exists()
    assert [p for p in versions.rglob("*") if p.is_dir()] == [versions / ".work"]  # no half-made work folder


def _wrong_password_uri(cluster) -> tuple[str, str]:
    wrong = cluster.uri.replace(f":{cluster.password}@", ":not-the-password@")
    return wrong, wrong.replace(":not-the-password@", ":***@")


def test_a_wrong_database_password_in_the_tracking_uri_is_one_line_with_it_masked(team_server, tmp_path: Path) -> None:
    wrong, masked = _wrong_password_uri(team_server.cluster)
    done = _cli(["versions"], _env(wrong, tmp_path / "versions"))
    assert done.returncode == 5, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert masked in lines[0] and "password authentication failed" in lines[0]
    assert "not-the-password" not in done.stderr and "password in the tracking URI" in lines[0]


def test_an_mlflow_server_over_a_wrong_database_password_fails_at_once_in_one_line(team_server,
                                                                                    tmp_path: Path) -> None:
    import time

    from lifecycle.errors import TrackingError
    from lifecycle.tracking_server import TrackingServer

    wrong, masked = _wrong_password_uri(team_server.cluster)
    started = time.monotonic()
    server = TrackingServer(wrong, tmp_path / "server")
    try:
        with pytest.raises(TrackingError) as caught:
            server.wait(120)
    finally:
        server.stop()
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and masked in message and "not-the-password" not in message
    assert "password authentication failed" in message and "database password" in message
    assert time.monotonic() - started < 60  # not after mlflow's ten login attempts (about 100 s)
    assert server.process.poll() is not None


def _writers_bench():
    import importlib.util

    spec = importlib.util.spec_from_file_location("writers_bench", REPO / "benchmarks" / "writers_bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_sixteen_lifecycle_processes_at_once_on_the_server_lose_and_duplicate_nothing(
        team_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """16 real processes writing to the server together: 3 trains, 6 compresses, one experiment of 2 cells (its
    process and one per cell) and 4 alias moves; every run FINISHED, every version registered once by its own run,
    every alias on its version (benchmarks/writers_bench.py, which runs 16 heavier writers on the server and on
    SQLite, is the same code)."""
    from lifecycle.config import load_config
    from lifecycle.workflows import run_freeze, run_train

    bench = _writers_bench()
    root = tmp_path / "writers"
    root.mkdir()

    def prepare_here(folder: Path, env: dict[str, str]) -> None:  # TensorFlow is loaded here already: no spawn
        monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
        cfg = load_config(REPO / "configs" / "default.yaml", TINY)
        run_train(cfg, folder / "base", versions_dir=folder / "versions")
        run_freeze(str(folder / "base"), folder / "frozen", versions_dir=folder / "versions")

    mix = bench.Mix(trains=3, compresses=6, cells=2, promotes=4, chained=False)
    assert mix.processes == 16
    outcome = bench.run_writers(team_server.url, root, 16, "mlflow server on PostgreSQL", mix, prepare_here)
    assert outcome.errors == [] and outcome.exit_0 == 14  # 14 commands: the experiment is 3 of the 16 processes
    assert outcome.runs == {"FINISHED": outcome.runs_expected}, outcome.runs
    assert outcome.versions == outcome.versions_expected == 2 + 3 + 6 and outcome.crossed == 0
    assert outcome.aliases_right == outcome.aliases_expected == 4
