"""The HTTP contract of `lifecycle serve` in process: Starlette's TestClient over a real Registry of LiteRT models."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from lifecycle.artifacts import load_version
from lifecycle.errors import ConfigError, ModelError
from lifecycle.inference import Predictor
from lifecycle.serving.app import build_app
from lifecycle.serving.config import ServeConfig, load_serve_config
from lifecycle.serving.registry import LoadedModel, Registry

TEXTS = ["a gripping, beautifully acted film", "tedious and far too long", ""]
LIMITS = {"max_texts": 4, "max_text_chars": 200, "max_body_bytes": 4096, "max_in_flight": 64}


@pytest.fixture(scope="module")
def served(serving_versions: dict[str, Path]):
    cfg = ServeConfig.model_validate({"models": {"sentiment": str(serving_versions["int8"]),
                                                 "sentiment-f32": {"version": str(serving_versions["float32"])}},
                                      "limits": LIMITS})
    registry = Registry(cfg)
    registry.load()
    with TestClient(build_app(registry, cfg)) as client:
        yield client, registry
    registry.close()


def test_predict_returns_labels_probabilities_and_the_version(served, serving_versions: dict[str, Path]) -> None:
    client, _ = served
    response = client.post("/v1/models/sentiment:predict", json={"texts": TEXTS, "top_k": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "sentiment" and body["version"] == serving_versions["int8"].name
    predictor = Predictor(load_version(serving_versions["int8"]), runtime="litert")
    expected = predictor.predict_proba(TEXTS)
    assert len(body["predictions"]) == len(TEXTS)
    for row, got in zip(expected, body["predictions"], strict=True):
        assert got["label"] == predictor.labels[int(np.argmax(row))]
        assert got["probability"] == pytest.approx(float(row.max()), abs=1e-5)
        assert [t["label"] for t in got["top"]] == [predictor.labels[i] for i in np.argsort(-row, kind="stable")]
        assert sum(t["probability"] for t in got["top"]) == pytest.approx(1.0, abs=1e-4)


def test_top_k_defaults_to_one_and_stops_at_the_label_count(served) -> None:
    client, _ = served
    one = client.post("/v1/models/sentiment-f32:predict", json={"texts": ["fine"]}).json()["predictions"][0]
    assert len(one["top"]) == 1
    many = client.post("/v1/models/sentiment-f32:predict", json={"texts": ["fine"], "top_k": 50}).json()
    assert len(many["predictions"][0]["top"]) == 2


def test_listing_health_and_metrics(served, serving_versions: dict[str, Path]) -> None:
    client, _ = served
    client.post("/v1/models/sentiment:predict", json={"texts": ["ok"]})
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert set(models) == {"sentiment", "sentiment-f32"}
    row = models["sentiment"]
    assert row["source"] == str(serving_versions["int8"]) and not row["watched"]
    assert row["kind"] == "compressed" and row["recipe"] == "int8" and row["labels"] == ["negative", "positive"]
    assert 0 < row["serving_bytes"] < row["size_bytes"] and row["loaded_at"]
    assert row["requests_served"] >= 1 and row["last_refused"] is None and row["in_flight"] == 0
    assert models["sentiment-f32"]["serving_bytes"] > 3 * row["serving_bytes"]  # float32 against int8
    assert client.get("/v1/models/sentiment").json()["name"] == "sentiment"
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and set(health["models"]) == {"sentiment", "sentiment-f32"}
    assert health["rss_bytes"] > 0 and "tensorflow_imported" in health
    text = client.get("/metrics")
    assert text.headers["content-type"].startswith("text/plain; version=0.0.4")
    for needle in ('lifecycle_requests_total{model="sentiment",code="200"}',
                   'lifecycle_request_seconds_bucket{model="sentiment",le="+Inf"}',
                   'lifecycle_model_info{model="sentiment",version="int8"} 1', "process_resident_memory_bytes "):
        assert needle in text.text


@pytest.mark.parametrize(("body", "status", "needle"), [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (b'{"text": ["x"]}', 400, "unknown field(s) 'text'"),
    (b"{}", 400, "'texts' is required"),
    (b'{"texts": "one text"}', 400, "'texts' must be a list of strings; received a string"),
    (b'{"texts": []}', 400, "'texts' is empty"),
    (b'{"texts": ["a", 3]}', 400, "texts[1] must be a string; received a number"),
    (b'{"texts": ["a", "b", "c", "d", "e"]}', 400, "at most 4 per request (limits.max_texts)"),
    (json.dumps({"texts": ["x" * 201]}).encode(), 400, "201 characters; the limit is 200"),
    (b'{"texts": ["a"], "top_k": 0}', 400, "'top_k' must be an integer >= 1"),
    (b'{"texts": ["a"], "top_k": true}', 400, "'top_k' must be an integer >= 1"),
    (b'{"texts": ["a"], "top_k": "2"}', 400, "'top_k' must be an integer >= 1"),
    (b'{"texts": ["\\ud800"]}', 400, "unpaired surrogate"),
    (b'{"texts": ["caf\xe9"]}', 400, "not UTF-8 (invalid byte at offset 15)"),
    (b"[" * 1900 + b"]" * 1900, 400, "not usable JSON"),
    (b'{"texts": ["' + b"a" * 5000 + b'"]}', 413, "limits.max_body_bytes"),
], ids=["malformed", "array", "unknown-field", "no-texts", "texts-string", "empty", "non-string", "too-many",
        "too-long", "top-k-0", "top-k-bool", "top-k-string", "surrogate", "latin-1", "deep-nesting", "body-size"])
def test_bad_input_is_a_client_error_naming_the_problem(served, body: bytes, status: int, needle: str) -> None:
    client, _ = served
    response = client.post("/v1/models/sentiment:predict", content=body,
                           headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert needle in response.json()["error"]


def test_a_streamed_body_over_the_limit_is_cut_off(served) -> None:
    client, _ = served
    chunks = iter([b'{"texts": ["', b"a" * 3000, b"a" * 3000, b'"]}'])  # no Content-Length: chunked
    response = client.post("/v1/models/sentiment:predict", content=chunks)
    assert response.status_code == 413 and "limits.max_body_bytes" in response.json()["error"]


def test_unknown_model_method_and_path(served) -> None:
    client, _ = served
    missing = client.post("/v1/models/nope:predict", json={"texts": ["a"]})
    assert missing.status_code == 404 and "GET /v1/models lists the names" in missing.json()["error"]
    # A name is only ever a key into the loaded models, never a path.
    sneaky = client.post("/v1/models/..%2F..%2Fetc%2Fpasswd:predict", json={"texts": ["a"]})
    assert sneaky.status_code == 404
    assert client.get("/v1/models/nope").status_code == 404
    assert client.get("/v1/models/sentiment:predict").status_code == 405
    assert client.get("/v2/anything").json() == {"error": "GET /v2/anything: Not Found"}
    metrics = client.get("/metrics").text
    assert 'model="_unknown",code="404"' in metrics and "etc" not in metrics


def test_overload_is_refused_with_503_not_queued(served) -> None:
    _, registry = served
    cfg = ServeConfig.model_validate({"models": registry.cfg.models, "limits": {**LIMITS, "max_in_flight": 1}})
    with TestClient(build_app(registry, cfg)) as client:
        def call(_: int) -> tuple[int, str | None]:
            response = client.post("/v1/models/sentiment:predict", json={"texts": ["a long enough text"] * 4})
            return response.status_code, response.headers.get("retry-after")

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(call, range(64)))
    codes = {code for code, _ in results}
    assert codes <= {200, 503} and 200 in codes and 503 in codes, results
    assert all(retry == "1" for code, retry in results if code == 503)


def test_queued_requests_run_as_one_micro_batch(serving_versions: dict[str, Path]) -> None:
    from lifecycle.serving.config import BatchingConfig
    from lifecycle.serving.sources import Fetched

    path = serving_versions["int8"]
    model = LoadedModel("m", Fetched(path, path.name, None, owned=False), 1,
                        BatchingConfig(max_batch=64, max_wait_ms=300))
    try:
        futures = [model.submit([f"text number {i}", "another"]) for i in range(8)]
        rows = [future.result(timeout=30) for future in futures]
        assert all(r.shape == (2, 2) for r in rows) and model.batches_run <= 2  # 8 requests, 1-2 interpreter calls
        one = Predictor(load_version(path), runtime="litert").predict_proba(["text number 3", "another"])
        np.testing.assert_allclose(rows[3], one, atol=1e-6)  # each request gets its own rows back
    finally:
        model.close()
        model.join(10)
    assert model.predictor is None  # released when its worker stopped


def test_serve_config_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text("models: {a: /x}\nlimits: {max_textz: 3}\n")
    with pytest.raises(ConfigError, match=r"serve.yaml: unknown key 'limits.max_textz'"):
        load_serve_config(path)
    path.write_text("models: {'a/b': /x}\n")
    with pytest.raises(ConfigError, match=r"model name 'a/b' must be"):
        load_serve_config(path)
    with pytest.raises(ConfigError, match="no models to serve"):
        load_serve_config(None)
    with pytest.raises(ConfigError, match="expected NAME=VERSION"):
        load_serve_config(None, ["just-a-path"])
    path.write_text("models: {a: /x}\nport: 9000\n")
    cfg = load_serve_config(path, ["a=/y", "b=models:/m@champion"], port=0)
    assert cfg.models["a"].version == "/y" and cfg.models["b"].version == "models:/m@champion" and cfg.port == 0


def test_a_bad_version_at_start_is_an_error_naming_the_model(serving_versions: dict[str, Path],
                                                             trained: dict) -> None:
    cases = [(serving_versions["tampered"], "sha256 does not match"),
             (trained["outcome"].version, "a checkpoint version cannot be served")]
    for version, needle in cases:
        registry = Registry(ServeConfig.model_validate({"models": {"m": str(version)}}))
        with pytest.raises(ModelError, match=needle) as info:
            registry.load()
        assert str(info.value).startswith(f"model 'm' ({version})")


def test_the_example_config_is_valid() -> None:
    cfg = load_serve_config(Path(__file__).resolve().parents[3] / "configs" / "serve" / "example.yaml")
    assert set(cfg.models) == {"sentiment", "questions"} and cfg.limits.max_in_flight == 256


@pytest.mark.parametrize(("model", "code", "needle"), [
    ("a=/no/such/version", 4, "model 'a' (/no/such/version): /no/such/version: no such version directory"),
    ("a=models:/x", 2, "runs:/<run_id>/<path>"),  # angle and square brackets print as text, not markup
    ("a b=/x", 2, "model name 'a b' must be"),
], ids=["missing-directory", "malformed-reference", "bad-name"])
def test_serve_command_errors_are_one_line_with_their_exit_code(model: str, code: int, needle: str) -> None:
    from typer.testing import CliRunner

    from lifecycle.cli import app

    result = CliRunner().invoke(app, ["serve", "--model", model, "--port", "0"])
    assert result.exit_code == code, result.output
    assert needle in result.output.replace("\n", " ") and "Traceback" not in result.output
