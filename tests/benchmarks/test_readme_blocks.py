"""benchmarks/readme.py: a benchmark's README block is replaced, but not by one that drops rows the README has."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

# Loaded from its file: benchmarks/ on sys.path would shadow packages by its scripts' names (tokenizers).
_SPEC = importlib.util.spec_from_file_location("bench_readme", Path(__file__).resolve().parents[2] / "benchmarks"
                                               / "readme.py")
assert _SPEC is not None and _SPEC.loader is not None
_README = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_README)
DROP_ROWS_ENV, row_keys, write_block = _README.DROP_ROWS_ENV, _README.row_keys, _README.write_block

OLD = """| set | accuracy |
|---|---|
| mr (2026-12-01) | 77.9 |
| trec (2026-12-02) | 92.8 |"""


@pytest.fixture
def readme(tmp_path: Path) -> Path:
    path = tmp_path / "README.md"
    path.write_text(f"intro\n<!-- bench:x:start -->\nMeasured then.\n\n{OLD}\n<!-- bench:x:end -->\noutro\n")
    return path


def test_row_keys_skip_headers_and_separators_and_drop_a_trailing_date() -> None:
    assert row_keys(OLD) == ["mr", "trec"]


def test_a_block_with_every_row_replaces_the_old_one(readme: Path) -> None:
    write_block("x", "Measured now.\n\n| set | accuracy |\n|---|---|\n| mr (2026-12-03) | 80.1 |\n| trec | 93.0 |",
                readme)
    text = readme.read_text()
    assert "80.1" in text and "93.0" in text and "77.9" not in text and "Measured then" not in text
    assert text.startswith("intro\n") and text.endswith("outro\n")


def test_a_block_that_drops_rows_is_refused_unless_asked(readme: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = readme.read_text()
    one_row = "Measured now.\n\n| set | accuracy |\n|---|---|\n| mr (2026-12-03) | 80.1 |"
    with pytest.raises(SystemExit, match=r"lacks the rows trec that the README has.*LIFECYCLE_BENCH_DROP_ROWS=1"):
        write_block("x", one_row, readme)
    assert readme.read_text() == before  # nothing written
    monkeypatch.setenv(DROP_ROWS_ENV, "1")
    write_block("x", one_row, readme)
    assert "80.1" in readme.read_text() and "92.8" not in readme.read_text()


def test_a_readme_without_the_block_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "README.md"
    path.write_text("no blocks here\n")
    with pytest.raises(SystemExit, match="has no <!-- bench:x:start -->"):
        write_block("x", "body", path)
