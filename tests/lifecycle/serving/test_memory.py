"""What keeps a server's memory flat: interpreter calls capped at batching.max_batch, and lean bpe tokenizers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lifecycle.artifacts import load_version, sha256_file
from lifecycle.inference import Predictor
from lifecycle.litert import LiteRunner
from lifecycle.serving.config import BatchingConfig, ServeConfig
from lifecycle.serving.registry import LoadedModel, Registry
from lifecycle.serving.sources import Fetched


def _texts(data_dir: Path, n: int) -> list[str]:
    lines = (data_dir / "MR" / "rt-polarity.neg").read_bytes().split(b"\n")[:n]
    return [line.decode("cp1252") for line in lines]


def _runner(model: LoadedModel) -> LiteRunner:
    return model.predictor._run.__self__


def test_interpreter_calls_never_exceed_max_batch(serving_versions: dict[str, Path], data_dir: Path) -> None:
    version = load_version(serving_versions["int8"])
    wide = Predictor(version, runtime="litert")
    texts = _texts(data_dir, 21)
    path = serving_versions["int8"]
    model = LoadedModel("m", Fetched(path, path.name, None, owned=False), 1, BatchingConfig(max_batch=4))
    try:
        runner = _runner(model)
        assert runner.max_batch == 4 and runner._batch == 4  # warmed up at a full batch: memory claimed at load
        rows = model.submit(texts).result(timeout=30)  # one request over max_batch: run in calls of at most 4
        assert runner._batch == 1  # 21 = 5 x 4 + 1
        np.testing.assert_allclose(rows, wide.predict_proba(texts), atol=1e-6)
    finally:
        model.close()
        model.join(10)
    assert BatchingConfig().max_batch == 8


def test_lite_runner_rejects_a_zero_batch(serving_versions: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="max_batch must be >= 1"):
        LiteRunner(serving_versions["int8"] / "model.tflite", 40, "int32", max_batch=0)


@pytest.fixture(scope="module")
def bpe_version(serving_versions: dict[str, Path], data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The int8 version with a bpe tokenizer in place of its word one (ids within the embedding's rows)."""
    from lifecycle.config import TokenizerConfig
    from tokenization import train_tokenizer

    pytest.importorskip("youtokentome", reason="youtokentome is not installed")
    path = tmp_path_factory.mktemp("bpe-served") / "v"
    shutil.copytree(serving_versions["int8"], path)
    manifest = json.loads((path / "manifest.json").read_text())
    rows = manifest["tensors"]["weights/embedding"]["shape"][0]
    cfg = TokenizerConfig.model_validate({"kind": "bpe", "bpe": {"vocab_size": min(rows, 400), "threads": 1}})
    tokenizer = train_tokenizer(_texts(data_dir, 1500), cfg)
    shutil.rmtree(path / "tokenizer")
    tokenizer.save(path / "tokenizer")
    files = {rel: meta for rel, meta in manifest["files"].items() if not rel.startswith("tokenizer/")}
    for file in sorted((path / "tokenizer").iterdir()):
        files[f"tokenizer/{file.name}"] = {"bytes": file.stat().st_size, "sha256": sha256_file(file)}
    from tests.helpers import reseal

    reseal(path, lambda m: m.update(files=files))
    return path


def test_a_served_bpe_model_encodes_lean_and_predicts_the_same(bpe_version: Path, data_dir: Path) -> None:
    texts = _texts(data_dir, 300)
    registry = Registry(ServeConfig.model_validate({"models": {"bpe": str(bpe_version)}}))
    registry.load()
    try:
        model = registry.slots["bpe"].current
        assert model.predictor.tokenizer.lean
        served = model.submit(texts).result(timeout=60)
    finally:
        registry.close()
    assert model.predictor is None  # released on close
    plain = Predictor(load_version(bpe_version), runtime="litert")
    assert not plain.tokenizer.lean
    np.testing.assert_allclose(served, plain.predict_proba(texts), atol=1e-6)


def test_a_stalled_body_gets_408_and_frees_its_slot(serving_versions: dict[str, Path], tmp_path: Path) -> None:
    import socket
    import time
    import urllib.request
    from urllib.parse import urlsplit

    from tests.lifecycle.serving.helpers import start_serve

    config = tmp_path / "serve.yaml"
    config.write_text(json.dumps({"port": 0, "models": {"m": str(serving_versions["int8"])},
                                  "limits": {"body_timeout_seconds": 1, "max_in_flight": 1}}))
    process, base = start_serve(config, tmp_path / "serve.log")
    try:
        url = urlsplit(base)
        host, port = url.hostname, url.port
        with socket.create_connection((host, port), timeout=10) as slow:
            slow.sendall(b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"texts\": [\"half a bo")  # ...and nothing more
            started = time.monotonic()
            answer = b""
            while chunk := slow.recv(4096):  # the server answers, then closes the connection
                answer += chunk
            waited = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
        assert b"limits.body_timeout_seconds" in answer and 0.8 < waited < 8
        # The one in-flight slot is free again.
        request = urllib.request.Request(f"http://{host}:{port}/v1/models/m:predict", data=b'{"texts": ["fine"]}',
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
    finally:
        process.terminate()
        process.wait(20)
