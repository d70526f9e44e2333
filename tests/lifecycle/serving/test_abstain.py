"""Calibration in serving: a compressed version carries a temperature re-fitted for its own probabilities, and a
served model answers "unknown" under its abstain threshold (config, or the request's own)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from lifecycle.artifacts import load_version
from lifecycle.inference import Predictor
from lifecycle.serving.app import build_app
from lifecycle.serving.config import ServeConfig
from lifecycle.serving.registry import Registry

TEXTS = ["a gripping, beautifully acted film", "tedious and far too long", "it is a movie", ""]


def test_compression_refits_the_temperature_on_the_validation_split(serving_versions: dict[str, Path]) -> None:
    parent = load_version(serving_versions["float32"]).manifest.calibration.to_dict()
    entry = load_version(serving_versions["int8"]).manifest.calibration.to_dict()
    assert "inherited_from" not in entry and entry["fitted_on"] == "validation split"
    assert entry["validation"]["n"] == parent["validation"]["n"]
    # int8 probabilities are not the float32 ones: the fit ran again on them (the guard then keeps T or 1).
    assert entry["fitted_temperature"] != parent["fitted_temperature"]
    assert entry["fitted_temperature"] == pytest.approx(parent["fitted_temperature"], rel=0.2)
    assert entry["temperature"] in (entry["fitted_temperature"], 1.0)


@pytest.fixture(scope="module")
def thresholds(serving_versions: dict[str, Path]) -> tuple[float, np.ndarray]:
    """A threshold between the texts' lowest and highest calibrated top probability, and those probabilities."""
    top = Predictor(load_version(serving_versions["int8"]), runtime="litert").predict_proba(TEXTS).max(axis=1)
    assert top.min() < top.max()
    return float((top.min() + top.max()) / 2), top


def test_served_model_abstains_under_its_threshold(serving_versions: dict[str, Path], thresholds) -> None:
    threshold, top = thresholds
    cfg = ServeConfig.model_validate({"models": {"strict": {"version": str(serving_versions["int8"]),
                                                            "abstain": threshold},
                                                 "plain": str(serving_versions["int8"])}})
    registry = Registry(cfg)
    registry.load()
    try:
        with TestClient(build_app(registry, cfg)) as client:
            body = client.post("/v1/models/strict:predict", json={"texts": TEXTS, "top_k": 2}).json()
            assert body["abstain_threshold"] == threshold
            for p, row in zip(top, body["predictions"], strict=True):
                refused = bool(p < threshold)
                assert row["abstained"] is refused
                assert (row["label"] == "unknown") is refused
                assert row["probability"] == pytest.approx(float(p), abs=1e-5) and len(row["top"]) == 2
            # The request's own threshold wins: 0 always answers, 1 never does.
            answered = client.post("/v1/models/strict:predict", json={"texts": TEXTS, "abstain": 0}).json()
            assert not any(row["abstained"] for row in answered["predictions"])
            refused = client.post("/v1/models/plain:predict", json={"texts": TEXTS, "abstain": 1}).json()
            assert all(row["label"] == "unknown" for row in refused["predictions"])
            plain = client.post("/v1/models/plain:predict", json={"texts": TEXTS}).json()
            assert plain["abstain_threshold"] is None
            assert not any(row["abstained"] for row in plain["predictions"])
            bad = client.post("/v1/models/plain:predict", json={"texts": TEXTS, "abstain": 2})
            assert bad.status_code == 400 and "'abstain' must be a probability" in bad.json()["error"]
            listed = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
            assert listed["strict"]["abstain_threshold"] == threshold
            temperature = load_version(serving_versions["int8"]).manifest.calibration.temperature
            assert listed["plain"]["temperature"] == temperature
    finally:
        registry.close()


def test_serve_config_refuses_a_threshold_outside_zero_one(tmp_path: Path) -> None:
    from lifecycle.errors import ConfigError
    from lifecycle.serving.config import load_serve_config

    path = tmp_path / "serve.yaml"
    path.write_text("models:\n  m: {version: versions/x, abstain: 1.5}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"models\.m\.abstain"):
        load_serve_config(path)
