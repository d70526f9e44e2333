"""benchmarks/tokenizers.py: the --quick path on TREC, and the youtokentome ids it times decode back to the text."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("youtokentome", reason="youtokentome is not installed")
pytest.importorskip("sentencepiece", reason="sentencepiece is not installed (make install-bench)")
pytest.importorskip("tokenizers", reason="tokenizers is not installed (make install-bench)")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "tokenizers.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """The script as a module (benchmarks/ is not a package; dataclasses need it in sys.modules)."""
    spec = importlib.util.spec_from_file_location("tokenizers_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_quick_run(bench: ModuleType, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = bench.main(["--quick", "--threads", "1"])
    rows = results[bench.QUICK_DATASET]
    assert [row.library for row in rows] == list(bench.LIBRARIES)
    for row in rows:
        assert not row.error, row.error
        assert 0 < row.produced <= row.requested == bench.QUICK_SIZE
        assert row.train_seconds > 0 and row.per_call > 0 and row.batch_one > 0 and row.batch_many is None
        # TREC's test questions average 7.5 words; subwords are at least as many, and the test set is pure ASCII.
        assert 7.5 <= row.tokens_per_text < 20
        assert row.unk_rate == 0.0
        assert row.model_bytes > 1000
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {bench.QUICK_SIZE} |")]
    assert [line.split(" | ")[1] for line in table] == list(bench.LIBRARIES)


def test_youtokentome_ids_round_trip(bench: ModuleType, data_dir: Path, tmp_path: Path) -> None:
    train, test, bpe = bench.load_texts("trec")
    cfg = bpe.model_copy(update={"vocab_size": 1000, "threads": 1})
    loaded = bench.load_youtokentome(bench.train_youtokentome(train, cfg, tmp_path), cfg)
    assert loaded.vocab_size == 1000
    texts = train[:300] + test
    ids = loaded.encode_batch(texts, 1)
    assert ids == [loaded.encode_one(text) for text in texts]
    assert all(0 <= i < loaded.vocab_size for row in ids for i in row)
    # Lower-cased as the project's BPE does it; youtokentome rebuilds words with single spaces.
    assert loaded.decode(ids) == [" ".join(text.lower().split()) for text in texts]
