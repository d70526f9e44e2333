"""Calibrated probabilities: the temperature fit and the ECE on synthetic cases with known answers; the temperature
in a trained version's manifest, applied alike by every runtime; old manifests without it; abstaining in predict."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lifecycle import calibration
from lifecycle.artifacts import load_version
from lifecycle.cli import app
from lifecycle.errors import ModelError
from lifecycle.inference import Predictor
from tests.helpers import reseal

TEXTS = ["a gripping, beautifully acted film", "tedious and far too long", "it is a movie", "the best film of the year"]


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _sampled(n: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits): the probabilities softmax(logits) are calibrated by design."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=1.5, size=(n, classes))
    p = _softmax(logits)
    y = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return logits, y


def test_temperature_fit_recovers_logits_scaled_by_three() -> None:
    logits, y = _sampled(20_000, 5)
    over = _softmax(3.0 * logits)  # three times too sharp: T = 3 undoes it
    temperature = calibration.fit_temperature(over, y)
    assert temperature == pytest.approx(3.0, rel=0.05)
    assert calibration.fit_temperature(_softmax(logits), y) == pytest.approx(1.0, rel=0.05)
    fixed = calibration.apply_temperature(over, temperature)
    assert calibration.expected_calibration_error(over, y) > 0.15
    assert calibration.expected_calibration_error(fixed, y) < 0.02
    assert calibration.negative_log_likelihood(fixed, y) < calibration.negative_log_likelihood(over, y)
    np.testing.assert_array_equal(fixed.argmax(axis=1), over.argmax(axis=1))  # accuracy never changes


def test_ece_is_zero_when_confidence_matches_accuracy_and_counts_the_gap_otherwise() -> None:
    logits, y = _sampled(20_000, 3, seed=1)
    assert calibration.expected_calibration_error(_softmax(logits), y) < 0.015
    p = np.tile([0.8, 0.2], (10, 1))
    right = np.array([0] * 8 + [1] * 2)  # 80% right at confidence 0.8
    assert calibration.expected_calibration_error(p, right) == pytest.approx(0.0, abs=1e-12)
    assert calibration.expected_calibration_error(p, np.array([0] * 6 + [1] * 4)) == pytest.approx(0.2)
    # Two bins, half the texts each: |0.95 - 1.0| and |0.55 - 0.0|, weighted equally.
    two = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.55, 0.45]])
    assert calibration.expected_calibration_error(two, np.array([0, 0, 1, 1])) == pytest.approx((0.05 + 0.55) / 2)
    assert calibration.reliability(two, np.array([0, 0, 1, 1])).counts.sum() == 4


def test_temperature_on_probabilities_equals_softmax_of_scaled_logits() -> None:
    logits, _ = _sampled(200, 4, seed=2)
    for temperature in (0.5, 1.7, 4.0):
        np.testing.assert_allclose(calibration.apply_temperature(_softmax(logits), temperature),
                                   _softmax(logits / temperature), atol=1e-6)
    # A float32 softmax that rounded a class to 0 stays finite and normalised.
    hard = np.array([[1.0, 0.0, 0.0]], dtype=np.float32)
    soft = calibration.apply_temperature(hard, 2.0)
    assert np.all(np.isfinite(soft)) and soft.sum() == pytest.approx(1.0) and soft[0, 0] > 0.99


def test_the_guard_keeps_a_temperature_only_when_it_pays_on_held_out_texts() -> None:
    logits, y = _sampled(3_000, 4, seed=3)
    over = _softmax(2.0 * logits)  # twice too sharp: T = 2 pays on any held-out fold
    gain = calibration.held_out_gain(over, y)
    assert gain.kept and gain.gain > 5 * gain.standard_error
    entry = calibration.fit_calibration((over, y))
    assert entry["temperature"] == entry["fitted_temperature"] == pytest.approx(2.0, rel=0.1)
    # Calibrated by design and few texts: the in-sample fit still moves T off 1, but held out it gains nothing.
    small_logits, small_y = _sampled(160, 4, seed=4)
    calibrated = _softmax(small_logits)
    assert abs(calibration.fit_temperature(calibrated, small_y) - 1.0) > 0.01
    assert not calibration.held_out_gain(calibrated, small_y).kept
    entry = calibration.fit_calibration((calibrated, small_y), (calibrated, small_y))
    assert entry["temperature"] == 1.0 and entry["guard"]["kept"] is False
    assert entry["test"]["nll_after"] == pytest.approx(entry["test"]["nll_before"], abs=1e-6)
    forced = calibration.fit_calibration((calibrated, small_y), guard=False)
    assert forced["temperature"] == forced["fitted_temperature"] != 1.0
    assert not calibration.held_out_gain(over[:9], y[:9]).kept  # too few texts for five folds


def test_selective_accuracy_and_coverage() -> None:
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.45, 0.55]])
    y = np.array([0, 1, 1, 0])
    chosen = calibration.selective(p, y, 0.7)
    assert (chosen.coverage, chosen.answered_accuracy, chosen.answered) == (0.5, 1.0, 2)
    assert calibration.selective(p, y, 0.0).answered_accuracy == 0.5
    assert calibration.selective(p, y, 1.0).answered_accuracy is None
    with pytest.raises(ValueError, match=r"\[0, 1\].*Received: 1.5"):
        calibration.check_threshold(1.5, "--abstain")


def test_training_fits_logs_and_freezing_inherits_the_temperature(trained: dict, frozen: dict,
                                                                   tracking_uri: str) -> None:
    import mlflow

    checkpoint = load_version(trained["outcome"].version)
    entry = checkpoint.manifest.calibration.to_dict()
    assert entry["fitted_on"] == "validation split" and entry["bins"] == 15
    assert entry["validation"]["n"] == checkpoint.manifest.data["validation"]
    assert entry["validation"]["nll_after"] <= entry["validation"]["nll_before"] + 1e-9  # what the fit minimises
    assert entry["test"]["n"] == checkpoint.manifest.data["test"]
    assert abs(entry["fitted_temperature"] - 1.0) > 1e-3  # what the fit found, kept or not by the guard
    kept = entry["guard"]["kept"]
    assert entry["temperature"] == (entry["fitted_temperature"] if kept else 1.0)
    frozen_entry = load_version(frozen["outcome"].version).manifest.calibration.to_dict()
    assert frozen_entry["temperature"] == entry["temperature"] and frozen_entry["inherited_from"]
    mlflow.set_tracking_uri(tracking_uri)
    run = mlflow.get_run(trained["outcome"].run_id)
    assert run.data.metrics["calibration.temperature"] == pytest.approx(entry["temperature"])
    assert run.data.metrics["calibration.ece_before"] == pytest.approx(entry["test"]["ece_before"])
    assert run.data.metrics["calibration.ece_after"] == pytest.approx(entry["test"]["ece_after"])
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"reliability_diagram.png", "calibration.json"} <= artifacts


def test_every_runtime_applies_the_manifests_temperature_alike(trained: dict, frozen: dict, tmp_path: Path) -> None:
    temperature = 1.7  # whatever the fit and its guard chose for the slice model, one T applied by every runtime
    copies = {}
    for name, source in (("checkpoint", trained["outcome"].version), ("frozen", frozen["outcome"].version)):
        copies[name] = _copy(Path(source), tmp_path, name)
        reseal(copies[name], lambda m: m["calibration"].update(temperature=temperature))
    checkpoint, graph_version = load_version(copies["checkpoint"]), load_version(copies["frozen"])
    rows = {}
    for name, version, runtime in (("keras", checkpoint, "auto"), ("graph", graph_version, "graph"),
                                   ("litert", graph_version, "litert")):
        predictor = Predictor(version, runtime)
        assert predictor.runtime == name and predictor.temperature == temperature
        raw = predictor.predict_proba(TEXTS, calibrated=False)
        rows[name] = predictor.predict_proba(TEXTS)
        np.testing.assert_allclose(rows[name], calibration.apply_temperature(raw, temperature), atol=1e-6)
        assert np.max(np.abs(rows[name] - raw)) > 1e-4  # the temperature changed something
        assert [p.probability for p in predictor.predict(TEXTS)] == pytest.approx(rows[name].max(axis=1), abs=1e-6)
    np.testing.assert_allclose(rows["graph"], rows["keras"], atol=1e-5)
    np.testing.assert_allclose(rows["litert"], rows["graph"], atol=1e-5)


def _copy(version_dir: Path, tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(version_dir, target)
    return target


def test_a_manifest_without_calibration_loads_with_temperature_one(frozen: dict, tmp_path: Path) -> None:
    old = _copy(frozen["outcome"].version, tmp_path, "old")
    reseal(old, lambda m: m.pop("calibration"))
    predictor = Predictor(load_version(old), "litert")
    assert predictor.temperature == 1.0 and predictor.abstain_threshold is None
    np.testing.assert_array_equal(predictor.predict_proba(TEXTS), predictor.predict_proba(TEXTS, calibrated=False))
    for bad, needle in ((0, "calibration.temperature must be a finite number > 0"),
                        ("2", "calibration.temperature"), (float("nan"), "calibration.temperature")):
        broken = _copy(frozen["outcome"].version, tmp_path, f"bad-{len(list(tmp_path.iterdir()))}")
        reseal(broken, lambda m, bad=bad: m["calibration"].update(temperature=bad))
        with pytest.raises(ModelError, match=needle):
            load_version(broken)
    broken = _copy(frozen["outcome"].version, tmp_path, "bad-threshold")
    reseal(broken, lambda m: m["calibration"].update(abstain_threshold=1.2))
    with pytest.raises(ModelError, match="calibration.abstain_threshold must be a probability"):
        load_version(broken)


def test_predict_answers_unknown_under_the_threshold(frozen: dict, tmp_path: Path) -> None:
    runner = CliRunner()
    version = str(frozen["outcome"].version)

    def predict(*extra: str) -> list[dict]:
        result = runner.invoke(app, ["predict", version, *TEXTS, "--json", "--top-k", "2", *extra])
        assert result.exit_code == 0, result.output
        return [json.loads(line) for line in result.stdout.splitlines()]  # NDJSON: one object per line

    plain = predict()
    assert not any(row["abstained"] for row in plain)
    top = sorted(row["probability"] for row in plain)
    assert top[0] < top[-1]
    threshold = (top[0] + top[-1]) / 2
    cut = predict("--abstain", f"{threshold}")
    for before, after in zip(plain, cut, strict=True):
        refused = before["probability"] < threshold
        assert after["abstained"] is refused
        assert after["label"] == ("unknown" if refused else before["label"])
        assert after["probability"] == before["probability"] and after["top"] == before["top"]  # still shown
    assert {row["abstained"] for row in cut} == {True, False}
    # The version's own default threshold (manifest calibration.abstain_threshold) applies without --abstain, and
    # --abstain 0 turns it off.
    strict = _copy(frozen["outcome"].version, tmp_path, "strict")
    reseal(strict, lambda m: m["calibration"].update(abstain_threshold=1.0))
    version = str(strict)
    assert all(row["label"] == "unknown" for row in predict())
    assert not any(row["abstained"] for row in predict("--abstain", "0"))
    bad = runner.invoke(app, ["predict", version, "x", "--abstain", "1.5"])
    assert bad.exit_code == 2


def test_evaluate_reports_ece_and_the_share_answered(frozen: dict) -> None:
    from lifecycle.dataset import encode_examples
    from lifecycle.workflows import evaluation_examples, run_evaluate

    version = load_version(frozen["outcome"].version)
    predictor = Predictor(version)
    examples, _ = evaluation_examples(version, None)
    arrays = encode_examples(examples, predictor.tokenizer, predictor.labels, predictor.max_len, "test")
    p = predictor.predict_ids(arrays.x)
    threshold = float(np.median(p.max(axis=1)))  # the session's small model is far from sure: its own median
    chosen = calibration.selective(p, arrays.y, threshold)
    metrics = run_evaluate(str(version.path), track=False, abstain=threshold).metrics
    assert metrics["calibration.coverage"] == pytest.approx(chosen.coverage)
    assert metrics["calibration.answered_accuracy"] == pytest.approx(chosen.answered_accuracy)
    assert metrics["calibration.ece_after"] == pytest.approx(calibration.expected_calibration_error(p, arrays.y))
    entry = version.manifest.calibration.to_dict()
    assert metrics["calibration.ece_before"] == pytest.approx(entry["test"]["ece_before"], abs=1e-5)
    assert 0 < chosen.coverage < 1


def test_compress_keeps_the_parents_temperature_when_its_data_is_gone(frozen: dict, tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    from lifecycle.workflows import run_compress

    orphan = _copy(frozen["outcome"].version, tmp_path, "orphan")
    reseal(orphan, lambda m: m["config"]["data"].update(path=str(tmp_path / "gone")))
    child = load_version(run_compress(str(orphan), "fp16", tmp_path / "fp16", track=False).version)
    entry = child.manifest.calibration.to_dict()
    parent = load_version(orphan).manifest.calibration.to_dict()
    assert entry["temperature"] == parent["temperature"] and entry["inherited_from"] == str(orphan)
    assert "parent's temperature is kept" in caplog.text
