"""What a new user hit on their own data (issue 18): where relative paths resolve, where MLflow artifacts land, the
csv/tsv hint, plain progress lines off a terminal, the dropped repeats and test texts also in train, what
`tokenizer train --output` writes, and `versions` written to a pipe."""

from __future__ import annotations

import json
import logging
import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from lifecycle import console
from lifecycle.cli import app
from lifecycle.config import DataConfig, TrackingConfig, load_config, resolve_data_path, validate
from lifecycle.corpus import load_corpus
from lifecycle.errors import DataError

REPO = Path(__file__).resolve().parents[2]
LIFECYCLE = str(Path(sys.executable).parent / "lifecycle")
runner = CliRunner()

WORDS = {"pos": "good great fine lovely superb".split(), "neg": "bad awful poor dull boring".split()}


def _rows(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(sorted(WORDS))
        rows.append((" ".join(f"{rng.choice(WORDS[label])} w{rng.randint(0, 40)}" for _ in range(5)), label))
    return rows


def _write_csv(path: Path, rows: list[tuple[str, str]], delimiter: str = ",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{text}{delimiter}{label}\n" for text, label in [("text", "label"), *rows]),
                    encoding="utf-8")
    return path


def _user_set(tmp_path: Path) -> dict[str, Path]:
    """A user's own set: a config beside train.csv (20 repeated rows) and test.csv (15 of its 55 texts in train),
    and an unrelated working directory."""
    rows = _rows(300, seed=1)
    folder = tmp_path / "project"
    _write_csv(folder / "train.csv", rows + rows[:20])
    _write_csv(folder / "test.csv", rows[:15] + _rows(40, seed=2))
    config = folder / "small.yaml"
    config.write_text("name: small\n"
                      "data: {format: csv, path: train.csv, test_path: test.csv}\n"
                      "tokenizer: {kind: word, max_len: 16}\n"
                      "model: {embedding_dim: 16, filters: 8, kernel_sizes: [2, 3]}\n"
                      "train: {epochs: 2, batch_size: 32}\n", encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    return {"folder": folder, "config": config, "cwd": elsewhere}


@pytest.fixture
def user_set(tmp_path: Path) -> dict[str, Path]:
    return _user_set(tmp_path)


# --- 1. relative paths: beside the config, then the working directory, then the data directory ------------------


def test_a_relative_path_resolves_beside_the_config_from_any_cwd(user_set: dict[str, Path],
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    monkeypatch.chdir(user_set["cwd"])
    cfg = load_config(Path("..") / "project" / "small.yaml")
    # Saved absolute, so the config stored in a version reads the same files from any other working directory.
    assert cfg.data.path == str(user_set["folder"] / "train.csv")
    assert cfg.data.test_path == str(user_set["folder"] / "test.csv")
    corpus = load_corpus(cfg.data, cfg.name)
    assert len(corpus.train) + len(corpus.validation) == 300
    saved = validate(yaml.safe_load(cfg.to_yaml()), "saved")
    monkeypatch.chdir(tmp_path)
    assert load_corpus(saved.data, saved.name).test == corpus.test


def test_the_config_folder_wins_then_the_cwd_then_the_data_dir(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    configs, cwd, data = tmp_path / "configs", tmp_path / "cwd", tmp_path / "data"
    for folder in (configs, cwd, data):
        _write_csv(folder / "both.csv", _rows(4, seed=3))
    _write_csv(cwd / "cwd-only.csv", _rows(4, seed=3))
    _write_csv(data / "data-only.csv", _rows(4, seed=3))
    config = configs / "c.yaml"
    config.write_text("data: {format: csv, path: both.csv, test_path: cwd-only.csv}\n", encoding="utf-8")
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("LIFECYCLE_DATA_DIR", str(data))
    cfg = load_config(config)
    assert cfg.data.path == str(configs / "both.csv")
    assert cfg.data.test_path == str(cwd / "cwd-only.csv")
    # Found only in the data directory: kept as written (portable), resolved there when read.
    cfg = load_config(config, ["data.path=data-only.csv"])
    assert cfg.data.path == "data-only.csv"
    assert resolve_data_path(cfg.data, cfg.data.path) == data / "data-only.csv"
    # A relative data_dir sits beside the config file when it is there.
    (configs / "sets").mkdir()
    _write_csv(configs / "sets" / "in-sets.csv", _rows(4, seed=3))
    cfg = load_config(config, ["data.data_dir=sets", "data.path=in-sets.csv"])
    assert cfg.data.data_dir == str(configs / "sets")
    assert resolve_data_path(cfg.data, cfg.data.path) == configs / "sets" / "in-sets.csv"


def test_a_missing_file_lists_every_place_looked(user_set: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    monkeypatch.chdir(user_set["cwd"])
    monkeypatch.setenv("LIFECYCLE_DATA_DIR", str(tmp_path / "data"))
    cfg = load_config(user_set["config"], ["data.path=nope.csv"])
    with pytest.raises(DataError) as info:
        load_corpus(cfg.data, cfg.name)
    assert str(info.value) == (
        f"data.path: nope.csv not found; looked in {user_set['folder'] / 'nope.csv'} (beside the config file), "
        f"{user_set['cwd'] / 'nope.csv'} (the working directory), {tmp_path / 'data' / 'nope.csv'} (the data "
        "directory: data.data_dir, else $LIFECYCLE_DATA_DIR, else ../shared/data beside the checkout). Set data.path "
        "to an existing file: an absolute path, or one relative to the config file's folder, the working directory "
        "or the data directory.")


def test_published_configs_still_read_their_sets_from_the_data_dir(data_dir: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # outside the checkout: ../shared/data is the checkout's, not the cwd's
    monkeypatch.delenv("LIFECYCLE_DATA_DIR", raising=False)
    cfg = load_config(REPO / "configs" / "mr-word.yaml")
    assert cfg.data.path == "MR"  # found in the data directory only: the saved config stays portable
    assert resolve_data_path(cfg.data, "MR") == (REPO.parent / "shared" / "data" / "MR").resolve()
    assert len(load_corpus(cfg.data, cfg.name).test) == 1066


def test_tokenizer_train_from_another_cwd_writes_only_its_output(user_set: dict[str, Path]) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("LIFECYCLE_VERSIONS_DIR", "MLFLOW_TRACKING_URI")}
    done = subprocess.run([LIFECYCLE, "tokenizer", "train", "../project/small.yaml", "--no-track", "--output",
                           "tok"], cwd=user_set["cwd"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in user_set["cwd"].iterdir()) == ["tok"]  # no versions/, no mlruns/
    saved = yaml.safe_load((user_set["cwd"] / "tok" / "config.yaml").read_text(encoding="utf-8"))
    assert saved["data"]["path"] == str(user_set["folder"] / "train.csv")


# --- 2. MLflow artifacts beside the SQLite store, from any working directory -------------------------------------


def _experiments(db: Path) -> dict[str, str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT name, artifact_location FROM experiments").fetchall()
    conn.close()
    return dict(rows)


def test_artifacts_land_under_the_store_from_another_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    from lifecycle.tracking import Tracker, open_client

    cwd, store = tmp_path / "cwd", tmp_path / "project" / "mlruns"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    tracker = Tracker(TrackingConfig(uri=f"sqlite:///{store / 'mlflow.db'}"), "papercuts")
    with tracker.run("test", "artifacts"):
        tracker.log_text("hello", "note.txt")
    run = open_client(tracker.uri).get_run(tracker.last_run_id)
    assert run.info.artifact_uri.startswith(str(store / "artifacts"))
    assert (store / "artifacts" / tracker.last_run_id / "artifacts" / "note.txt").read_text() == "hello"
    # MLflow's own "Default" experiment (where runs without an experiment go) sits there too, not in ./mlruns.
    assert _experiments(store / "mlflow.db") == {"Default": str(store / "artifacts" / "0"),
                                                 "papercuts": str(store / "artifacts")}
    assert list(cwd.iterdir()) == []

    # An experiment made by other code keeps its own location: lifecycle uses it and says where artifacts go.
    import mlflow

    mlflow.set_tracking_uri(tracker.uri)
    mlflow.create_experiment("made-elsewhere")
    with caplog.at_level(logging.WARNING, logger="lifecycle.tracking"):
        Tracker(TrackingConfig(uri=tracker.uri, experiment="made-elsewhere"), "x")
    assert f"experiment 'made-elsewhere' keeps its artifacts in {cwd / 'mlruns'}" in caplog.text
    assert f"not under {store / 'artifacts'}" in caplog.text


def test_a_relative_sqlite_uri_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lifecycle.registry_client import default_tracking_uri
    from lifecycle.tracking import Tracker

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")  # MLflow's own default form
    assert default_tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(TrackingConfig(uri="sqlite:///runs/mlflow.db"), "relative")
    assert tracker.uri == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert _experiments(tmp_path / "runs" / "mlflow.db")["relative"] == str(tmp_path / "runs" / "artifacts")
    # In a config file, a relative store is beside the file if it is there, else in the working directory.
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "c.yaml").write_text("tracking: {uri: 'sqlite:///runs/mlflow.db'}\n", encoding="utf-8")
    assert load_config(tmp_path / "conf" / "c.yaml").tracking.uri == tracker.uri


# --- 3. the delimiter hint ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "delimiter", "message"), [
    ("tsv", ",", "no column 'text': data.format=tsv reads one column, 'text,label', whose name holds commas; the "
                 "file looks comma-separated (columns: text, label). Set data.format: csv (or --set "
                 "data.format=csv)."),
    ("csv", "\t", "no column 'text': data.format=csv reads one column, 'text\\tlabel', whose name holds tabs; the "
                  "file looks tab-separated (columns: text, label). Set data.format: tsv (or --set "
                  "data.format=tsv)."),
])
def test_the_wrong_delimiter_names_the_format_to_use(tmp_path: Path, fmt: str, delimiter: str, message: str) -> None:
    path = _write_csv(tmp_path / "data.txt", _rows(6, seed=4), delimiter)
    with pytest.raises(DataError) as info:
        load_corpus(DataConfig(format=fmt, path=str(path)), "x")
    assert str(info.value) == f"{path}: {message}"


# --- 5. repeats dropped and test texts also in train, reported ---------------------------------------------------


def test_repeats_and_test_texts_in_train_are_counted_and_dropped(user_set: dict[str, Path],
                                                                caplog: pytest.LogCaptureFixture) -> None:
    cfg = load_config(user_set["config"])
    source = f"csv: {user_set['folder'] / 'train.csv'} (test: {user_set['folder'] / 'test.csv'})"
    with caplog.at_level(logging.WARNING, logger="lifecycle.corpus"):
        corpus = load_corpus(cfg.data, cfg.name)
    assert corpus.cleaning == {"repeats_dropped": 20, "test_in_train": 15, "test_overlap": "drop", "test_dropped": 15}
    assert len(corpus.test) == 40 and not set(corpus.test.texts) & set(corpus.train.texts)
    assert caplog.messages == [
        f"{source}: dropped 20 repeated (text, label) rows of 320, kept the first of each (data.deduplicate: false "
        "keeps them)",
        f"{source}: 15 of 55 test texts also sit in the training data; dropped them from the test split (40 left). "
        "data.test_overlap: keep scores them, error refuses such data.",
    ]
    kept = load_corpus(load_config(user_set["config"], ["data.test_overlap=keep"]).data, cfg.name)
    assert len(kept.test) == 55 and kept.cleaning["test_dropped"] == 0
    with pytest.raises(DataError, match=r"15 of 55 test texts also sit in the training data \(e\.g\. '.*'\); "
                                        r"data\.test_overlap is error"):
        load_corpus(load_config(user_set["config"], ["data.test_overlap=error"]).data, cfg.name)


def test_an_official_test_split_is_kept_as_published(data_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="lifecycle.corpus"):
        corpus = load_corpus(DataConfig(format="trec", data_dir=str(data_dir)), "trec")
    assert len(corpus.test) == 500
    assert corpus.cleaning == {"repeats_dropped": 71, "test_in_train": 10, "test_overlap": "keep", "test_dropped": 0}
    assert "10 of 500 test texts also sit in the training data; kept (an official test split, kept as published)" \
        in caplog.text


# --- 4 and 5 through the CLI: plain progress lines, the counts in the manifest and the run ------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`lifecycle train` through CliRunner (stderr is not a terminal), tracked in a SQLite store of its own."""
    tmp_path = tmp_path_factory.mktemp("trained")
    config = _user_set(tmp_path)["config"]
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    result = runner.invoke(app, ["train", str(config), "--output", str(tmp_path / "v"), "--set",
                                 f"tracking.uri={uri}", "--fresh"])
    assert result.exit_code == 0, result.output
    return {"stderr": result.stderr, "version": tmp_path / "v", "uri": uri}


def test_train_off_a_terminal_prints_a_plain_line_per_epoch_and_records_the_counts(trained: dict[str, Any]) -> None:
    from lifecycle.tracking import open_client

    lines = trained["stderr"].splitlines()
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert len(epochs) == 2, lines
    for number, line in enumerate(epochs, start=1):
        words = line.split()
        assert words[:2] == ["epoch", f"{number}/2"] and words[-1] == "s"
        assert words[2:10:2] == ["loss", "accuracy", "val_loss", "val_accuracy"]
        float(words[-2])
    manifest = json.loads((trained["version"] / "manifest.json").read_text())
    assert {k: manifest["data"][k] for k in ("repeats_dropped", "test_in_train", "test_overlap", "test_dropped")} \
        == {"repeats_dropped": 20, "test_in_train": 15, "test_overlap": "drop", "test_dropped": 15}
    assert manifest["data"]["test"] == 40
    run = open_client(trained["uri"]).get_run(manifest["run_id"])
    assert {k: run.data.metrics[k] for k in ("data_repeats_dropped", "data_test_in_train", "data_test_dropped")} \
        == {"data_repeats_dropped": 20.0, "data_test_in_train": 15.0, "data_test_dropped": 15.0}
    assert run.data.tags["lifecycle.test_overlap"] == "drop"


def test_quiet_silences_the_plain_lines(user_set: dict[str, Path], tmp_path: Path) -> None:
    result = runner.invoke(app, ["-q", "train", str(user_set["config"]), "--output", str(tmp_path / "q"),
                                 "--no-track", "--epochs", "1", "--fresh"])
    assert result.exit_code == 0, result.output
    assert not [line for line in result.stderr.splitlines() if line.startswith(("epoch", "WARNING"))], result.stderr


def test_compress_off_a_terminal_prints_a_plain_line_per_step(trained: dict[str, Any], tmp_path: Path) -> None:
    frozen = runner.invoke(app, ["freeze", str(trained["version"]), "--output", str(tmp_path / "f"), "--no-track"])
    assert frozen.exit_code == 0, frozen.output
    result = runner.invoke(app, ["compress", str(tmp_path / "f"), "--recipe", "prune:0.5,int8", "--output",
                                 str(tmp_path / "c"), "--no-track"])
    assert result.exit_code == 0, result.output
    steps = [line for line in result.stderr.splitlines() if line.startswith("compress step")]
    assert [line.split(":")[0] for line in steps] == ["compress step 1/2 prune", "compress step 2/2 int8"]
    assert all(line.endswith(" s") and " MB -> " in line for line in steps), steps


def test_a_terminal_keeps_the_rich_bars() -> None:
    from rich.progress import Progress

    bars = console.keras_progress(Progress(disable=False), epochs=2, steps_per_epoch=3)
    assert type(bars).__name__ == "_Progress"
    assert console.epoch_line(0, 10, {"val_accuracy": 0.5, "loss": 0.25, "accuracy": 0.75, "val_loss": 0.5,
                                      "learning_rate": 0.001}, 1.25) \
        == "epoch 1/10 loss 0.2500 accuracy 0.7500 val_loss 0.5000 val_accuracy 0.5000 learning_rate 0.0010 1.2 s"


# --- 6. `versions` written to a pipe is not cut at 80 columns ------------------------------------------------------


def test_versions_piped_to_a_file_is_not_cut(tmp_path: Path) -> None:
    from lifecycle.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(TrackingConfig(uri=uri), "a-rather-long-registered-model-name")
    (tmp_path / "version").mkdir()
    (tmp_path / "version" / "manifest.json").write_text("{}")
    parent = ""
    for recipe, size in (("-", 8.04e6), ("vocab:coverage=0.97+prune:0.85+tune:3+int8", 1.8e5),
                         ("vocab:coverage=0.97+prune:0.85+tune:3+int8:embedding=table", 1.7e5)):
        with tracker.run("compress", recipe):
            tracker.log_metrics({"test_accuracy": 0.885, "size_bytes": size})
            tracker.log_artifacts(tmp_path / "version", "version")
            tracker.register("a-rather-long-registered-model-name", {"lifecycle.kind": "compressed",
                                                                     "lifecycle.recipe": recipe,
                                                                     "lifecycle.parent_run": parent})
        parent = str(tracker.last_run_id)
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    with (tmp_path / "out.txt").open("w") as out:
        done = subprocess.run([LIFECYCLE, "--quiet", "versions"], env={**env, "MLFLOW_TRACKING_URI": uri},
                              stdout=out, stderr=subprocess.PIPE, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    lines = (tmp_path / "out.txt").read_text(encoding="utf-8").splitlines()
    assert lines[-1].endswith("v3 compressed vocab:coverage=0.97+prune:0.85+tune:3+int8:embedding=table acc 88.5% "
                              "deployed 0.17 MB"), lines
    assert len(lines) == 4 and len(lines[-1]) > 80
